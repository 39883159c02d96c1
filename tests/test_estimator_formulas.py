"""GGN Monte-Carlo (Gauss-Newton-Bartlett) with ``loss="mse"`` against the exact GGN diagonal.

``check_estimator``'s statistical check in the conformance kit runs ``ggn_mc`` with cross-entropy
only; the MSE branch has its own constants (y_hat = f + N(0, I), g_hat = -2 eps J / m, scale m/2),
and a slip there would bias every Sophia-G run on a regression task.
"""

from __future__ import annotations

import math

import torch

import optlab
from optlab.builtins import estimators as E
from optlab.optim.hvp import get_engine
from optlab.testing import dense_ggn, flat, make_problem


def test_ggn_mc_mse_is_unbiased_for_the_exact_ggn_diagonal():
    """Mean loss L = |f - y|^2 / m (m = N C outputs): GGN = (2/m) J^T J, whose diagonal is
    E[(m/2) g_hat^2] with g_hat = J^T (-2 eps / m), eps ~ N(0, I). Each entry of the S-sample mean
    of a scaled chi-square(1) has relative standard deviation sqrt(2 / S); at S = 20000 that is
    1.0 %, and every entry must lie within 5 of them (a wrong factor 2 in g_hat is 75 % off)."""
    pb = make_problem("mlp_bn1d")
    pb.y = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pb.loss_fn = torch.nn.functional.mse_loss
    names, params = pb.params(optlab.selector("channelwise"))
    ref = dense_ggn(pb.outputs, pb.y, params, loss="mse", model=pb.model).diagonal()
    assert (ref > 1e-8).all()
    ctx = get_engine("autograd").context(model=pb.model, closure=pb.closure, params=params, names=names)
    samples = 20000
    got = E.GGNMonteCarlo().estimate(
        ctx,
        [0, 1],
        {"loss": "mse", "samples": samples, "chunk_size": None},
        torch.Generator().manual_seed(11),
    )
    est = flat([got[0], got[1]])
    rel = (est - ref) / ref
    bound = 5 * math.sqrt(2 / samples)
    assert rel.abs().max().item() < bound, (rel.tolist(), bound)
    # and on average over the entries, far tighter (independent-ish errors average out)
    assert abs(rel.mean().item()) < 2 * math.sqrt(2 / samples)
