"""optlab-fisher: an estimator, a stepper and a preset, registered through optlab's hooks."""
from __future__ import annotations

import torch

import optlab
from optlab.hparams import nonneg, optional, positive, positive_int, unit_interval


class EmpiricalFisherDiag(optlab.CurvatureEstimator):
    """Diagonal of the empirical Fisher ``(1/N) sum_n g_n g_n^T`` of the mean loss.

    Row n of ``d loss/d outputs`` is ``(1/N) d l_n/d f_n``; its output VJP is
    ``g_n / N``, so ``diag = N * sum_n (J^T u_n)^2``. Needs the closure to
    return ``(loss, outputs)``. Reference: Kunstner et al., "Limitations of the
    empirical Fisher approximation" (2019) -- it is not the Fisher.
    """

    name = "empirical_fisher_diag"
    target = "empirical_fisher_diag"             # the conformance kit's reference for it
    requires = {"closure": "loss_outputs"}      # reads d loss / d outputs
    hparams = {"chunk_size": optional(positive_int(None, "samples per vmapped batch"))}

    def estimate(self, ctx, indices, group, generator):
        if not indices:
            return {}
        G = ctx.output_loss_grad()
        n = G.shape[0]
        us = torch.zeros((n, *G.shape), dtype=G.dtype, device=G.device)
        us[torch.arange(n), torch.arange(n)] = G
        jt = ctx.output_vjp_batched(us, chunk_size=group["chunk_size"])
        return {k: jt[k].pow(2).sum(0) * n for k in indices}


class RMSNewton(optlab.Stepper):
    """``m <- b1 m + (1-b1) g``; ``D <- b2 D + (1-b2) h`` on refresh;
    ``p <- p - lr (m / (sqrt(D / (1 - b2^n)) + eps) + wd p)`` (SGD-momentum step while n = 0)."""

    name = "rms_newton"
    needs_curvature = True
    hparams = {"lr": nonneg(0.01), "beta1": unit_interval(0.9), "beta2": unit_interval(0.99),
               "eps": positive(1e-8), "weight_decay": nonneg(0.0)}

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        lr, b1, b2, eps, wd = (group[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
        curvature = curvature or [None] * len(params)
        for p, g, st, h in zip(params, grads, states, curvature):
            if "m" not in st:
                st["m"], st["D"], st["n"] = torch.zeros_like(p), torch.zeros_like(p), 0
            if h is not None:
                st["D"].mul_(b2).add_(h, alpha=1 - b2)
                st["n"] += 1
            if g is None:
                continue
            st["m"].mul_(b1).add_(g, alpha=1 - b1)
            if st["n"] == 0:
                u = st["m"].clone()
            else:
                u = st["m"] / ((st["D"] / (1 - b2 ** st["n"])).sqrt() + eps)
            if wd:
                u.add_(p, alpha=wd)
            p.add_(u, alpha=-lr)


def sgd_ef(model, lr=0.1, momentum=0.9, weight_decay=0.0, newton_lr=0.01, beta2=0.99, eps=1e-8, every=1):
    """RMS-Newton with the empirical Fisher on channel-wise parameters, SGD-momentum on the rest."""
    return [
        optlab.Rule("channelwise", optlab.selector("channelwise"), optlab.estimator("empirical_fisher_diag"),
                    optlab.stepper("rms_newton"),
                    dict(lr=newton_lr, beta1=momentum, beta2=beta2, eps=eps, weight_decay=weight_decay),
                    schedule=optlab.Schedule(every, "all")),
        optlab.Rule("rest", optlab.rest(), None, optlab.stepper("sgd"),
                    dict(lr=lr, momentum=momentum, weight_decay=weight_decay)),
    ]


@optlab.hookimpl
def optlab_register_estimators(register):
    register("empirical_fisher_diag", EmpiricalFisherDiag)


@optlab.hookimpl
def optlab_register_steppers(register):
    register("rms_newton", RMSNewton)


@optlab.hookimpl
def optlab_register_presets(register):
    register("sgd-ef", sgd_ef)
