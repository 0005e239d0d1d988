# syntax=docker/dockerfile:1
# Images for the app side of coordinator, serving the example Django app (docker/example) with uWSGI
# as docker/uwsgi.ini configures it. Build from the repository root:
#
#   docker build -f docker/app.Dockerfile --target app -t coordinator-example-app .
#       uWSGI alone, for the sidecar topology (docker/compose.yaml runs it next to the coordinator
#       image of docker/Dockerfile, sharing the volume /srv/app)
#   docker build -f docker/app.Dockerfile --target single -t coordinator-example-single .
#       uWSGI and coordinator in one container under supervisord (docker/supervisord.conf)
#
# The image holds the Python dependencies of the app (Django here) and coordinator (for
# coordinator.pin, the release-pinning loader uWSGI imports); the app's code is not in the image: it
# comes from the releases coordinator builds on the shared volume. A release that needs a new
# dependency therefore needs a new image first.
ARG PYTHON_IMAGE=python:3.12-slim

# uWSGI has no binary wheels: compile one here, so that the final image carries no compiler.
FROM ${PYTHON_IMAGE} AS uwsgi-build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels "uwsgi==2.0.31"

FROM ${PYTHON_IMAGE} AS app
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# The same uid/gid as the coordinator image (docker/Dockerfile): both containers write and read the
# shared volume, and uWSGI's master FIFO (mode 0600) must belong to the user coordinator runs as.
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/app --shell /usr/sbin/nologin app
COPY --from=uwsgi-build /wheels /wheels
WORKDIR /opt/coordinator
COPY pyproject.toml README.md ./
COPY coordinator ./coordinator
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        /wheels/*.whl "django>=5.2,<6" . \
    && rm -rf /wheels
COPY docker/uwsgi.ini /etc/coordinator/uwsgi.ini
RUN mkdir -p /srv/app && chown 10001:10001 /srv/app
# docker/uwsgi.ini reads these (its defaults are the same).
ENV COORDINATOR_ROOT=/srv/app \
    COORDINATOR_PIN_APP=exampleapp.wsgi:application \
    APP_HTTP=0.0.0.0:8000 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/app
EXPOSE 8000
ENTRYPOINT ["tini", "--"]
CMD ["uwsgi", "--ini", "/etc/coordinator/uwsgi.ini"]

# One container: supervisord runs uWSGI and `coordinator run` (both autorestarted), as the old
# single-container set-up did with a `git checkout` one-shot. Give COORDINATOR_REPO (and any other
# COORDINATOR_* option) at run time.
FROM app AS single
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore "supervisor>=4.2,<5"
COPY docker/supervisord.conf /etc/coordinator/supervisord.conf
# /repo: where docker/compose.yaml mounts the example repository (an empty named volume takes this owner)
RUN mkdir -p /run/supervisor /repo && chown 10001:10001 /run/supervisor /repo
# docker/supervisord.conf reads these: control socket and pid file; logs (on the shared volume).
ENV SUPERVISOR_RUN_DIR=/run/supervisor \
    SUPERVISOR_LOG_DIR=/srv/app/log \
    COORDINATOR_LOG_FORMAT=json
USER 10001:10001
CMD ["sh", "-c", "mkdir -p \"$SUPERVISOR_LOG_DIR\" && exec supervisord -c /etc/coordinator/supervisord.conf"]
