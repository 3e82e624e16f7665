"""Fetch a file by URL (http, https, file) or local path, verifying its sha256 before it is used.

The download streams into a temporary file next to the destination; only a file whose sha256
matches is renamed into place, so a failed or forged download never reaches a later stage.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from cmt.errors import CmtError
from cmt.formats.atomic import temporary_next_to

CHUNK = 1 << 20


class FetchError(CmtError, RuntimeError):
    """The source could not be read, or its content does not match the expected sha256."""


def _open(source: str, timeout: float):
    scheme = urlparse(source).scheme
    if scheme in ("http", "https", "file"):
        return urllib.request.urlopen(source, timeout=timeout)  # noqa: S310 - schemes checked above
    if scheme and len(scheme) > 1:
        raise FetchError(f"cannot fetch {source}: unsupported URL scheme {scheme!r} (use http, https, file or a path)")
    return open(Path(source).expanduser(), "rb")


def fetch(source: str, sha256: str, dest: str | Path, timeout: float = 60.0) -> Path:
    """Copy ``source`` to ``dest`` if and only if its content has the given sha256; returns ``dest``."""
    target = Path(dest)
    fd, tmp = temporary_next_to(target)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with _open(source, timeout) as src:
                    total = int(getattr(src, "headers", {}).get("Content-Length", 0) or 0) or None
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=f"fetch {Path(urlparse(source).path).name}",
                        leave=False,
                    ) as bar:
                        for block in iter(lambda: src.read(CHUNK), b""):
                            digest.update(block)
                            out.write(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError, ValueError) as err:
                raise FetchError(f"cannot fetch {source}: {err}") from err
        got = digest.hexdigest()
        if got != sha256.lower():
            raise FetchError(f"sha256 mismatch for {source}: expected {sha256.lower()}, got {got}; file discarded")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
