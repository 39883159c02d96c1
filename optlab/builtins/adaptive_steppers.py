"""Steppers with per-coordinate adaptive step sizes and sign updates: ``adam`` (Adam/AdamW) and ``lion``.

Both follow their reference implementation's operation order, so that an optimizer built from
them equals it bit for bit (``adam``: ``torch.optim.AdamW``/``Adam``, single-tensor path) or to
the last rounding (``lion``: ``pytorch_optimizer.Lion``, see ``tests/test_relatives.py``).
"""

from __future__ import annotations

import torch

from optlab.optim.hparams import HParam, nonneg, positive
from optlab.optim.rules import Stepper

__all__ = ["Adam", "Lion", "BETAS"]


def _betas(default: tuple[float, float], doc: str) -> HParam:
    return HParam(
        default,
        lambda b: (
            isinstance(b, (tuple, list))
            and len(b) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in b)
        ),
        "two numbers in [0, 1)",
        doc,
    )


#: Adam's (beta1, beta2): EMA coefficients of the gradient and of its square
BETAS = _betas((0.9, 0.999), "EMA coefficients of the gradient and of the squared gradient")
_BOOL = "True or False"


class Adam(Stepper):
    """Adam with bias correction, decoupled (AdamW) or L2 weight decay, optional AMSGrad.

    With t the tensor's step count (steps on which it had a gradient)::

        decoupled:  p <- p (1 - lr wd)          |  L2:  g <- g + wd p
        m <- m + (1-b1)(g - m)   (lerp);   v <- b2 v + (1-b2) g^2
        v_hat <- max(v_hat, v) (amsgrad) | v
        p <- p - lr/(1-b1^t) * m / (sqrt(v_hat)/sqrt(1-b2^t) + eps)

    The operations, their order and their operands are ``torch.optim.AdamW``'s single-tensor path
    (``torch.optim.Adam`` with ``decoupled_weight_decay=False``), so the two agree bit for bit.
    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019), Alg. 2;
    Kingma & Ba (2015); Reddi et al. (2018) for AMSGrad.
    """

    name = "adam"
    hparams = {
        "lr": nonneg(1e-3, "learning rate"),
        "betas": BETAS,
        "eps": positive(1e-8, "added to the square root of the second moment"),
        "weight_decay": nonneg(1e-2, "weight decay (decoupled: p <- p (1 - lr wd); else added to the gradient)"),
        "decoupled_weight_decay": HParam(True, lambda x: isinstance(x, bool), _BOOL, "AdamW (True) or Adam+L2"),
        "amsgrad": HParam(False, lambda x: isinstance(x, bool), _BOOL, "divide by the running max of v"),
    }

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        amsgrad, decoupled = group["amsgrad"], group["decoupled_weight_decay"]
        for p, g, st in zip(params, grads, states):
            if g is None:
                continue
            if "exp_avg" not in st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if amsgrad and "max_exp_avg_sq" not in st:
                st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1
            step = st["step"]
            if wd != 0:
                if decoupled:
                    p.mul_(1 - lr * wd)
                else:
                    g = g.add(p, alpha=wd)
            exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
            exp_avg.lerp_(g, 1 - b1)
            exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
            step_size = lr / (1 - b1**step)
            bias_correction2_sqrt = (1 - b2**step) ** 0.5
            if amsgrad:
                torch.maximum(st["max_exp_avg_sq"], exp_avg_sq, out=st["max_exp_avg_sq"])
                denom = (st["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
            else:
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


class Lion(Stepper):
    """Lion: the sign of a beta1-interpolation of momentum and gradient, decoupled weight decay::

        p <- p (1 - lr wd)
        u = sign(m + (1-b1)(g - m));   m <- m + (1-b2)(g - m);   p <- p - lr u

    (interpolations with ``lerp``, as ``pytorch_optimizer.Lion``; momentum m starts at 0).
    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms" (NeurIPS 2023), Program 1.
    """

    name = "lion"
    hparams = {
        "lr": nonneg(1e-4, "learning rate (every coordinate moves by exactly lr)"),
        "betas": _betas((0.9, 0.99), "interpolation of the update (b1) and momentum EMA (b2)"),
        "weight_decay": nonneg(0.0, "decoupled weight decay: p <- p (1 - lr wd)"),
    }

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
        for p, g, st in zip(params, grads, states):
            if g is None:
                continue
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if wd != 0:
                p.mul_(1.0 - wd * lr)
            update = st["exp_avg"].lerp(g, 1.0 - b1).sign_()
            st["exp_avg"].lerp_(g, 1.0 - b2)
            p.add_(update, alpha=-lr)


STEPPERS = (Adam, Lion)
