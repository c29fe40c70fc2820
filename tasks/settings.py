"""The ``[checkpoint]`` and ``[export]`` sections of luigi.cfg.

Task parameters left unset fall back to these sections, so one config file
points every task of a deployment at the same storage::

    [checkpoint]
    root = s3://my-bucket/runs
    storage_options = {"client_kwargs": {"region_name": "eu-west-1"}}

    [export]
    root = s3://my-bucket/exports
"""

from __future__ import annotations

from typing import Any

import luigi
from luigi.freezing import recursively_unfreeze
from luigi.parameter import ParameterVisibility

__all__ = ["checkpoint", "export", "storage_options_parameter", "storage_options_of"]


class checkpoint(luigi.Config):  # noqa: N801 (Luigi names config sections after classes)
    """``[checkpoint]``: where runs are stored."""

    root = luigi.Parameter(default="./runs", description="folder or URL of the runs")
    storage_options = luigi.DictParameter(
        default={}, visibility=ParameterVisibility.PRIVATE, description="fsspec storage options as JSON"
    )


class export(luigi.Config):  # noqa: N801
    """``[export]``: where snapshots are written."""

    root = luigi.Parameter(default="./exports", description="folder or URL of the snapshots")


def storage_options_parameter() -> luigi.OptionalDictParameter:
    """A task's private ``storage_options``; unset means ``[checkpoint] storage_options``."""
    return luigi.OptionalDictParameter(
        default=None,
        significant=False,
        visibility=ParameterVisibility.PRIVATE,
        description="fsspec storage options as JSON (default: [checkpoint] storage_options)",
    )


def storage_options_of(value: Any) -> dict[str, Any]:
    """A ``storage_options`` parameter's value as the plain dict fsspec wants."""
    return recursively_unfreeze(checkpoint().storage_options if value is None else value)
