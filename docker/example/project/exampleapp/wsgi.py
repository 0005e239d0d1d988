"""WSGI entry point. coordinator.pin imports it from the pinned release
(``COORDINATOR_PIN_APP=exampleapp.wsgi:application``).

The URL configuration (and so every view module) is imported here, at load, instead of on the first
request: a release that cannot be imported then fails while the app server loads it, in the master
before uWSGI forks its workers (which also share the imported code), rather than on a request.
"""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleapp.settings")

application = get_wsgi_application()
get_resolver().url_patterns  # noqa: B018 - imports exampleapp.urls and the views now
