"""A torch example: a small multilayer perceptron trained with Adam and dropout.

The checkpointed state is what a torch user would save: the model's
``state_dict()``, the optimizer's ``state_dict()``, the ``torch.Generator``
that draws the minibatches and the global RNG state (``torch.get_rng_state()``,
which dropout uses). Every tensor becomes an NPY member (``model/0_weight``,
``optimizer/state/0/exp_avg``, ``data_rng``...), so numpy alone reads the
weights, and the state loads back without trusting any torch pickle code.
The live model and optimizer are rebuilt from the state when the task meets
a state it has not seen (the first step, or a resume), so an interrupted and
resumed run ends bit-identical to an uninterrupted one. It computes with one
intra-op thread, so results do not depend on the machine's core count.

Install the extra (``pip install 'luigi-checkpoint[torch]'``), then::

    export LUIGI_CONFIG_PATH=configs/luigi.cfg
    luigi --module luigi_checkpoint.pipeline.torch_mlp TrainTorchMLP --total-steps 300
"""

from __future__ import annotations

import functools
import time
from typing import Any

import luigi
import torch

from luigi_checkpoint.tasks.training import TrainingTask

__all__ = ["TrainTorchMLP", "make_dataset", "make_model"]

State = dict[str, Any]


def make_dataset(seed: int, samples: int, features: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(samples, features)`` and labels of a random linear teacher, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    teacher = torch.randn(features, classes, generator=generator)
    return x, (x @ teacher).argmax(dim=1)


def make_model(features: int, hidden: int, classes: int, dropout: float) -> torch.nn.Module:
    """``Linear -> ReLU -> Dropout -> Linear``, initialized from torch's global RNG."""
    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, classes),
    )


class TrainTorchMLP(TrainingTask):
    """Train the torch MLP classifier; the output is the final checkpoint."""

    total_steps = luigi.IntParameter(default=300, significant=False, description="number of Adam steps (raise it to extend the run)")
    checkpoint_every = luigi.IntParameter(default=50, significant=False, description="save every this many steps")
    hidden = luigi.IntParameter(default=64, description="hidden layer width")
    seed = luigi.IntParameter(default=0, description="seed of the data, the initialization and the batches")
    learning_rate = luigi.FloatParameter(default=1e-2)
    dropout = luigi.FloatParameter(default=0.1)
    batch_size = luigi.IntParameter(default=32)
    samples = luigi.IntParameter(default=2048, description="size of the synthetic data set")
    features = luigi.IntParameter(default=16)
    classes = luigi.IntParameter(default=4)
    step_delay = luigi.FloatParameter(
        default=0.0, significant=False, description="demo/tests only: sleep this many seconds in every step"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live: tuple[State, torch.nn.Module, torch.optim.Optimizer] | None = None

    @functools.cached_property
    def dataset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The synthetic data set, generated once per task object."""
        return make_dataset(self.seed, self.samples, self.features, self.classes)

    def init_state(self) -> State:
        # docstring inherited
        torch.manual_seed(self.seed)
        model = make_model(self.features, self.hidden, self.classes, self.dropout)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "data_rng": torch.Generator().manual_seed(self.seed + 1),
            "torch_rng": torch.get_rng_state(),
        }

    def _bind(self, state: State) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The live model and optimizer of ``state``, rebuilt from it when new."""
        if self._live is None or self._live[0] is not state:
            torch.set_num_threads(1)
            model = make_model(self.features, self.hidden, self.classes, self.dropout)
            model.load_state_dict(state["model"])
            optimizer = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])  # building the model drew from it
            self._live = (state, model, optimizer)
        return self._live[1], self._live[2]

    def train_step(self, state: State, step: int) -> dict[str, float]:
        # docstring inherited
        if self.step_delay > 0:
            time.sleep(self.step_delay)
        model, optimizer = self._bind(state)
        x, y = self.dataset
        batch = torch.randint(0, len(x), (self.batch_size,), generator=state["data_rng"])
        model.train()
        optimizer.zero_grad()
        logits = model(x[batch])
        loss = torch.nn.functional.cross_entropy(logits, y[batch])
        loss.backward()
        optimizer.step()
        state["model"] = model.state_dict()
        state["optimizer"] = optimizer.state_dict()
        state["torch_rng"] = torch.get_rng_state()
        accuracy = (logits.argmax(dim=1) == y[batch]).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}
