"""A real Django project for the day-two end-to-end test: made with ``django-admin startproject``, its
settings read from a shared ``.env``, one model with real migrations, and five tags:

* ``v1``: model ``Note(text)``, migration 0001;
* ``v2``: adds ``Note.done``, migration 0002;
* ``v3-badmigration``: migration 0003 fails (``RunPython`` raises), so ``migrate`` exits non-zero;
* ``v4-broken``: v2's migrations, but ``/health`` answers 500 (the health check rolls it back);
* ``v5``: v2's migrations, page ``v5``.

``/`` answers ``app <tag>``; ``/health`` answers the release's sha (read from the app-facing metadata
coordinator writes next to each release) after a query on the database, so the check fails when the
database or the settings are wrong.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.servers import BIN
from tests.helpers import GitRepo

SETTINGS_TAIL = """

# ---- day two: settings from the shared .env (KEY=VALUE lines), linked into every release
_env = dict(
    line.split("=", 1) for line in (BASE_DIR / ".env").read_text().splitlines() if "=" in line
)
SECRET_KEY = _env["SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["*"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _env["DB_PATH"]}}
INSTALLED_APPS = [*INSTALLED_APPS, "notes"]
STATIC_ROOT = BASE_DIR / "collected"
MEDIA_ROOT = BASE_DIR / "media"
"""

URLS = """from django.urls import path

from mysite import views

urlpatterns = [path("", views.index), path("health", views.health)]
"""

VIEWS = """import json

from django.conf import settings
from django.http import HttpResponse

from mysite.version import BROKEN, VERSION
from notes.models import Note


def index(request):
    return HttpResponse(f"app {VERSION}")


def health(request):
    if BROKEN:
        return HttpResponse("broken", status=500)
    base = settings.BASE_DIR
    meta = json.loads((base.parent / f"{base.name}.json").read_text())
    return HttpResponse(f"{meta['sha']} notes={Note.objects.count()}")
"""

MODELS_V1 = """from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=100)
"""

MODELS_V2 = MODELS_V1 + "    done = models.BooleanField(default=False)\n"

MIGRATION_1 = """from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Note",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("text", models.CharField(max_length=100)),
            ],
        ),
    ]
"""

MIGRATION_2 = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]
    operations = [migrations.AddField(model_name="note", name="done", field=models.BooleanField(default=False))]
"""

MIGRATION_3_BAD = """from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("this migration always fails")


class Migration(migrations.Migration):
    dependencies = [("notes", "0002_note_done")]
    operations = [migrations.RunPython(fail)]
"""


def make_django_repo(path: Path) -> GitRepo:
    """The project's repository at ``path`` (a new directory), tags v1, v2, v3-badmigration, v4-broken, v5."""
    path.mkdir()
    subprocess.run([str(BIN / "django-admin"), "startproject", "mysite", str(path)], check=True, timeout=60)
    settings = path / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + SETTINGS_TAIL)
    (path / "mysite" / "urls.py").write_text(URLS)
    (path / "mysite" / "views.py").write_text(VIEWS)
    notes = path / "notes"
    (notes / "migrations").mkdir(parents=True)
    (notes / "__init__.py").write_text("")
    (notes / "migrations" / "__init__.py").write_text("")
    (path / ".gitignore").write_text("__pycache__/\n")
    repo = GitRepo(path)  # git init

    def release(tag: str, version: str, *, broken: bool = False) -> None:
        (path / "mysite" / "version.py").write_text(f"VERSION = {version!r}\nBROKEN = {broken!r}\n")
        repo.git("add", "-A")
        repo.git("commit", "-q", "-m", tag)
        repo.git("tag", tag)

    (notes / "models.py").write_text(MODELS_V1)
    (notes / "migrations" / "0001_initial.py").write_text(MIGRATION_1)
    release("v1", "v1")
    (notes / "models.py").write_text(MODELS_V2)
    (notes / "migrations" / "0002_note_done.py").write_text(MIGRATION_2)
    release("v2", "v2")
    bad = notes / "migrations" / "0003_fail.py"
    bad.write_text(MIGRATION_3_BAD)
    release("v3-badmigration", "v3")
    bad.unlink()
    release("v4-broken", "v4", broken=True)
    release("v5", "v5")
    return repo
