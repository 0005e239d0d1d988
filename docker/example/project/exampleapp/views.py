"""Two views: the page, which shows the version of the code that serves it, and the health check,
which answers the commit of the release this process runs (coordinator's ``--health-url``)."""

import html
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

try:
    from coordinator.pin import release_info
except ImportError:  # run without coordinator (e.g. `manage.py runserver`): no release metadata

    def release_info() -> dict[str, object]:
        return {}


PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Example app {version}</title></head>
<body>
<h1>Example app {version}</h1>
<p>release <code>{release}</code>, tag <code>{tag}</code>, commit <code>{sha}</code>, served by pid {pid}</p>
</body>
</html>
"""


def index(request: HttpRequest) -> HttpResponse:
    info = release_info()
    return HttpResponse(
        PAGE.format(
            version=html.escape(settings.APP_VERSION),
            release=html.escape(str(info.get("name", "?"))),
            tag=html.escape(str(info.get("tag", "?"))),
            sha=html.escape(str(info.get("sha", "?"))),
            pid=os.getpid(),
        )
    )


def health(request: HttpRequest) -> JsonResponse:
    """200 with the release's tag and full commit id: coordinator expects the sha it deployed."""
    info = release_info()
    return JsonResponse(
        {"status": "ok", "version": settings.APP_VERSION, "tag": info.get("tag"), "sha": info.get("sha")}
    )
