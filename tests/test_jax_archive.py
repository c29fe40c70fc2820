"""JAX states in the archive: arrays and typed PRNG keys are NPY members that
``numpy.load`` reads by name, and load back as JAX objects without trusting
any JAX pickle code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from luigi_checkpoint.storage.archive import audit, dump, load, read_manifest

NATIVE = ["bool", "int8", "uint8", "int16", "int32", "uint32", "float16", "float32"]
BITS = ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "int4", "uint4"]


def random_values(dtype: str, shape: tuple[int, ...]) -> jax.Array:
    """A JAX array of ``dtype`` from random bits (small ints for the 4-bit types, 0/1 for bool)."""
    rng = np.random.default_rng(0)
    numpy_dtype = np.dtype(getattr(ml_dtypes, dtype, dtype))
    if dtype in ("bool", "int4", "uint4"):
        values = rng.integers(0, 2 if dtype == "bool" else 7, size=shape).astype(numpy_dtype)
    else:
        values = rng.integers(0, 256, size=(*shape, numpy_dtype.itemsize), dtype=np.uint8)
        values = values.view(numpy_dtype).reshape(shape)
    return jnp.asarray(values)


def same_bits(a: jax.Array, b: jax.Array) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("dtype", NATIVE + BITS)
def test_every_dtype_round_trips_bit_exactly(tmp_path: Path, dtype: str) -> None:
    arrays = {"matrix": random_values(dtype, (5, 4)), "scalar": random_values(dtype, ()),
              "empty": random_values(dtype, (0, 3))}
    dump(arrays, tmp_path / "a.zip")
    assert not [name for name in audit(tmp_path / "a.zip").globals if "jax" in name]
    back = load(tmp_path / "a.zip")
    for name, array in arrays.items():
        assert isinstance(back[name], jax.Array) and same_bits(back[name], array), name
    entry = read_manifest(tmp_path / "a.zip")["arrays"][0]
    assert entry["framework"] == "jax" and entry["framework_dtype"] == dtype and entry["device"] == "cpu:0"


@pytest.mark.parametrize("dtype", BITS)
def test_numpy_reads_the_bits_of_dtypes_it_lacks(tmp_path: Path, dtype: str) -> None:
    array = random_values(dtype, (3, 5))
    dump({"w": array}, tmp_path / "a.zip")
    with np.load(tmp_path / "a.zip") as members:
        bits = members["w"]
    assert bits.dtype == np.uint8 if np.dtype(array.dtype).itemsize == 1 else bits.dtype == np.uint16
    assert bits.tobytes() == np.asarray(array).tobytes()
    assert np.array_equal(load(tmp_path / "a.zip", as_numpy=True)["w"], bits)


def test_keys_continue_the_same_stream_and_raw_keys_are_arrays(tmp_path: Path) -> None:
    typed, raw = jax.random.split(jax.random.key(42))[1], jax.random.PRNGKey(7)
    dump({"key": typed, "raw": raw}, tmp_path / "a.zip")
    back = load(tmp_path / "a.zip")
    assert jnp.issubdtype(back["key"].dtype, jax.dtypes.prng_key)
    assert np.array_equal(jax.random.normal(back["key"], (8,)), jax.random.normal(typed, (8,)))
    assert back["raw"].dtype == jnp.uint32 and np.array_equal(back["raw"], raw)
    entries = {e["name"]: e for e in read_manifest(tmp_path / "a.zip")["arrays"]}
    assert entries["key"]["type"] == "PRNGKey" and entries["key"]["impl"] == "threefry2x32"


def test_the_same_array_twice_is_one_member_and_one_object(tmp_path: Path) -> None:
    shared = jnp.arange(4.0)
    manifest = dump({"a": shared, "b": [shared], "torch": torch.ones(2)}, tmp_path / "a.zip")
    assert [(e["name"], e["framework"]) for e in manifest["arrays"]] == [("a", "jax"), ("torch", "torch")]
    back = load(tmp_path / "a.zip")
    assert back["a"] is back["b"][0] and isinstance(back["torch"], torch.Tensor)


def test_without_jax_arrays_load_as_numpy_with_a_warning(tmp_path: Path) -> None:
    array = random_values("bfloat16", (2, 3))
    dump({"w": array}, tmp_path / "a.zip")
    script = (
        "import sys, warnings, json; sys.modules['jax'] = None\n"
        "from luigi_checkpoint.storage import load\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        f"    state = load({str(tmp_path / 'a.zip')!r})\n"
        "print(json.dumps([state['w'].dtype.str, [str(w.message) for w in seen]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    dtype, warnings = json.loads(done.stdout)
    assert dtype == "<u2" and len(warnings) == 1 and "luigi-checkpoint[jax]" in warnings[0]
