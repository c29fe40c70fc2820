"""The demo pipeline: a numpy multilayer perceptron trained with momentum SGD.

The data set is synthetic and deterministic: standard normal inputs labelled
by a random "teacher" network, both drawn from ``seed`` (no downloads). The
state is a plain dict of arrays, ints and the ``numpy.random.Generator`` that
shuffles the data, so an interrupted and resumed run is bit-exact. Layer sizes
are configurable (``hidden="512,512"``), so a state can be kilobytes or
gigabytes.

Run it with Luigi (``configs/luigi.cfg``: local scheduler, ./runs, retries)::

    export LUIGI_CONFIG_PATH=configs/luigi.cfg
    luigi --module luigi_checkpoint.pipeline.mlp TrainMLP --total-steps 1000 --hidden 256,256
    luigi --module luigi_checkpoint.pipeline.mlp ExportMLP --date 2026-11-28 --total-steps 1000 --hidden 256,256
    luigi --module luigi_checkpoint.pipeline.mlp RangeDaily --of ExportMLP --start 2026-11-01 --param-name date \
        --of-params '{"total_steps": 1000, "hidden": "256,256"}'

A hyperparameter sweep (one run and one export per grid point; with a central
scheduler, ``configs/luigi-cluster.cfg``, many workers share the runs)::

    luigi --module luigi_checkpoint.pipeline.mlp Sweep --date 2026-11-28 --total-steps 1000 \
        --learning-rates '[0.01, 0.05]' --seeds '[0, 1]' --hiddens '["64,64"]'
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from typing import Any

import luigi
import numpy as np
from luigi.util import inherits

from luigi_checkpoint.storage.fs import atomic_write
from luigi_checkpoint.tasks.export import ExportSnapshot
from luigi_checkpoint.tasks.training import TrainingTask

__all__ = ["ExportMLP", "SimulatedFailure", "Sweep", "TrainMLP", "init_state", "make_dataset", "sgd_step"]

logger = logging.getLogger("luigi-interface.checkpoint")

State = dict[str, Any]

_TEACHER_HIDDEN = 32


class SimulatedFailure(RuntimeError):
    """The demo's planned crash (``fail_at_step``)."""


def parse_layers(hidden: str) -> list[int]:
    """``"64,64"`` -> ``[64, 64]``; an empty string means no hidden layer."""
    try:
        sizes = [int(part) for part in hidden.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"hidden={hidden!r}: expected comma-separated layer sizes like '64,64'") from None
    if any(size < 1 for size in sizes):
        raise ValueError(f"hidden={hidden!r}: layer sizes must be positive")
    return sizes


