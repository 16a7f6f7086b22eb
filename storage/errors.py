"""The one exception tree of the project.

It lives in the lowest layer so that `storage`, `sisa` and `pipelines` all raise from it.
Every error a user can cause is a `SisaError`; the CLI prints its message and exits with its
`exit_code`. Messages name the offending rows or ids (never record text) and say what to do.
Errors are plain picklable objects so they cross Ray task boundaries intact.
"""

from __future__ import annotations

MAX_LISTED = 20


def list_some(items: list, what: str = "") -> str:
    """`a, b, c (and 17 more)`: the first MAX_LISTED items and a count of the rest."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:MAX_LISTED])
    rest = len(items) - MAX_LISTED
    tail = f" (and {rest} more{' ' + what if what else ''})" if rest > 0 else ""
    return shown + tail


class SisaError(Exception):
    """Base class for every error a user can cause."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (self.__class__, (self.message,))


class ConfigError(SisaError):
    """The configuration (YAML, overrides) is invalid; the message lists every problem."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")

    def __reduce__(self):
        return (self.__class__, (self.problems,))


class StoreError(SisaError):
    """The store is missing, damaged or in a state that forbids the operation."""


class StoreLockedError(StoreError):
    """Another process holds the store lock."""

    exit_code = 3


class IntegrityError(StoreError):
    """A file's bytes do not match the sha256 recorded for it."""


class ValidationError(SisaError):
    """Input rows or ids are invalid; nothing was changed."""

    exit_code = 4


class NotFoundError(SisaError):
    """A named version, request, checkpoint or id does not exist."""

    exit_code = 5


class RefusedError(SisaError):
    """The operation is understood but refused because it would break a guarantee."""

    exit_code = 6


class ShardJobError(SisaError):
    """Shard jobs failed: `shard_ids` names them, `errors` maps each to the exception it raised.

    The map is a constructor argument, so it survives pickling (a Ray task boundary, a process
    pool) as long as the exceptions in it are picklable themselves.
    """

    def __init__(
        self,
        message: str,
        shard_ids: list[int] | None = None,
        errors: dict[int, BaseException] | None = None,
    ):
        super().__init__(message)
        self.errors = dict(errors or {})
        self.shard_ids = list(shard_ids) if shard_ids is not None else list(self.errors)

    def __reduce__(self):
        return (self.__class__, (self.message, self.shard_ids, self.errors))
