"""Adam in the eigenbasis of Shampoo's Kronecker factors (SOAP's stepper).

For a k-dimensional parameter with gradient G, SOAP keeps one factor per dimension,
L_i <- EMA of G_(i) G_(i)^T (G_(i): G unfolded along dimension i), and runs Adam's second moment
in the basis Q_1 x ... x Q_k of their eigenvectors, refreshing the bases by one power-iteration
step + QR every ``precondition_frequency`` steps. The factors are gradient statistics, not
Hessian-vector products, so this is a stepper with its own state rather than a curvature estimator.

Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam" (ICLR 2025),
Alg. 3; the operations follow ``pytorch_optimizer.SOAP`` (4.x), against which
``tests/test_relatives.py`` checks it (``merge_dims=False``, ``normalize_gradient=False``).
"""

from __future__ import annotations

import math
from itertools import chain

import torch

from optlab.optim.hparams import HParam, nonneg, optional, positive, positive_int, unit_interval
from optlab.optim.rules import Stepper

from .adaptive_steppers import _betas

__all__ = ["EigenbasisAdam"]


def _project(x: torch.Tensor, bases: list, back: bool = False) -> torch.Tensor:
    """x in the basis Q_1 x ... x Q_k (``back``: from it). A dimension without a basis (``None``)
    is only cycled to the end, as each ``tensordot`` does with the contracted one."""
    for q in bases:
        if q is None:
            x = x.permute([*range(1, x.dim()), 0])
        else:
            x = torch.tensordot(x, q, dims=[[0], [1 if back else 0]])
    return x


def _eigenbases(factors: list) -> list:
    """Eigenvectors of each factor, by descending eigenvalue (``eigh`` of L + 1e-30 I)."""
    out: list = []
    for m in factors:
        if m is None:
            out.append(None)
            continue
        _, q = torch.linalg.eigh(m + 1e-30 * torch.eye(m.shape[0], device=m.device, dtype=m.dtype))
        out.append(torch.flip(q, dims=[1]))
    return out


class EigenbasisAdam(Stepper):
    """SOAP: Adam whose second moment lives in the eigenbasis of Shampoo's Kronecker factors.

    Per tensor, step t (the first step of a tensor only initializes the factors L_i and bases Q_i,
    as the reference does); s = t - 1, P = project into the bases, P^-1 back::

        m <- lerp(m, g, 1-b1);   v <- lerp(v, P(g)^2, 1-b2)
        p <- p - lr sqrt(1-b2^s)/(1-b1^s) * P^-1( P(m) / (sqrt(v) + eps) );   p <- p (1 - lr wd)
        L_i <- lerp(L_i, G_(i) G_(i)^T, 1-shampoo_beta)
        every precondition_frequency steps: Q_i <- QR(L_i Q_i) (columns sorted by estimated
        eigenvalue, v's axes permuted alike; the QR in float32 as the reference)

    Dimensions longer than ``max_precondition_dim`` (and 1-D tensors unless ``precondition_1d``)
    keep the identity basis. Reference: Vyas et al., arXiv:2409.11321.
    """

    name = "eigenbasis_adam"
    hparams = {
        "lr": nonneg(3e-3, "learning rate"),
        "betas": _betas((0.95, 0.95), "EMA coefficients of the gradient and of the rotated squared gradient"),
        "shampoo_beta": optional(unit_interval(None, "EMA coefficient of the Kronecker factors (None: betas[1])")),
        "eps": positive(1e-8, "added to sqrt(v)"),
        "weight_decay": nonneg(1e-2, "decoupled weight decay, applied after the update"),
        "precondition_frequency": positive_int(10, "steps between eigenbasis refreshes (power iteration + QR)"),
        "max_precondition_dim": positive_int(10000, "longer dimensions keep the identity basis"),
        "precondition_1d": HParam(False, lambda x: isinstance(x, bool), "True or False", "rotate 1-D tensors too"),
    }

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        shampoo_beta = group["shampoo_beta"] if group["shampoo_beta"] is not None else b2
        for p, g, st in zip(params, grads, states):
            if g is None:
                continue
            if "exp_avg" not in st:  # first step: statistics and bases only, no update
                st["step"] = 1
                st["exp_avg"] = torch.zeros_like(g)
                st["exp_avg_sq"] = torch.zeros_like(g)
                st["factors"] = self._init_factors(g, group)
                st["bases"] = None
                self._update_factors(g, st, 0, group, shampoo_beta)
                continue
            st["step"] += 1
            s = st["step"] - 1
            step_size = lr
            step_size *= math.sqrt(1.0 - math.pow(b2, s)) / (1.0 - math.pow(b1, s))
            g_rot = _project(g, st["bases"])
            st["exp_avg"].lerp_(g, weight=1.0 - b1)
            st["exp_avg_sq"].lerp_(g_rot.square(), weight=1.0 - b2)
            denom = st["exp_avg_sq"].sqrt().add_(eps)
            update = _project(_project(st["exp_avg"], st["bases"]) / denom, st["bases"], back=True)
            p.add_(update, alpha=-step_size)
            if wd != 0:
                p.mul_(1.0 - wd * lr)
            self._update_factors(g, st, s, group, shampoo_beta)

    @staticmethod
    def _init_factors(g: torch.Tensor, group) -> list:
        cap = group["max_precondition_dim"]
        if g.dim() == 1 and not (group["precondition_1d"] and g.shape[0] <= cap):
            return [None]
        return [None if n > cap else torch.zeros(n, n, device=g.device, dtype=g.dtype) for n in g.shape]

    @staticmethod
    def _update_factors(g: torch.Tensor, st: dict, s: int, group, shampoo_beta: float) -> None:
        factors = st["factors"]
        if g.dim() == 1:
            if factors[0] is not None:
                factors[0].lerp_(g.unsqueeze(1) @ g.unsqueeze(0), weight=1.0 - shampoo_beta)
        else:
            for i, f in enumerate(factors):
                if f is not None:
                    others = [*chain(range(i), range(i + 1, g.dim()))]
                    f.lerp_(torch.tensordot(g, g, dims=[others] * 2), weight=1.0 - shampoo_beta)
        if st["bases"] is None:
            st["bases"] = _eigenbases(factors)
        if s > 0 and s % group["precondition_frequency"] == 0:
            st["bases"] = EigenbasisAdam._power_qr(st)

    @staticmethod
    def _power_qr(st: dict) -> list:
        """One power-iteration step per factor, Q <- QR(L Q) with columns sorted by the estimated
        eigenvalues diag(Q^T L Q); v's axes are permuted to follow its basis."""
        v = st["exp_avg_sq"]
        out: list = []
        for i, (m, o) in enumerate(zip(st["factors"], st["bases"])):
            if m is None:
                out.append(None)
                continue
            product = m @ o
            order = torch.argsort((o * product).sum(dim=0), descending=True)
            v = v.index_select(i, order)
            q, _ = torch.linalg.qr(product.index_select(1, order).to(torch.float32))
            out.append(q.to(product.dtype))
        st["exp_avg_sq"] = v
        return out


STEPPERS = (EigenbasisAdam,)
