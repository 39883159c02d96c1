"""Built-in curvature estimators. Each is named for what it computes."""
from __future__ import annotations

import torch

from optlab.hparams import HParam
from optlab.rules import CurvatureEstimator

BOOL = lambda default, doc="": HParam(default, lambda x: isinstance(x, bool), "True or False", doc)  # noqa: E731


class RowsumHVP(CurvatureEstimator):
    """``|H_kk 1|`` per tensor k: the Hessian block of the tensor with itself times ones.

    This is the paper's "precise partial Hessian". It equals diag(H_kk) only when
    the block is diagonal, which it is not in general for BatchNorm parameters
    (use ``optlab diagnose`` to measure). One HVP per refreshed tensor, each
    restricted to the tensor's own block. Reference: arXiv:2403.02681, Sec. 3.
    """

    name = "rowsum_hvp"
    target = "H_kk 1 (row sums of each tensor's diagonal block)"
    hparams = {"absolute": BOOL(True, "return |H_kk 1| (the paper) instead of the signed row sums")}

    def estimate(self, ctx, indices, group, generator):
        out = {}
        for k in indices:
            r = ctx.hvp({k: torch.ones_like(ctx.params[k])})[k]
            out[k] = r.abs() if group["absolute"] else r
        return out
