"""Dtypes a pickle rebuilds must be dtypes numpy itself would make.

numpy pickles a record or subarray dtype as ``numpy.dtype("V<size>")`` plus a
``BUILD`` whose state sets its fields, offsets, item size and flags, and
``dtype.__setstate__`` takes that state as it comes. A crafted state makes a
dtype no constructor would: a field past the end of the item, an object field
overlapping another, object fields without the flag that makes numpy manage
them. Arrays of such a dtype make numpy read and write outside their buffers,
or take bytes from the stream for object pointers: the process crashes, or
worse. So after every ``BUILD`` of a dtype the loader rebuilds its layout with
numpy's validating constructor and refuses the pickle unless both agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["layout_problem"]

COPY_HINT = 0x100
"""numpy 2.5's ``NPY_NOT_TRIVIALLY_COPYABLE``: a hint derived from the layout
(gaps between fields), not part of it. numpy's constructors disagree on it for
the same layout (a record built from a list lacks it, from a dict with offsets
has it) and pickles of numpy 1 and of numpy < 2.5 never carry it, so layouts
are compared without it."""


def _constructed_like(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` made again by numpy's constructor from its public description
    (names, formats, offsets, titles, item size; subarray; type string).

    Raises TypeError or ValueError where the constructor refuses that layout.
    """
    if dtype.names is not None:
        fields = [dtype.fields[name] for name in dtype.names]  # type: ignore[index]
        spec: dict[str, Any] = {
            "names": list(dtype.names),
            "formats": [_constructed_like(field[0]) for field in fields],
            "offsets": [field[1] for field in fields],
            "itemsize": dtype.itemsize,
        }
        if any(len(field) > 2 for field in fields):
            spec["titles"] = [field[2] if len(field) > 2 else None for field in fields]
        return np.dtype(spec, align=dtype.isalignedstruct)
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return np.dtype((_constructed_like(base), shape))
    return np.dtype(dtype.str)


def layout_problem(dtype: np.dtype[Any]) -> str | None:
    """Why numpy's constructor would not make ``dtype`` (None: it would)."""
    try:
        expected = _constructed_like(dtype)
    except (TypeError, ValueError, KeyError) as exc:
        return f"dtype {dtype} has a layout numpy refuses: {exc}"
    for what in ("itemsize", "flags", "alignment"):
        found, made = getattr(dtype, what), getattr(expected, what)
        if what == "flags":
            found, made = found & ~COPY_HINT, made & ~COPY_HINT
        if found != made:
            return f"dtype {dtype} has {what} {found}, numpy makes {made}"
    if expected != dtype:
        return f"dtype {dtype} is not the dtype numpy makes from its description, {expected}"
    return None
