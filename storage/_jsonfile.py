"""Small JSON files of the run folder (run record, history segments): written
whole or not at all, read as one object of a known ``format`` or skipped."""

from __future__ import annotations

import json
import logging
from typing import Any

from .fs import Location, atomic_write, storage_errors

__all__ = ["read", "write"]

logger = logging.getLogger(__name__)


def write(location: Location, content: dict[str, Any], *, indent: int | None = None) -> None:
    """Write ``content`` as JSON to ``location``, replacing what was there."""
    separators = (",", ":") if indent is None else None
    with atomic_write(location) as f:
        f.write(json.dumps(content, indent=indent, separators=separators).encode())


def read(location: Location, fmt: str) -> dict[str, Any] | None:
    """The JSON object at ``location`` whose ``format`` is ``fmt``; None if the
    file is missing, or (logged) not JSON or of another format."""
    location.fs.invalidate_cache(location.path)
    try:
        with storage_errors(location.url):
            content = json.loads(location.fs.cat_file(location.path))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        logger.warning("skipping %s: not JSON: %s", location.url, exc)
        return None
    if not isinstance(content, dict) or content.get("format") != fmt:
        logger.warning("skipping %s: not a %s file", location.url, fmt)
        return None
    return content
