"""Tasks: in-memory data sets with a loss, batched deterministically."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["Task", "make_task", "make_model"]


@dataclass
class Task:
    """A classification task held as tensors (train and test splits).

    ``augment(x, generator)`` (optional) is applied to each training batch.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    loss_fn: Callable = F.cross_entropy
    loss: str = "cross_entropy"
    augment: Callable | None = None
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def info(self) -> dict:
        return {"input_shape": self.input_shape, "num_classes": self.num_classes, "name": self.name}

    def to(self, device) -> "Task":
        for k in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
        """Shuffled mini-batches; the last incomplete batch is dropped (BatchNorm needs > 1 sample)."""
        n = self.x_train.shape[0]
        perm = torch.randperm(n, generator=generator).to(self.x_train.device)
        for s in range(0, n - batch_size + 1, batch_size):
            idx = perm[s:s + batch_size]
            x = self.x_train[idx]
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, self.y_train[idx]

    def num_train_batches(self, batch_size: int) -> int:
        return self.x_train.shape[0] // batch_size

    def eval_batches(self, split: str, batch_size: int = 1000) -> Iterator[tuple]:
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        for s in range(0, x.shape[0], batch_size):
            yield x[s:s + batch_size], y[s:s + batch_size]


def make_task(name: str, seed: int = 0, **options) -> Task:
    from . import registry
    return registry.get("task", name)(seed=seed, **options)


def make_model(name: str, task_info: dict, **options):
    from . import registry
    return registry.get("model", name)(task_info, **options)
