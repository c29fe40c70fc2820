"""``manifest.json``, the last member of archives and snapshots: written, parsed
and checked in one place for both formats.

Every manifest starts with ``format`` (``"luigi-checkpoint/archive"`` or
``"luigi-checkpoint/snapshot"``), ``format_version``, the versions that wrote
it and ``created``: ISO-8601 UTC with an explicit offset
(``2026-12-04T14:30:16.123456+00:00``). Snapshots written before 2026-12 end
their time in ``Z``; :func:`parse_time` reads both, on every Python version.

A format's version is bumped only when a reader of the previous version would
misread a new file; readers accept every version up to their own.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from typing import Any

import numpy as np

from .errors import ArchiveError, MissingMemberError, UnloadableArchiveError

__all__ = ["MEMBER", "library_version", "new", "parse", "parse_time", "to_bytes"]

MEMBER = "manifest.json"


@functools.cache
def library_version() -> str:
    """The installed version of luigi-checkpoint ("unknown" when not installed;
    read once: the installed metadata takes milliseconds to read)."""
    try:
        return importlib_metadata.version("luigi-checkpoint")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def new(kind: str, version: int, where: str, **fields: Any) -> dict[str, Any]:
    """A manifest of format ``kind`` (``archive`` or ``snapshot``) created now,
    holding ``fields`` after the common ones.

    Raises TypeError naming ``where`` if ``fields`` are not JSON-serializable
    (checked before anything is written).
    """
    manifest = {
        "format": f"luigi-checkpoint/{kind}",
        "format_version": version,
        "library_version": library_version(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "created": datetime.now(timezone.utc).isoformat(),
        **fields,
    }
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: manifest metadata must be JSON-serializable: {exc}") from None
    return manifest


def to_bytes(manifest: Mapping[str, Any], *, arrays: str | None = None) -> bytes:
    """The member's bytes: one line (json's C encoder; indenting takes its
    Python one, 10 us per array of the manifest).

    ``arrays`` is the JSON text of ``manifest["arrays"]``, its last field,
    when the caller has encoded it already (the same text ``json.dumps`` writes).
    """
    if arrays is None:
        return json.dumps(manifest).encode("utf8")
    head = json.dumps({key: value for key, value in manifest.items() if key != "arrays"})
    return f'{head[:-1]}, "arrays": {arrays}}}'.encode("utf8")


def parse(data: bytes | None, where: str, *, kind: str, version: int) -> dict[str, Any]:
    """The manifest in ``data`` (None: the archive has no such member), checked
    to be of format ``kind`` at a version up to ``version``.

    Raises :class:`ArchiveError` naming ``where`` when it is not JSON (nesting
    too deep for the parser included) or of another format, and
    :class:`UnloadableArchiveError` for a newer version (its bytes may be fine).
    """
    if data is None:
        raise MissingMemberError(f"{where}: no {MEMBER}, not a luigi-checkpoint {kind}")
    try:
        manifest = json.loads(data.decode("utf8"))
    except (ValueError, RecursionError) as exc:
        raise ArchiveError(f"{where}: {MEMBER} is not JSON: {exc}") from None
    expected = f"luigi-checkpoint/{kind}"
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != expected:
        raise ArchiveError(f"{where}: not a luigi-checkpoint {kind} ({MEMBER} format {found!r})")
    found_version = manifest.get("format_version")
    if not isinstance(found_version, int):
        raise ArchiveError(f"{where}: {MEMBER} has no format_version")
    if found_version > version:
        raise UnloadableArchiveError(
            f"{where}: {kind} format version {found_version!r} is newer than this reader "
            f"({version}); upgrade luigi-checkpoint"
        )
    return manifest


def parse_time(stamp: str | datetime) -> datetime:
    """A manifest's ``created`` as an aware UTC datetime (``Z`` accepted; a time
    without an offset is taken as UTC)."""
    moment = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(
        stamp[:-1] + "+00:00" if stamp.endswith("Z") else stamp
    )
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
