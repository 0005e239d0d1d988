"""The version this release shows. docker/example/make-repo.sh rewrites this file for each tag."""

VERSION = "dev"
