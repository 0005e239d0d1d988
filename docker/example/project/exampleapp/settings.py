"""Settings of the example app: no database, no templates, no secrets in the repository.

Configured by environment:

* ``DJANGO_SECRET_KEY``: the secret key. The app keeps no sessions and signs nothing, so when it is
  unset a random key is made at start (each start gets another one); set it for a real app.
* ``DJANGO_ALLOWED_HOSTS``: comma-separated host names (default: localhost, 127.0.0.1 and ``app``,
  the compose service name that coordinator's health check uses).
* ``DJANGO_DEBUG``: ``1`` for Django's debug pages (default off).
"""

import os
import secrets

from exampleapp.version import VERSION

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],app").split(",") if h.strip()
]

INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "exampleapp.urls"
WSGI_APPLICATION = "exampleapp.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

#: Shown on the page; comes from the release's code.
APP_VERSION = VERSION
