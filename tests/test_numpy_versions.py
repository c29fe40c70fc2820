"""Archives cross numpy versions in both directions (DESIGN section 1).

Archives are written in one interpreter and read in another: this one (the
project's numpy 2), ``.venv-numpy-oldest`` (the oldest numpy ``pyproject.toml``
allows, with this package) and ``.venv-theano`` (Theano 1.0.5 and its numpy
1.23), both installed by ``make test`` (``make oracles``); a missing one fails
these tests, never skips them. The states (``tests/numpy_oracle.py``) hold
numpy scalars, dtypes (record, aligned, nested, titled, datetime), scalar
types, object arrays, Generators of every bit generator, RandomState, a bare
bit generator and a seed sequence; a read must describe exactly what the
write described (bytes, dtype layouts, generator states and their next draws).
``storage.load`` reads safely (the default trust; object arrays that Theano
wrote as pickled NPY members with ``unsafe=True``), Theano with its own
``pkl_utils.load``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import numpy_oracle as oracle
from luigi_checkpoint.storage import _numpy_compat as numpy_compat
from luigi_checkpoint.storage._trust import DEFAULT_TRUSTED, Audit, audit_pickle, load_pickle
from luigi_checkpoint.storage.errors import CorruptPickleError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(oracle.__file__).resolve()
VENVS = {"oldest": ROOT / ".venv-numpy-oldest", "theano": ROOT / ".venv-theano"}
"""The oracle interpreters, by the name the tests give them."""
HERE = "numpy2"
WRITES = {"numpy2": "write-ours", "oldest": "write-ours", "theano": "write-theano",
          "numpy2-native": "write-native", "oldest-native": "write-native"}
"""Writers: where they run (the name before ``-native``) and the oracle command."""

Described = dict[str, Any]


def _run(venv: str, command: str, folder: Path) -> Any:
    """The JSON an oracle command prints, run in ``venv`` (here, in-process)."""
    if venv == HERE:
        return oracle.COMMANDS[command](str(folder))
    python = VENVS[venv] / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: `make oracles` installs it (`make test` does it "
                    "first); the cross-version tests need it and never skip", pytrace=False)
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "THEANO_FLAGS": f"cxx=,blas.ldflags=,base_compiledir={folder.parent / 'theano'}"}
    proc = subprocess.run([str(python), str(SCRIPT), command, str(folder)], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"`{python} {SCRIPT.name} {command}` failed:\n{proc.stderr[-4000:]}",
                    pytrace=False)
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Described]]:
    """``written(writer)``: the folder of its archives and what each holds (made once)."""
    made: dict[str, tuple[Path, Described]] = {}

    def get(writer: str) -> tuple[Path, Described]:
        if writer not in made:
            folder = tmp_path_factory.mktemp(writer)
            made[writer] = folder, _run(writer.split("-")[0], WRITES[writer], folder)
        return made[writer]

    return get


@pytest.fixture(scope="module")
def crossing(
    written: Callable[[str], tuple[Path, Described]],
) -> Callable[[str, str], tuple[Described, Described]]:
    """``crossing(writer, reader)``: what the writer wrote and what the reader read (made once)."""
    made: dict[tuple[str, str], tuple[Described, Described]] = {}

    def get(writer: str, reader: str) -> tuple[Described, Described]:
        if (writer, reader) not in made:
            folder, wrote = written(writer)
            command = "read-theano" if reader == "theano" else "read-ours"
            made[writer, reader] = wrote, _run(reader, command, folder)
        return made[writer, reader]

    return get


def _assert_read_as_written(crossed: tuple[Described, Described], case: str) -> None:
    wrote, read = crossed
    names = sorted(name for name in wrote if name.startswith(f"{case}-"))
    assert names, f"no archive of {case} was written"
    for name in names:
        got = read.get(name, {"error": "not read"})
        assert "error" not in got, f"{name}: {got['error']}"
        assert got == wrote[name], f"{name} reads as something else than was written"


CROSSINGS = [
    ("numpy2", "numpy2"), ("numpy2", "oldest"), ("oldest", "numpy2"), ("oldest", "oldest"),
    ("numpy2", "theano"), ("oldest", "theano"),
    ("theano", "numpy2"), ("theano", "oldest"),
    ("numpy2-native", "numpy2"), ("numpy2-native", "oldest"),
    ("oldest-native", "numpy2"), ("oldest-native", "oldest"),
]
"""(writer, reader): the matrix of the README's Formats section. ``numpy2`` is
this interpreter, ``oldest`` the oldest numpy, ``theano`` Theano 1.0.5's
``pkl_utils`` on numpy 1.23; ``-native`` archives hold numpy's own pickles
(as this library wrote before, and other tools write)."""


@pytest.mark.parametrize(("writer", "reader", "case"), [
    pytest.param(writer, reader, case, id=f"{writer}->{reader}-{case}")
    for writer, reader in CROSSINGS for case in oracle.CASES
])
def test_archives_load_as_written_across_numpy_versions(
    crossing: Any, writer: str, reader: str, case: str
) -> None:
    _assert_read_as_written(crossing(writer, reader), case)


# ------------------------------------------------------------------ the setup


def test_the_oracles_run_the_versions_they_stand_for(tmp_path: Path) -> None:
    floor = re.search(r'"numpy>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    oldest, theano = _run("oldest", "versions", tmp_path), _run("theano", "versions", tmp_path)
    assert oldest["numpy"].startswith(f"{floor}."), oldest
    assert theano["theano"] == "1.0.5" and theano["numpy"].startswith("1.23."), theano
    assert np.__version__.startswith("2."), f"this side stands for numpy 2, has {np.__version__}"


def test_archives_name_nothing_the_oldest_numpy_lacks(written: Any) -> None:
    folder, wrote = written("numpy2")
    for name in wrote:
        with zipfile.ZipFile(folder / name) as zf:
            assert b"numpy._core" not in zf.read("pkl"), name


# ------------------------------------- the mappings, in this interpreter alone


def test_aligned_dtypes_keep_their_flag_from_numpy1s_signed_flags() -> None:
    """numpy 1 pickles an aligned struct's flags as -112; numpy 2 alone reads
    that as 16 (the aligned-struct flag dropped), the loader as 144."""
    aligned = np.dtype([("a", "u1"), ("b", "<f8")], align=True)
    numpy1 = pickle.dumps(aligned, 0).replace(b"I144\n", b"I-112\n")
    assert not pickle.loads(numpy1).isalignedstruct
    loaded = load_pickle(numpy1, source="numpy1.pkl")
    assert loaded == aligned and loaded.isalignedstruct
    assert loaded.flags & 0xFF == aligned.flags & 0xFF  # numpy 2.5 adds a copying hint, 0x100


OTHER_CORE = "numpy.core" if numpy_compat.NUMPY2 else "numpy._core"
LONGDOUBLE_BITS = 8 * np.dtype(np.longdouble).itemsize


@pytest.mark.parametrize(("written", "running"), [
    (f"{OTHER_CORE}.multiarray._reconstruct", f"{numpy_compat.CORE}.multiarray._reconstruct"),
    (f"{OTHER_CORE}.multiarray.scalar", f"{numpy_compat.CORE}.multiarray.scalar"),
    ("numpy.bool", f"numpy.{np.bool_.__name__}"),
    ("numpy.bool_", f"numpy.{np.bool_.__name__}"),
    (f"numpy.float{LONGDOUBLE_BITS}", f"numpy.{np.longdouble.__name__}"),
    ("numpy.longdouble", f"numpy.{np.longdouble.__name__}"),
    (f"numpy.complex{2 * LONGDOUBLE_BITS}", f"numpy.{np.clongdouble.__name__}"),
])
def test_names_other_numpy_versions_write_are_read_as_this_numpys_trusted_names(
    written: str, running: str
) -> None:
    module, _, name = written.rpartition(".")
    assert audit_pickle(f"c{module}\n{name}\n.".encode()) == Audit((running,), ())


def test_only_this_numpys_spelling_is_trusted() -> None:
    assert not [name for name in DEFAULT_TRUSTED if name.startswith(f"{OTHER_CORE}.")]
    refused = audit_pickle(f"c{OTHER_CORE}.multiarray\nfromfile\n.".encode())
    assert refused.untrusted == (f"{numpy_compat.CORE}.multiarray.fromfile",)


def test_random_helpers_build_only_numpys_bit_generators() -> None:
    """numpy 2's ``__bit_generator_ctor`` calls any class it is given; the loader's only
    numpy's five bit generators."""
    data = b"cnumpy.random._pickle\n__bit_generator_ctor\n(cbuiltins\nbytearray\ntR."
    with pytest.raises(CorruptPickleError, match="not one of numpy's bit generators"):
        load_pickle(data, source="forged.pkl")
