"""Configuration of pipelines: Luigi config files used in-process.

The ``luigi`` command reads its configuration from ``LUIGI_CONFIG_PATH`` (see
``configs/``). Code that builds tasks in-process (``luigi.build`` from a
notebook, a test, a scheduler of its own) uses :func:`luigi_config` instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from luigi.configuration import LuigiConfigParser

__all__ = ["luigi_config"]


@contextmanager
def luigi_config(path: str | os.PathLike[str]) -> Iterator[LuigiConfigParser]:
    """Read Luigi's configuration from ``path`` (on top of the defaults) while inside.

    On exit the configuration is what it was: Luigi's default files and
    ``LUIGI_CONFIG_PATH`` only. Tasks created inside keep their values.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such Luigi config file")
    parser = LuigiConfigParser.instance()
    parser.read(path)
    try:
        yield parser
    finally:
        parser.clear()
        LuigiConfigParser.reload()
