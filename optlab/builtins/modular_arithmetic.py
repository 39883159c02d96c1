"""A workload where optimizers differ: modular arithmetic with a small pre-LN transformer.

Task ``modular-arithmetic``: every equation ``a op b = c (mod p)`` with ``a, b`` in ``0..p-1``
(``op``: ``add``, ``sub`` or ``mul``), the input the token sequence ``[a, b, =]`` (token ``p``
is ``=``), the label ``c``. Generated locally and deterministically: a fixed permutation
(seed :data:`SPLIT_SEED`) puts ``train_fraction`` of the p^2 equations in train and splits the
rest evenly into validation and test. With a train fraction of 0.3-0.5 a network first fits
the training equations and only much later *generalizes* (Power et al. 2022, "Grokking",
arXiv:2201.02177); how soon it does depends strongly on the optimizer and on weight decay
(Nanda et al. 2023, arXiv:2301.05217), so time to a validation target separates optimizers by
large factors where final accuracy on digits cannot.

Model ``transformer-preln``: token + learned position embeddings, ``layers`` pre-LN blocks
(x + attention(LayerNorm(x)), x + MLP(LayerNorm(x)), attention written out as matrix
products so that double backward -- Hessian-vector products -- works with every engine), a
final LayerNorm and a linear head reading the last position. SGD-PH's ``channelwise``
selector picks exactly the LayerNorm weights and biases (2 per LayerNorm: 2 per block x 2
blocks per layer + 2 final); embeddings, attention and MLP weights and their biases go to
SGD-momentum.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from optlab.optim.modeltools import decouple as _decouple
from optlab.training.tasks import Task

SPLIT_SEED = 0  # the split is a property of the data set: the same for every run seed
OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
}


@functools.lru_cache(maxsize=4)
def _equations(p: int, op: str, train_fraction: float):
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    y = OPS[op](a, b, p)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(round(train_fraction * p * p))
    n_val = (p * p - n_train) // 2
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    return x[tr], y[tr], x[va], y[va], x[te], y[te]


def modular_arithmetic(seed: int = 0, p: int = 47, op: str = "add", train_fraction: float = 0.4) -> Task:
    """Every ``a op b mod p`` as the tokens ``[a, b, =]`` -> ``c``; ``train_fraction`` of the p^2
    equations for training, the rest split evenly into validation and test (fixed split)."""
    if not isinstance(p, int) or isinstance(p, bool) or p < 3:
        raise ValueError(f"modular-arithmetic: invalid p={p!r}; expected an integer >= 3 (a prime such as 47 or 97)")
    if op not in OPS:
        raise ValueError(f"modular-arithmetic: invalid op={op!r}; expected one of {', '.join(OPS)}")
    if (
        not isinstance(train_fraction, (int, float))
        or isinstance(train_fraction, bool)
        or not 0 < train_fraction < 1
        or round(train_fraction * p * p) < 2
        or p * p - round(train_fraction * p * p) < 2
    ):
        raise ValueError(
            f"modular-arithmetic: invalid train_fraction={train_fraction!r}; expected a number in (0, 1) "
            f"leaving at least 2 of the {p * p} equations for training and 2 for validation + test"
        )
    xtr, ytr, xva, yva, xte, yte = _equations(p, op, float(train_fraction))
    return Task("modular-arithmetic", xtr, ytr, xte, yte, num_classes=p, x_val=xva, y_val=yva)


class _Attention(nn.Module):
    """Multi-head causal self-attention as plain matrix products (twice differentiable everywhere)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"transformer-preln: invalid heads={heads!r}; expected a divisor of width={d}")
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = scores.masked_fill(mask, float("-inf")).softmax(-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, t, d))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = _Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PreLNTransformer(nn.Module):
    """Pre-LN transformer over a short token sequence; logits from the last position."""

    def __init__(self, vocab: int, seq_len: int, classes: int, width: int, layers: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.blocks = nn.Sequential(*[_Block(width, heads, mlp_ratio) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.blocks(self.embed(x) + self.pos[: x.shape[1]])
        return self.head(self.ln_f(h[:, -1]))


def transformer_preln(
    info,
    width: int = 64,
    layers: int = 1,
    heads: int = 4,
    mlp_ratio: int = 4,
    vocab: int | None = None,
    decouple: bool = False,
):
    """Pre-LN transformer for token-sequence tasks (``modular-arithmetic``): ``layers`` blocks of
    ``heads``-head attention and a ``mlp_ratio`` x ``width`` GELU MLP, LayerNorm before each.
    ``vocab``: input tokens (default: classes + 1, the answers and ``=``); ``decouple``:
    weight-normalize the linear layers (:func:`optlab.decouple`)."""
    for name, v, lo in (("width", width, 4), ("layers", layers, 1), ("heads", heads, 1), ("mlp_ratio", mlp_ratio, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"transformer-preln: invalid {name}={v!r}; expected an integer >= {lo}")
    seq_len = info["input_shape"][0]
    classes = info["num_classes"]
    vocab = classes + 1 if vocab is None else vocab
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 2:
        raise ValueError(f"transformer-preln: invalid vocab={vocab!r}; expected an integer >= 2 (input tokens)")
    model = PreLNTransformer(vocab, seq_len, classes, width, layers, heads, mlp_ratio)
    return _decouple(model) if decouple else model


TASKS = {"modular-arithmetic": modular_arithmetic}
MODELS = {"transformer-preln": transformer_preln}
