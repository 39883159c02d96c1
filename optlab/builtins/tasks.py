"""Built-in tasks. Nothing here downloads: digits ships with scikit-learn, mnist1d is
generated procedurally, CIFAR is read from a local directory in torchvision's layout."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from optlab.training.tasks import Task, split_validation

SPLIT_SEED = 0  # train/val/test splits are fixed; the run seed drives init and shuffling


def _standardize(x_train: torch.Tensor, *others: torch.Tensor):
    """Per-feature standardization with train statistics. Features that are (nearly) constant
    in the training split are only centred: dividing by a tiny std would blow up the test
    values of features that are constant in train but not in test (digits' border pixels)."""
    mean, std = x_train.mean(0, keepdim=True), x_train.std(0, keepdim=True)
    std = torch.where(std > 1e-3, std, torch.ones_like(std))
    return tuple((x - mean) / std for x in (x_train, *others))


@functools.lru_cache(maxsize=2)
def _digits_arrays(test_fraction: float):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    return train_test_split(
        d.data.astype(np.float32),
        d.target.astype(np.int64),
        test_size=test_fraction,
        random_state=SPLIT_SEED,
        stratify=d.target,
    )


def digits(seed: int = 0, test_fraction: float = 0.25, val_fraction: float = 0.2) -> Task:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), standardized, shape (1, 8, 8).

    Stratified splits: ``test_fraction`` of all images for test, then ``val_fraction`` of the
    rest for validation (defaults: 1078 train / 269 val / 450 test); statistics from train only."""
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"digits: invalid test_fraction={test_fraction!r}; expected a number in (0, 1)")
    xtr, xte, ytr, yte = _digits_arrays(test_fraction)
    xtr, ytr, xva, yva = split_validation(torch.from_numpy(xtr), torch.from_numpy(ytr), val_fraction)
    xtr, xva, xte = _standardize(xtr, xva, torch.from_numpy(xte))
    shape = (-1, 1, 8, 8)
    return Task(
        "digits",
        xtr.reshape(shape),
        ytr,
        xte.reshape(shape),
        torch.from_numpy(yte),
        num_classes=10,
        x_val=xva.reshape(shape),
        y_val=yva,
    )


@functools.lru_cache(maxsize=2)
def _mnist1d_arrays(num_samples: int):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = 42  # the package default; the data set is the same for every run
    d = make_dataset(args)
    return (
        d["x"].astype(np.float32),
        d["y"].astype(np.int64),
        d["x_test"].astype(np.float32),
        d["y_test"].astype(np.int64),
    )


def mnist1d(seed: int = 0, num_samples: int = 5000, val_fraction: float = 0.2) -> Task:
    """MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package: 40-sample signals, 10 classes.

    The package's train/test split (80/20), then a stratified ``val_fraction`` of train for
    validation (defaults: 3200 train / 800 val / 1000 test); statistics from train only."""
    if not isinstance(num_samples, int) or num_samples < 100:
        raise ValueError(f"mnist1d: invalid num_samples={num_samples!r}; expected an integer >= 100")
    xtr, ytr, xte, yte = _mnist1d_arrays(num_samples)
    xtr, ytr, xva, yva = split_validation(torch.from_numpy(xtr), torch.from_numpy(ytr), val_fraction)
    xtr, xva, xte = _standardize(xtr, xva, torch.from_numpy(xte))
    return Task(
        "mnist1d",
        xtr.unsqueeze(1),
        ytr,
        xte.unsqueeze(1),
        torch.from_numpy(yte),
        num_classes=10,
        x_val=xva.unsqueeze(1),
        y_val=yva,
    )


def _cifar_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and random horizontal flip (the usual CIFAR recipe)."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy.view(n, 1) + torch.arange(32).view(1, 32)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(32).view(1, 32)).to(x.device)
    cols = torch.where(flip.view(n, 1).to(x.device), cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, 32, 1), cols.view(n, 1, 32)]
    return out.permute(0, 3, 1, 2).contiguous()


def _cifar(name: str, cls_name: str, data_dir: str | None, augment: bool, val_fraction: float) -> Task:
    root = data_dir or os.environ.get("OPTLAB_DATA")
    if not root:
        raise FileNotFoundError(
            f"{name}: no data directory; pass data_dir=... (task option) or set OPTLAB_DATA "
            f"to a folder holding torchvision's {name} files. optlab never downloads data."
        )
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(
            f"{name} needs torchvision: install the 'vision' extra with a torch build that "
            "matches it (see README, 'CIFAR on a GPU machine')."
        ) from exc
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(root=str(Path(root)), train=True, download=False)
        test = cls(root=str(Path(root)), train=False, download=False)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"{name}: files not found under {root!r} ({exc}); optlab never downloads data."
        ) from exc

    def tensors(ds):
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float().div_(255)
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    xtr, ytr = tensors(train)
    xte, yte = tensors(test)
    xtr, ytr, xva, yva = split_validation(xtr, ytr, val_fraction)
    mean = xtr.mean(dim=(0, 2, 3), keepdim=True)
    std = xtr.std(dim=(0, 2, 3), keepdim=True)
    xtr, xva, xte = (xtr - mean) / std, (xva - mean) / std, (xte - mean) / std
    return Task(
        name,
        xtr,
        ytr,
        xte,
        yte,
        num_classes=int(ytr.max()) + 1,
        augment=_cifar_augment if augment else None,
        x_val=xva,
        y_val=yva,
    )


def cifar10(seed: int = 0, data_dir: str | None = None, augment: bool = True, val_fraction: float = 0.1) -> Task:
    """CIFAR-10 from ``data_dir`` (or ``$OPTLAB_DATA``) in torchvision's layout; never downloaded.
    A stratified ``val_fraction`` of the 50,000 training images is held out for validation."""
    return _cifar("cifar10", "CIFAR10", data_dir, augment, val_fraction)


def cifar100(seed: int = 0, data_dir: str | None = None, augment: bool = True, val_fraction: float = 0.1) -> Task:
    """CIFAR-100 from ``data_dir`` (or ``$OPTLAB_DATA``) in torchvision's layout; never downloaded.
    A stratified ``val_fraction`` of the 50,000 training images is held out for validation."""
    return _cifar("cifar100", "CIFAR100", data_dir, augment, val_fraction)


TASKS = {"digits": digits, "mnist1d": mnist1d, "cifar10": cifar10, "cifar100": cifar100}
