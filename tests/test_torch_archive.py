"""torch training states in the archive: tensors, parameters and generators are
NPY members that ``numpy.load`` reads by name, and load back as what they
were without trusting any torch pickle code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from luigi_checkpoint.storage import CheckpointStore
from luigi_checkpoint.storage.archive import audit, dump, load, read_manifest
from luigi_checkpoint.storage.errors import ArchiveError, UnloadableArchiveError, UnsupportedArrayError

from .conftest import Root
from .test_readme import examples, run_example

# numpy's name of the bits that hold each torch dtype numpy lacks
BITS = {
    torch.bfloat16: np.uint16, torch.complex32: np.uint32, torch.float8_e4m3fn: np.uint8,
    torch.float8_e4m3fnuz: np.uint8, torch.float8_e5m2: np.uint8, torch.float8_e5m2fnuz: np.uint8,
    torch.float8_e8m0fnu: np.uint8, torch.float4_e2m1fn_x2: np.uint8,
}
NATIVE = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
          torch.uint32, torch.uint64, torch.float16, torch.float32, torch.float64, torch.complex64,
          torch.complex128]


def training_state(seed: int = 0) -> dict[str, Any]:
    """A small model and an Adam optimizer after two steps, and the RNGs."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(8, 6)).square().mean().backward()
        optimizer.step()
    generator = torch.Generator().manual_seed(seed + 1)
    torch.rand(7, generator=generator)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "generator": generator, "step": 2}


