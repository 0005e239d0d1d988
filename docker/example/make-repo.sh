#!/bin/sh
# Make a git repository of the example Django app (docker/example/project) with three tags:
#   v1, v2      the page shows "Example app v1" / "v2"
#   v3-broken   exampleapp/version.py imports a module that does not exist: the release cannot be
#               loaded, coordinator's health check fails and it rolls back to the previous release
#
# Usage: make-repo.sh DEST     (DEST must not exist or be empty; an existing repository is left alone)
# POSIX sh and git only, so it also runs in the coordinator image:
#   docker compose -f docker/compose.yaml run --rm example-repo
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
dest=${1:?usage: make-repo.sh DEST}

if [ -e "$dest/.git" ]; then
    echo "make-repo.sh: $dest is already a git repository; leaving it as it is (remove it to start over)" >&2
    exit 0
fi
if [ -d "$dest" ] && [ -n "$(ls -A -- "$dest")" ]; then
    echo "make-repo.sh: $dest is not empty; give a new or empty directory" >&2
    exit 2
fi

mkdir -p -- "$dest"
cp -R -- "$here/project/." "$dest/"
find "$dest" -name __pycache__ -prune -exec rm -rf {} +

export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-example}" GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-example@example.invalid}"
export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-example}" GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-example@example.invalid}"
git -C "$dest" init -q -b main

release() {  # release TAG MESSAGE: commit the tree as it is now and tag it
    git -C "$dest" add -A
    git -C "$dest" commit -q -m "$2"
    git -C "$dest" tag "$1"
    echo "tagged $1 $(git -C "$dest" rev-parse --short=12 "$1")"
}

version() {  # version VALUE: the version the page shows
    printf '"""The version this release shows. docker/example/make-repo.sh rewrites this file for each tag."""\n\nVERSION = "%s"\n' "$1" >"$dest/exampleapp/version.py"
}

version v1
release v1 "Example app v1"

version v2
release v2 "Example app v2"

version v3-broken
cat >>"$dest/exampleapp/version.py" <<'PY'

# A release that cannot be imported: deploying it makes the health check fail and coordinator
# roll back to the previous release.
import exampleapp.this_module_does_not_exist  # noqa: E402, F401
PY
release v3-broken "Example app v3 (broken: fails to import)"

echo "repository ready: $dest (tags: $(git -C "$dest" tag | tr '\n' ' '))"
