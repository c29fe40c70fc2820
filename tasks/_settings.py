"""The ``[checkpoint]`` and ``[export]`` sections of luigi.cfg.

Task parameters left unset fall back to these sections, so one config file
points every task of a deployment at the same storage::

    [checkpoint]
    root = s3://my-bucket/runs
    storage_options = {"client_kwargs": {"region_name": "eu-west-1"}}

    [export]
    root = s3://my-bucket/exports

They are read when a task uses them (not when it is created), straight from
Luigi's configuration: as ``luigi.Config`` classes their options would become
command-line flags clashing with the tasks' own ``--checkpoint-root``.
"""

from __future__ import annotations

import json
from typing import Any

import luigi
from luigi.configuration import get_config
from luigi.freezing import recursively_unfreeze
from luigi.parameter import ParameterVisibility

from luigi_checkpoint.storage.fs import Location, resolve

__all__ = [
    "default_checkpoint_root",
    "default_export_root",
    "location_of",
    "storage_options_parameter",
]

DEFAULT_CHECKPOINT_ROOT = "./runs"
DEFAULT_EXPORT_ROOT = "./exports"


def default_checkpoint_root() -> str:
    """``[checkpoint] root``, by default ``./runs``."""
    return get_config().get("checkpoint", "root", DEFAULT_CHECKPOINT_ROOT)


def default_export_root() -> str:
    """``[export] root``, by default ``./exports``."""
    return get_config().get("export", "root", DEFAULT_EXPORT_ROOT)


def storage_options_parameter() -> luigi.OptionalDictParameter:
    """A task's private ``storage_options``; unset means ``[checkpoint] storage_options``."""
    return luigi.OptionalDictParameter(
        default=None,
        significant=False,
        positional=False,
        visibility=ParameterVisibility.PRIVATE,
        description="fsspec storage options as JSON (default: [checkpoint] storage_options)",
    )


def location_of(url: str, storage_options: Any) -> Location:
    """``url`` resolved with a task's ``storage_options`` parameter value."""
    return resolve(url, _storage_options_of(storage_options))


def _storage_options_of(value: Any) -> dict[str, Any]:
    """A ``storage_options`` parameter's value as a plain dict (unset: from the config)."""
    if value is not None:
        return recursively_unfreeze(value)
    text = get_config().get("checkpoint", "storage_options", "{}")
    try:
        options = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"luigi config [checkpoint] storage_options: not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError("luigi config [checkpoint] storage_options: expected a JSON object")
    return options
