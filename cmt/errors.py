"""Expected failures: what a user can fix (a config key, a file, a checksum, a setting), as opposed to a bug.

Every expected error derives from ``CmtError`` and says in its message which file and which key are at fault. The
command line prints such an error as one line and exits non-zero without a traceback (``CMT_DEBUG=1`` or ``--debug``
shows it); any other exception is unexpected and keeps its traceback. The classes also derive from the built-in
exception they refine (``ValueError``, ``FileNotFoundError``), so callers that catch those keep working. Standard
library only, so every layer may raise them; ``about(key)`` puts the config key a stage was working on in front of
the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class CmtError(Exception):
    """An expected failure; the message names the file and the key."""


class BadInput(CmtError, ValueError):
    """A file or setting that cannot be used: damaged, of the wrong shape or kind, or inconsistent with the config."""


class MissingInput(CmtError, FileNotFoundError):
    """A file or folder the job reads is not there."""


@contextmanager
def about(key: str) -> Iterator[None]:
    """Expected errors raised inside concern the config section or key ``key``: their message starts with it."""
    try:
        yield
    except CmtError as err:
        if err.args and not str(err.args[0]).startswith(key):
            err.args = (f"{key}: {err.args[0]}", *err.args[1:])
        raise