def make_dataset(seed: int, samples: int, features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(samples, features)`` and teacher labels ``(samples,)`` from ``seed``."""
    rng = np.random.default_rng([seed, 1])
    x = rng.standard_normal((samples, features))
    w1 = rng.standard_normal((features, _TEACHER_HIDDEN))
    w2 = rng.standard_normal((_TEACHER_HIDDEN, classes))
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    return x, y


def init_state(seed: int, sizes: list[int], samples: int) -> State:
    """He-initialized weights, zero biases and velocities, a shuffled epoch."""
    rng = np.random.default_rng([seed, 2])
    weights = [
        rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
    ]
    biases = [np.zeros(w.shape[1]) for w in weights]
    return {
        "weights": weights,
        "biases": biases,
        "velocity": {
            "weights": [np.zeros_like(w) for w in weights],
            "biases": [np.zeros_like(b) for b in biases],
        },
        "rng": rng,
        "order": rng.permutation(samples),
        "position": 0,
        "epoch": 0,
    }


def _next_batch(state: State, batch_size: int) -> np.ndarray:
    samples = len(state["order"])
    if state["position"] + batch_size > samples:
        state["order"] = state["rng"].permutation(samples)
        state["position"] = 0
        state["epoch"] += 1
    start = state["position"]
    state["position"] = start + batch_size
    return state["order"][start : start + batch_size]


def sgd_step(
    state: State, x: np.ndarray, y: np.ndarray, *, batch_size: int, learning_rate: float, momentum: float
) -> dict[str, float]:
    """One minibatch step of SGD with momentum on softmax cross-entropy, in place."""
    batch = _next_batch(state, batch_size)
    weights, biases = state["weights"], state["biases"]
    activations = [x[batch]]
    for w, b in zip(weights[:-1], biases[:-1]):
        activations.append(np.maximum(activations[-1] @ w + b, 0.0))
    logits = activations[-1] @ weights[-1] + biases[-1]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    rows, labels = np.arange(len(batch)), y[batch]
    loss = float(-np.mean(np.log(probs[rows, labels] + 1e-12)))
    accuracy = float(np.mean(np.argmax(probs, axis=1) == labels))
    grad = probs
    grad[rows, labels] -= 1.0
    grad /= len(batch)
    velocity = state["velocity"]
    for i in reversed(range(len(weights))):
        grad_w, grad_b = activations[i].T @ grad, grad.sum(axis=0)
        if i:
            grad = (grad @ weights[i].T) * (activations[i] > 0)
        updates = ((weights[i], velocity["weights"][i], grad_w), (biases[i], velocity["biases"][i], grad_b))
        for param, vel, g in updates:
            vel *= momentum
            vel -= learning_rate * g
            param += vel
    return {"loss": loss, "accuracy": accuracy}


class TrainMLP(TrainingTask):
    """Train the MLP classifier; the output is the final checkpoint."""

    total_steps = luigi.IntParameter(
        default=300, significant=False, description="number of SGD steps (raise it to extend the run)"
    )
    checkpoint_every = luigi.IntParameter(
        default=50, significant=False, description="save every this many steps"
    )
    hidden = luigi.Parameter(default="64,64", description="hidden layer sizes, comma-separated")
    seed = luigi.IntParameter(default=0, description="seed of the data, the initialization and the shuffling")
    learning_rate = luigi.FloatParameter(default=0.05)
    momentum = luigi.FloatParameter(default=0.9)
    batch_size = luigi.IntParameter(default=64)
    samples = luigi.IntParameter(default=4096, description="size of the synthetic data set")
    features = luigi.IntParameter(default=32)
    classes = luigi.IntParameter(default=4)
    fail_at_step = luigi.OptionalIntParameter(
        default=None, significant=False, description="demo only: crash once at this step"
    )
    step_delay = luigi.FloatParameter(
        default=0.0, significant=False, description="demo/tests only: sleep this many seconds in every step"
    )

    @functools.cached_property
    def dataset(self) -> tuple[np.ndarray, np.ndarray]:
        """The synthetic data set, generated once per task object."""
        return make_dataset(self.seed, self.samples, self.features, self.classes)

    def init_state(self) -> State:
        # docstring inherited
        sizes = [self.features, *parse_layers(self.hidden), self.classes]
        return init_state(self.seed, sizes, self.samples)

    def train_step(self, state: State, step: int) -> dict[str, float]:
        # docstring inherited
        if step == self.fail_at_step and self._first_failure_at(step):
            raise SimulatedFailure(
                f"{self.run_label()}: simulated crash at step {step} (fail_at_step); "
                "the retry resumes from the last checkpoint"
            )
        if self.step_delay > 0:
            time.sleep(self.step_delay)
        x, y = self.dataset
        return sgd_step(
            state, x, y, batch_size=self.batch_size, learning_rate=self.learning_rate, momentum=self.momentum
        )

    def _first_failure_at(self, step: int) -> bool:
        """Whether this run never crashed at ``step``; records that it does now.

        The record is a marker file in the run's folder, so "once" holds across
        Luigi retries, processes and workers.
        """
        marker = self.run_location().child(f"simulated-failure-at-step-{step}")
        marker.fs.invalidate_cache(marker.path)
        if marker.fs.exists(marker.path):
            return False
        with atomic_write(marker) as f:
            f.write(b"The demo crashed here once on purpose.\n")
        return True


@inherits(TrainMLP)
class ExportMLP(ExportSnapshot):
    """Numpy-only snapshot of a :class:`TrainMLP` run (same parameters)."""

    def training_task(self) -> TrainMLP:
        # docstring inherited
        return self.clone(TrainMLP)


# TrainMLP parameters a Sweep sets per run, from its learning_rates, seeds and hiddens.
_GRID = ("learning_rate", "seed", "hidden")


def _inherits_but_grid(cls: type[luigi.Task]) -> type[luigi.Task]:
    """Give ``cls`` every :class:`TrainMLP` parameter except those the grid sets."""
    for name, parameter in TrainMLP.get_params():
        if name not in _GRID and not hasattr(cls, name):
            setattr(cls, name, parameter)
    return cls


@_inherits_but_grid
class Sweep(luigi.WrapperTask):
    """A grid of :class:`TrainMLP` runs and a dated :class:`ExportMLP` of each final model.

    The grid is the product of ``learning_rates``, ``seeds`` and ``hiddens``
    (JSON lists on the command line); every other :class:`TrainMLP` parameter
    is shared by all runs. Each run checkpoints to the configured root, so
    with a central scheduler any worker can take any run, and a run whose
    worker died resumes elsewhere from its newest checkpoint.
    """

    date = luigi.DateParameter(description="day of the exports (names their folders)")
    learning_rates = luigi.ListParameter(default=(0.05,), description="learning rates of the grid")
    seeds = luigi.ListParameter(default=(0,), description="seeds of the grid")
    hiddens = luigi.ListParameter(default=("64,64",), description="hidden layer sizes of the grid, e.g. [\"64,64\"]")
    export_root = luigi.OptionalParameter(
        default=None, description="folder or URL of the snapshots (default: [export] root)"
    )

    def grid(self) -> list[dict[str, Any]]:
        """The varied parameters of each run, in a stable order."""
        points = itertools.product(self.learning_rates, self.seeds, self.hiddens)
        return [
            {"learning_rate": float(rate), "seed": int(seed), "hidden": str(hidden)} for rate, seed, hidden in points
        ]

    def runs(self) -> list[TrainMLP]:
        """One :class:`TrainMLP` per grid point."""
        return [self.clone(TrainMLP, **point) for point in self.grid()]

    def exports(self) -> list[ExportMLP]:
        """One :class:`ExportMLP` of each run's final model for ``date``."""
        return [self.clone(ExportMLP, after_training=True, **point) for point in self.grid()]

    def requires(self) -> list[luigi.Task]:
        # docstring inherited
        return [*self.runs(), *self.exports()]