def random_bits(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor of ``dtype`` holding random bits (every bit pattern, NaNs included;
    for bool, 0 and 1)."""
    width = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 2 if dtype == torch.bool else 256, (*shape, width), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape) if width > 1 else raw.reshape(shape).view(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (NaN payloads and -0.0 included)."""
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().reshape(-1).view(torch.uint8)

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


def test_numpy_load_lists_every_weight_and_optimizer_tensor_by_name(tmp_path: Path) -> None:
    state = training_state()
    dump(state, tmp_path / "a.zip")
    with np.load(tmp_path / "a.zip") as members:
        names = set(members.files)
        for key, tensor in state["model"].items():
            assert np.array_equal(members[f"model/{key.replace('.', '_')}"], tensor.numpy())
        for index, slots in state["optimizer"]["state"].items():
            for slot, tensor in slots.items():
                assert np.array_equal(members[f"optimizer/state/{index}/{slot}"], tensor.numpy())
        assert np.array_equal(members["rng"], state["rng"].numpy())
        assert np.array_equal(members["generator"], state["generator"].get_state().numpy())
    assert names == {"model/0_weight", "model/0_bias", "model/2_weight", "model/2_bias", "rng",
                     "generator", "pkl", "manifest.json",
                     *(f"optimizer/state/{i}/{s}" for i in range(4) for s in ("step", "exp_avg", "exp_avg_sq"))}


def test_load_without_trusted_returns_equal_tensors(tmp_path: Path) -> None:
    state = training_state()
    dump(state, tmp_path / "a.zip")
    assert not [name for name in audit(tmp_path / "a.zip").globals if "torch" in name]
    back = load(tmp_path / "a.zip")
    for key, tensor in state["model"].items():
        assert type(back["model"][key]) is torch.Tensor and same_bits(back["model"][key], tensor)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model.load_state_dict(back["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    optimizer.load_state_dict(back["optimizer"])
    assert optimizer.state_dict()["param_groups"] == state["optimizer"]["param_groups"]
    for index, slots in state["optimizer"]["state"].items():
        for slot, tensor in slots.items():
            assert same_bits(back["optimizer"]["state"][index][slot], tensor)
    assert same_bits(back["rng"], state["rng"]) and back["step"] == 2


@pytest.mark.parametrize("dtype", [*NATIVE, *BITS], ids=str)
def test_every_dtype_round_trips_bit_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = {"matrix": random_bits(dtype, (5, 4)), "scalar": random_bits(dtype, ()),
               "empty": random_bits(dtype, (0, 3)), "strided": random_bits(dtype, (6, 4))[::2].t()}
    dump(tensors, tmp_path / "a.zip")
    back = load(tmp_path / "a.zip")
    for name, tensor in tensors.items():
        assert same_bits(back[name], tensor), name
    entry = read_manifest(tmp_path / "a.zip")["arrays"][0]
    assert entry["framework"] == "torch" and entry["framework_dtype"] == str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("dtype", list(BITS), ids=str)
def test_numpy_reads_the_bits_of_dtypes_it_lacks(tmp_path: Path, dtype: torch.dtype) -> None:
    tensor = random_bits(dtype, (3, 5))
    dump({"t": tensor}, tmp_path / "a.zip")
    with np.load(tmp_path / "a.zip") as members:
        bits = members["t"]
    assert bits.dtype == BITS[dtype]
    signed = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[tensor.element_size()]
    assert np.array_equal(bits, tensor.view(signed).numpy().view(BITS[dtype]))
    assert np.array_equal(load(tmp_path / "a.zip", as_numpy=True)["t"], bits)


def test_the_same_tensor_twice_is_one_member_and_one_object(tmp_path: Path) -> None:
    shared, base = torch.arange(6.0), torch.arange(10.0)
    manifest = dump({"a": shared, "b": [shared], "base": base, "view": base[2:5]}, tmp_path / "a.zip")
    assert [e["name"] for e in manifest["arrays"]] == ["a", "base", "view"]
    back = load(tmp_path / "a.zip")
    assert back["a"] is back["b"][0]
    back["view"][0] = -1.0  # views of one storage load as independent tensors
    assert torch.equal(back["base"], base) and back["view"].tolist() == [-1.0, 3.0, 4.0]


def test_parameters_and_requires_grad_load_as_saved(tmp_path: Path) -> None:
    state = {"weight": torch.nn.Parameter(torch.randn(3, 2)),
             "frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False),
             "leaf": torch.randn(4, requires_grad=True), "plain": torch.randn(4)}
    dump(state, tmp_path / "a.zip")
    back = load(tmp_path / "a.zip")
    assert type(back["weight"]) is torch.nn.Parameter and back["weight"].requires_grad
    assert type(back["frozen"]) is torch.nn.Parameter and not back["frozen"].requires_grad
    assert type(back["leaf"]) is torch.Tensor and back["leaf"].requires_grad
    assert not back["plain"].requires_grad
    for name, tensor in state.items():
        assert torch.equal(back[name].detach(), tensor.detach())


def test_generators_and_the_global_rng_continue_identically(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1234)
    torch.randn(100, generator=generator)
    torch.manual_seed(99)
    torch.rand(3)
    dump({"generator": generator, "rng": torch.get_rng_state()}, tmp_path / "a.zip")
    expected = (torch.randn(50, generator=generator), torch.rand(50))
    back = load(tmp_path / "a.zip")
    torch.set_rng_state(back["rng"])
    assert back["generator"].initial_seed() == 1234
    assert torch.equal(torch.randn(50, generator=back["generator"]), expected[0])
    assert torch.equal(torch.rand(50), expected[1])


def test_map_location_and_as_numpy(tmp_path: Path) -> None:
    dump({"w": torch.randn(3, dtype=torch.float64), "g": torch.Generator()}, tmp_path / "a.zip")
    back = load(tmp_path / "a.zip", map_location="cpu")
    assert back["w"].device == torch.device("cpu")
    plain = load(tmp_path / "a.zip", as_numpy=True)
    assert type(plain["w"]) is np.ndarray and np.array_equal(plain["w"], back["w"].numpy())
    assert plain["g"].dtype == np.uint8 and np.array_equal(plain["g"], back["g"].get_state().numpy())
    with pytest.raises(UnloadableArchiveError, match="torch cannot rebuild the Tensor .map_location='cuda:99'"):
        load(tmp_path / "a.zip", map_location="cuda:99")


def test_without_torch_tensors_load_as_numpy_with_a_warning(tmp_path: Path) -> None:
    tensor = torch.randn(4, 3).to(torch.bfloat16)
    dump({"w": tensor, "n": 3}, tmp_path / "a.zip")
    script = (
        "import sys, warnings, json; sys.modules['torch'] = None\n"
        "from luigi_checkpoint.storage import load\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        f"    state = load({str(tmp_path / 'a.zip')!r})\n"
        "print(json.dumps([type(state['w']).__name__, state['w'].dtype.str, state['w'].tolist(),"
        " [str(w.message) for w in seen]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    kind, dtype, bits, warnings = json.loads(done.stdout)
    assert (kind, dtype) == ("ndarray", "<u2")
    assert bits == tensor.view(torch.int16).numpy().view(np.uint16).tolist()
    assert len(warnings) == 1 and "torch is not installed" in warnings[0] and "luigi-checkpoint[torch]" in warnings[0]


def test_tensors_without_dense_data_are_refused_when_saving(tmp_path: Path) -> None:
    dump({"ok": 1}, tmp_path / "a.zip")
    before = (tmp_path / "a.zip").read_bytes()
    sparse = torch.eye(3).to_sparse()
    with pytest.raises(UnsupportedArrayError, match="layout torch.sparse_coo.*to_dense"):
        dump({"sparse": sparse}, tmp_path / "a.zip")
    assert (tmp_path / "a.zip").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_a_manifest_that_disagrees_with_the_member_is_refused(tmp_path: Path) -> None:
    dump({"w": torch.randn(4)}, tmp_path / "a.zip")
    with zipfile.ZipFile(tmp_path / "a.zip") as source, zipfile.ZipFile(tmp_path / "b.zip", "w") as forged:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "manifest.json":
                manifest = json.loads(data)
                manifest["arrays"][0].update(framework_dtype="bfloat16", offset=None)
                data = json.dumps(manifest).encode()
            forged.writestr(info.filename, data)
    with pytest.raises(ArchiveError, match="b.zip: member 'w': manifest dtype 'bfloat16' does not match the member's <f4"):
        load(tmp_path / "b.zip")


def test_checkpoint_store_saves_torch_states_in_the_background(root: Root) -> None:
    state = training_state()
    expected = {key: tensor.clone() for key, tensor in state["model"].items()}
    with CheckpointStore(root.url, storage_options=root.storage_options) as store:
        store.save(1, state, block=False)
        for tensor in state["model"].values():  # changed while the save is in flight
            tensor.add_(1.0)
        store.wait()
        step, back = store.restore()
        _, plain = store.restore(as_numpy=True)
    assert step == 1
    for key, tensor in expected.items():
        assert same_bits(back["model"][key], tensor)
        assert type(plain["model"][key]) is np.ndarray and np.array_equal(plain["model"][key], tensor.numpy())


def test_readme_torch_examples_run(tmp_path: Path) -> None:
    assert examples("torch")
    for code in examples("torch"):
        run_example(code, tmp_path)


def test_theano_reads_a_torch_state_as_numpy_arrays(tmp_path: Path) -> None:
    python = Path(__file__).resolve().parents[1] / ".venv-theano" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: `make oracles` installs it", pytrace=False)
    state = training_state()
    dump(state, tmp_path / "a.zip")
    script = (
        "import json, sys\nfrom theano.misc.pkl_utils import load\n"
        "with open(sys.argv[1], 'rb') as f:\n    state = load(f)\n"
        "print(json.dumps({'weight': state['model']['0.weight'].tolist(),"
        " 'generator': state['generator'].tolist(), 'step': state['step'],"
        " 'exp_avg': state['optimizer']['state'][2]['exp_avg'].tolist()}))\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "THEANO_FLAGS": f"cxx=,blas.ldflags=,base_compiledir={tmp_path / 'theano'}"}
    done = subprocess.run([str(python), "-c", script, str(tmp_path / "a.zip")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout)
    assert read["weight"] == state["model"]["0.weight"].tolist() and read["step"] == 2
    assert read["generator"] == state["generator"].get_state().tolist()
    assert read["exp_avg"] == state["optimizer"]["state"][2]["exp_avg"].tolist()
