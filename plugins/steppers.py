"""Built-in steppers: ``sgd`` (torch.optim.SGD's rule) and ``diag_newton``."""
from __future__ import annotations

import torch

from optlab.hparams import HParam, choice, nonneg, optional, positive, positive_int, unit_interval
from optlab.rules import Stepper

LR = nonneg(0.1, "learning rate")
MOMENTUM = unit_interval(0.9, "heavy-ball momentum of the gradient buffer")
WEIGHT_DECAY = nonneg(0.0, "L2 weight decay")


class SGD(Stepper):
    """Exactly ``torch.optim.SGD`` (single-tensor path)::

        d = g + wd*p;  b <- d (first step) | momentum*b + (1-dampening)*d
        d <- d + momentum*b (nesterov) | b;  p <- p - lr*d
    """

    name = "sgd"
    hparams = {
        "lr": LR,
        "momentum": HParam(0.0, lambda x: isinstance(x, (int, float)) and 0 <= x < 1, "a number in [0, 1)"),
        "dampening": unit_interval(0.0),
        "weight_decay": WEIGHT_DECAY,
        "nesterov": HParam(False, lambda x: isinstance(x, bool), "True or False"),
    }

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
        damp, nesterov = group["dampening"], group["nesterov"]
        if nesterov and (mom <= 0 or damp != 0):
            raise ValueError(f"sgd: nesterov=True needs momentum > 0 and dampening = 0 "
                             f"(got momentum={mom}, dampening={damp})")
        for p, g, st in zip(params, grads, states):
            if g is None:
                continue
            d = g if wd == 0 else g.add(p, alpha=wd)
            if mom != 0:
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = torch.clone(d).detach()
                else:
                    buf.mul_(mom).add_(d, alpha=1 - damp)
                d = d.add(buf, alpha=mom) if nesterov else buf
            p.add_(d, alpha=-lr)


def rectify(x: torch.Tensor, mode: str, floor: float, damping: float) -> torch.Tensor:
    """Make a curvature estimate usable as a divisor.

    ``abs``: |x|;  ``clip``: max(x, floor);  ``damping``: max(x, 0) + damping.
    """
    if mode == "abs":
        return x.abs()
    if mode == "clip":
        return x.clamp_min(floor)
    return x.clamp_min(0).add(damping)


class DiagNewton(Stepper):
    """Diagonal Newton step with a gradient-momentum numerator (SGD-PH's 1-D rule).

    With b the momentum buffer (b <- momentum*b + g; b = g on the first step),
    D the EMA of curvature estimates h (D <- beta_h*D + (1-beta_h)*h on each
    refresh of the tensor; n refreshes so far) and r(.) the rectification::

        bias_correction="refreshes": u = tau * b / (r(D / (1 - beta_h**n)) + eps)
                                     (u = b, an SGD-momentum step, while n = 0)
        bias_correction="reference": u = tau * (1 - beta_h**(s // P + 1)) * b / (r(D) + eps)
                                     (s: rule step, P: round-robin period; the paper's code)
        bias_correction="none":      u = tau * b / (r(D) + eps)
        p <- p - lr * (u + wd * p)          (weight decay decoupled from b)

    ``rectify_at="refresh"`` applies r to each estimate before the EMA (what the
    paper does with |H_kk 1|); ``"use"`` averages the signed estimates and
    rectifies when dividing -- unbiased estimators stay unbiased in the EMA.
    Reference: Sun et al., "SGD with Partial Hessian for Deep Neural Networks
    Optimization", arXiv:2403.02681, Alg. 1.
    """

    name = "diag_newton"
    needs_curvature = True
    hparams = {
        "lr": LR,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "hessian_momentum": unit_interval(0.9, "EMA coefficient of the curvature estimates"),
        "tau": positive(1e-3, "scale of the Newton step"),
        "eps": positive(1e-4, "added to the rectified curvature before dividing"),
        "rectify": choice("abs", ("abs", "clip", "damping")),
        "rectify_at": choice("refresh", ("refresh", "use")),
        "floor": nonneg(0.0, "lower bound for rectify='clip'"),
        "damping": nonneg(0.0, "added for rectify='damping'"),
        "bias_correction": choice("refreshes", ("refreshes", "reference", "none")),
        "bias_period": optional(positive_int(None, "P of bias_correction='reference'")),
    }

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
        beta, tau, eps = group["hessian_momentum"], group["tau"], group["eps"]
        mode, floor, damping = group["rectify"], group["floor"], group["damping"]
        bc = group["bias_correction"]
        curvature = curvature or [None] * len(params)
        for p, g, st, h in zip(params, grads, states, curvature):
            if h is not None:
                if group["rectify_at"] == "refresh":
                    h = rectify(h, mode, floor, damping)
                D = st.get("hessian")
                if D is None:
                    D = st["hessian"] = torch.zeros_like(p)
                D.mul_(beta).add_(h, alpha=1 - beta)
                st["hessian_refreshes"] = st.get("hessian_refreshes", 0) + 1
            if g is None:
                continue
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = torch.clone(g).detach()
            else:
                buf.mul_(mom).add_(g)
            D = st.get("hessian")
            if D is None:
                D = torch.zeros_like(p)
            if group["rectify_at"] == "use":
                rect = lambda x: rectify(x, mode, floor, damping)  # noqa: E731
            else:  # estimates were rectified before entering the EMA
                rect = lambda x: x  # noqa: E731
            if bc == "reference":
                period = group.get("bias_period") or group.get("period") or len(params)
                u = buf.mul(tau * (1 - beta ** (rule_step // period + 1))).div_(rect(D).add(eps))
            elif bc == "none":
                u = buf.mul(tau).div_(rect(D).add(eps))
            else:
                n = st.get("hessian_refreshes", 0)
                if n == 0:
                    u = buf.clone()
                else:
                    u = buf.mul(tau).div_(rect(D.div(1 - beta ** n)).add(eps))
            if wd != 0:
                u.add_(p, alpha=wd)
            p.add_(u, alpha=-lr)
