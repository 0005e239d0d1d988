"""coordinator: atomic git-tag deploys for WSGI apps on a shared volume."""

__version__ = "0.1.0"
