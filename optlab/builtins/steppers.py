"""Built-in steppers: ``sgd`` (torch.optim.SGD's rule) and ``diag_newton``."""

from __future__ import annotations

import torch

from optlab.optim.hparams import HParam, choice, nonneg, optional, positive, positive_int, unit_interval
from optlab.optim.rules import Stepper

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
            raise ValueError(
                f"sgd: nesterov=True needs momentum > 0 and dampening = 0 (got momentum={mom}, dampening={damp})"
            )
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
    needs_schedule = True  # bias_correction="reference" uses the round-robin period
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

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0, schedule=None):
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
                period = group["bias_period"] or (schedule.period if schedule is not None else None) or len(params)
                u = buf.mul(tau * (1 - beta ** (rule_step // period + 1))).div_(rect(D).add(eps))
            elif bc == "none":
                u = buf.mul(tau).div_(rect(D).add(eps))
            else:
                n = st.get("hessian_refreshes", 0)
                if n == 0:
                    u = buf.clone()
                else:
                    u = buf.mul(tau).div_(rect(D.div(1 - beta**n)).add(eps))
            if wd != 0:
                u.add_(p, alpha=wd)
            p.add_(u, alpha=-lr)


BETA1 = unit_interval(0.9, "EMA coefficient of the gradient")


class AdamHessian(Stepper):
    """Adam with a curvature second moment (AdaHessian's update)::

        m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) D^2 on each refresh (D: the estimate)
        p <- p - lr * ( (m/(1-b1^t)) / ((v/(1-b2^n))^(k/2) + eps) + wd * p )

    k = ``hessian_power``; t counts steps, n refreshes of the tensor; weight decay
    is decoupled (AdamW-style, as AdaHessian's reference code). Before the first
    refresh of a tensor it takes no step. Reference: Yao et al., "ADAHESSIAN"
    (AAAI 2021), Alg. 1.
    """

    name = "adam_hessian"
    needs_curvature = True
    hparams = {
        "lr": nonneg(0.15),
        "betas": HParam(
            (0.9, 0.999),
            lambda b: (
                isinstance(b, (tuple, list))
                and len(b) == 2
                and all(isinstance(x, (int, float)) and 0 <= x < 1 for x in b)
            ),
            "two numbers in [0, 1)",
        ),
        "eps": positive(1e-4),
        "weight_decay": WEIGHT_DECAY,
        "hessian_power": HParam(1.0, lambda k: isinstance(k, (int, float)) and 0 <= k <= 1, "a number in [0, 1]"),
    }

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        b1, b2 = group["betas"]
        lr, eps, wd, k = group["lr"], group["eps"], group["weight_decay"], group["hessian_power"]
        curvature = curvature or [None] * len(params)
        for p, g, st, h in zip(params, grads, states, curvature):
            if g is None:
                continue
            if "exp_avg" not in st:
                st["exp_avg"], st["exp_hessian_sq"], st["steps"], st["hessian_refreshes"] = (
                    torch.zeros_like(p),
                    torch.zeros_like(p),
                    0,
                    0,
                )
            st["steps"] += 1
            st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
            if h is not None:
                st["exp_hessian_sq"].mul_(b2).addcmul_(h, h, value=1 - b2)
                st["hessian_refreshes"] += 1
            n = st["hessian_refreshes"]
            if n == 0:
                continue
            denom = (st["exp_hessian_sq"] / (1 - b2**n)).pow(k / 2).add_(eps)
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - b1 ** st["steps"]))


class ClippedNewton(Stepper):
    """Sophia's clipped, preconditioned momentum::

        m <- b1 m + (1-b1) g;  h <- b2 h + (1-b2) h_hat on refresh
        p <- p (1 - lr wd);  p <- p - lr * sign(m) * min(|m| / max(rho h, eps), 1)

    Reference: Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer"
    (2023), Alg. 3. The estimate h_hat here is already scaled to the GGN/Hessian
    of the mean loss (Sophia's code multiplies by the batch size instead).
    """

    name = "clipped_newton"
    needs_curvature = True
    hparams = {
        "lr": nonneg(1e-3),
        "betas": HParam(
            (0.965, 0.99),
            lambda b: (
                isinstance(b, (tuple, list))
                and len(b) == 2
                and all(isinstance(x, (int, float)) and 0 <= x < 1 for x in b)
            ),
            "two numbers in [0, 1)",
        ),
        "rho": positive(0.04, "gamma of the paper: scale of the curvature in the denominator"),
        "eps": positive(1e-15),
        "weight_decay": nonneg(0.1),
    }

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        b1, b2 = group["betas"]
        lr, rho, eps, wd = group["lr"], group["rho"], group["eps"], group["weight_decay"]
        curvature = curvature or [None] * len(params)
        for p, g, st, h in zip(params, grads, states, curvature):
            if "exp_avg" not in st:
                st["exp_avg"], st["hessian"] = torch.zeros_like(p), torch.zeros_like(p)
            if h is not None:
                st["hessian"].mul_(b2).add_(h, alpha=1 - b2)
            if g is None:
                continue
            st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
            if wd != 0:
                p.mul_(1 - lr * wd)
            ratio = (st["exp_avg"].abs() / (rho * st["hessian"]).clamp_min(eps)).clamp_max(1)
            p.addcmul_(st["exp_avg"].sign(), ratio, value=-lr)


STEPPERS = (SGD, DiagNewton, AdamHessian, ClippedNewton)
