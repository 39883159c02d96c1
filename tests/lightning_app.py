"""A LightningModule trained by an optlab preset; run as a script for strategy="ddp".

``python tests/lightning_app.py OUT PRESET DEVICES`` fits 4 steps on CPU and
writes each rank's parameters to ``OUT/rank<r>.pt`` (Lightning's subprocess
launcher re-runs this file for rank 1).
"""

from __future__ import annotations

import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import optlab

N, BATCH = 32, 8
HP = {
    "sgd": dict(lr=0.1),
    "sgd-ph": dict(lr=0.1, every=2),
    "adahessian": dict(lr=0.05, every=2),
    "sophia": dict(lr=0.01, every=2, estimator="hutchinson"),
    "sgd-ph-reference": dict(lr=0.1),
}


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (N,), generator=g)


def make_model():
    torch.manual_seed(0)  # BN-free: 2-rank DDP equals one process on the concatenated batch
    return optlab.decouple(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double())


def module(preset: str):
    import lightning.pytorch as pl

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return optlab.optimizer(preset, self, seed=0, **HP[preset])

        def train_dataloader(self):
            # rank r gets samples r, r+R, ... of each global batch, in order (no shuffling)
            ds, world = TensorDataset(*data()), self.trainer.world_size
            sampler = DistributedSampler(ds, world, self.trainer.global_rank, shuffle=False) if world > 1 else None
            return DataLoader(ds, batch_size=BATCH // world, sampler=sampler, shuffle=False)

    return Classifier()


def fit(preset: str, devices: int, steps: int = 4):
    import lightning.pytorch as pl

    from optlab.integrations.lightning import OptlabCallback

    m = module(preset)
    kw = dict(strategy="ddp", devices=devices) if devices > 1 else dict(devices=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[OptlabCallback()],
        use_distributed_sampler=False,
        **kw,
    )
    trainer.fit(m)
    return m, trainer


if __name__ == "__main__":
    out, preset, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    m, trainer = fit(preset, devices)
    torch.save([p.detach() for p in m.parameters()], f"{out}/rank{trainer.global_rank}.pt")
