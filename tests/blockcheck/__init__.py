"""The blocking-call detector of the test suite (blockbuster), in the test process and in daemons.

``detector`` holds the logic; ``sitecustomize.py`` (this directory is put on ``PYTHONPATH`` of the
processes a test starts) activates it in a coordinator subprocess when
``COORDINATOR_TEST_BLOCKING_LOG`` names a file to record the blocking calls in.
"""
