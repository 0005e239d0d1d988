"""Every error coordinator raises on purpose.

One base class carries structured fields (logged as key-value pairs and written to the status file)
and a ``fix``: the one line a user needs to act on it. Only the CLI turns these into exit codes,
using :attr:`CoordinatorError.exit_code`.

``retryable`` tells the daemon whether the same marker is worth trying again on the next periodic
resync (a remote that was down, a tag that is not pushed yet) or not until the marker changes (an
invalid marker, a failed build).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from coordinator.records import ErrorInfo

__all__ = [
    "BuildError",
    "CanaryError",
    "CheckFailed",
    "ConfigError",
    "CoordinatorError",
    "DeployFailed",
    "GitError",
    "LayoutError",
    "LockHeldError",
    "MarkerError",
    "MarkerRefused",
    "NoDaemonError",
    "PausedError",
    "PreSwapError",
    "ReloadError",
    "RolledBack",
    "SharedPathError",
    "SignatureError",
    "SigningKeysError",
    "TagNotFoundError",
    "VerifyError",
    "WaitTimeoutError",
]


class CoordinatorError(Exception):
    """Base of all coordinator errors: a message, an optional fix and structured fields."""

    exit_code: ClassVar[int] = 1
    kind: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, fix: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.fields = fields

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message} ({self.fix})"

    def as_dict(self) -> ErrorInfo:
        """The error as it appears in the status file and in log events."""
        out: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.fix:
            out["fix"] = self.fix
        out.update({k: v for k, v in self.fields.items() if v is not None})
        return cast(ErrorInfo, out)


class ConfigError(CoordinatorError):
    """An option, environment variable or config file value is invalid."""

    exit_code = 2
    kind = "config"


class LockHeldError(CoordinatorError):
    """Another coordinator already runs on this ROOT."""

    exit_code = 3
    kind = "locked"


class LayoutError(CoordinatorError):
    """ROOT holds something coordinator will not touch (a real `current` directory, a planted link)."""

    exit_code = 2
    kind = "layout"


class MarkerError(CoordinatorError):
    """The deploy marker cannot be read or does not state a valid request."""

    kind = "marker"


class MarkerRefused(MarkerError):
    """`run --once`: the marker is invalid, so nothing was deployed (a usage error: exit 2)."""

    exit_code = 2


class GitError(CoordinatorError):
    """A git command failed or timed out; usually transient (remote down), so retried on resync."""

    kind = "git"
    retryable = True


class TagNotFoundError(GitError):
    """The tag is not in the repository (yet): retried on resync, in case it is pushed later."""

    kind = "tag_not_found"


class BuildError(CoordinatorError):
    """Preparing a release or its build command failed: not retried until the marker changes."""

    kind = "build"


class SandboxError(CoordinatorError):
    """The build sandbox worked at start but could not be set up for this build. The sandbox is then
    switched off, so the same marker is retried on resync: a full checkout built in place."""

    kind = "sandbox"
    retryable = True


class SharedPathError(CoordinatorError):
    """``ROOT/shared`` cannot back a shared path (a shared file is missing, a path has the wrong type,
    a symlink there points outside it). Retried on resync: the fix is to create or repair the file in
    ``ROOT/shared``, not to change the marker."""

    kind = "shared"
    retryable = True


class PreSwapError(CoordinatorError):
    """``--pre-swap-command`` failed or timed out: nothing was swapped. Not retried until the marker
    changes (a failed migration must not run again in a loop)."""

    kind = "pre_swap"


class CanaryError(CoordinatorError):
    """``--canary-command``: the new release, started privately before the swap, did not answer its
    canary URL with the expected text in time (or exited first): nothing was swapped or reloaded and
    the release is discarded. ``output`` holds the canary's last lines. Not retried until the marker
    changes."""

    kind = "canary"


class SignatureError(CoordinatorError):
    """``--verify-signatures``: the tag is not an annotated tag signed by an allowed key (lightweight,
    not signed, signed by another key, or a bad signature); ``signer`` says what was found. Nothing was
    prepared and ``current`` is untouched. Not retried until the marker changes."""

    kind = "signature"


class SigningKeysError(CoordinatorError):
    """``--verify-signatures``: the ``--allowed-signers`` or ``--gpg-keyring`` file cannot be read or
    holds no usable key (at start: exit 2, as a ConfigError). Retried on resync: the fix is to repair
    the file (a Secret being rotated), not to change the marker."""

    kind = "signing_keys"
    retryable = True


class ReloadError(CoordinatorError):
    """The app server could not be told to reload (reload file not writable, ...)."""

    kind = "reload"
    retryable = True


class RolledBack(CoordinatorError):
    """The new release failed its health check after the reload; the previous one was restored.
    Not retried until the marker changes."""

    kind = "rolled_back"


class VerifyError(CoordinatorError):
    """The new release failed its health check and there was no previous release to go back to."""

    kind = "verify"


class CheckFailed(CoordinatorError):
    """`coordinator check`: at least one pre-flight check failed (each one printed with its fix)."""

    exit_code = 1
    kind = "check_failed"


class DeployFailed(CoordinatorError):
    """`deploy --wait` / `run --once`: the attempt for the requested tag failed."""

    exit_code = 1
    kind = "deploy_failed"


class WaitTimeoutError(CoordinatorError):
    """`deploy --wait --timeout S` ran out of time before the tag was served."""

    exit_code = 4
    kind = "timeout"


class NoDaemonError(CoordinatorError):
    """`deploy --wait` / `rollback --wait`: no coordinator holds ROOT's lock, so nothing deploys the
    request now (it stays written and is deployed when one starts)."""

    exit_code = 5
    kind = "no_daemon"


class PausedError(CoordinatorError):
    """`deploy --wait` / `rollback --wait`: deploys are paused on ROOT (``coordinator pause``), so the
    request is not deployed now (it stays written and is deployed after ``coordinator resume``)."""

    exit_code = 6
    kind = "paused"
