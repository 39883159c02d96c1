"""Built-in presets: named optimizers as short compositions of registered parts.

Each preset is ``fn(model, **hparams) -> list[Rule]``; read them like optax's
``alias.py``. A keyword whose default is ``PART_DEFAULT`` takes the default its part declares
(the parts listed in ``@defaults_from``), so each default is written once; ``given(...)``
forwards only the values that were set, and the part fills in the rest.
"""

from __future__ import annotations

from optlab import api
from optlab.optim.hparams import PART_DEFAULT, defaults_from, given
from optlab.optim.rules import Rule, Schedule
from optlab.optim.selectors import Selector, rest


def _selector(sel) -> Selector:
    return sel if isinstance(sel, Selector) else api.selector(sel)


@defaults_from(("stepper", "sgd"))
def sgd(model, lr=PART_DEFAULT, momentum=0.9, dampening=PART_DEFAULT, weight_decay=PART_DEFAULT, nesterov=PART_DEFAULT):
    """SGD with momentum for every parameter (torch.optim.SGD's update)."""
    hp = given(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    return [Rule("all", rest(), None, api.stepper("sgd"), hp)]


@defaults_from(("stepper", "sgd"))
def sgd_scaled(
    model,
    lr=0.1,
    momentum=0.9,
    weight_decay=PART_DEFAULT,
    nesterov=PART_DEFAULT,
    channelwise_lr_scale=0.1,
    selector="channelwise",
):
    """Control: SGD with momentum everywhere, the channel-wise parameters at ``lr * channelwise_lr_scale``.

    SGD-PH's Newton step on a channel-wise parameter is the SGD-M step scaled by
    tau/(D+eps); this control takes a constant scale instead of the curvature. If
    it matches SGD-PH, "a smaller step on normalization parameters" explains the
    effect, not the curvature. ``channelwise_lr_scale=0`` freezes them (``sgd-frozen``).
    """
    if (
        not isinstance(channelwise_lr_scale, (int, float))
        or isinstance(channelwise_lr_scale, bool)
        or not 0 <= channelwise_lr_scale < float("inf")
    ):
        raise ValueError(
            f"sgd-scaled: invalid channelwise_lr_scale={channelwise_lr_scale!r}; expected a finite number >= 0"
        )
    hp = given(momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return [
        Rule(
            "channelwise",
            _selector(selector),
            None,
            api.stepper("sgd"),
            dict(lr=lr * channelwise_lr_scale, **hp),
            if_empty=f"sgd-scaled: no channel-wise parameter in {type(model).__name__} (selector {selector!r}); "
            "the control reduces to SGD with momentum.",
        ),
        Rule("rest", rest(), None, api.stepper("sgd"), dict(lr=lr, **hp)),
    ]


@defaults_from(("stepper", "sgd"))
def sgd_frozen(model, lr=0.1, momentum=0.9, weight_decay=PART_DEFAULT, nesterov=PART_DEFAULT, selector="channelwise"):
    """Control: SGD with momentum on everything but the channel-wise parameters, which stay at their
    initial values (``sgd-scaled`` with ``channelwise_lr_scale=0``)."""
    return sgd_scaled(
        model,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
        channelwise_lr_scale=0.0,
        selector=selector,
    )


@defaults_from(("stepper", "diag_newton"), ("stepper", "sgd"))
def sgd_ph(
    model,
    lr=0.1,
    momentum=0.9,
    weight_decay=0.0,
    hessian_momentum=PART_DEFAULT,
    tau=PART_DEFAULT,
    eps=PART_DEFAULT,
    every=50,
    schedule="all",
    estimator="block_rademacher",
    rectify=PART_DEFAULT,
    rectify_at=None,
    selector="channelwise",
    nesterov=PART_DEFAULT,
    **estimator_options,
):
    """SGD-PH: diagonal Newton on channel-wise parameters, SGD-momentum on the rest.

    Default refresh: every tensor's H_kk 1 every 50 steps from one block-Rademacher
    HVP, at SGD's step cost. With 20 evaluation seeds it was not shown worse than
    refreshing every step, nor shown equivalent within 0.5 pp (docs/evidence.md,
    experiments/paper-ablation.toml); no schedule beat SGD-M there. The paper's schedule is ``estimator="rowsum_hvp",
    schedule="round_robin", every=1`` (and its exact code is ``sgd-ph-reference``).

    ``estimator`` is any registered curvature estimator; extra keyword arguments
    are its options (e.g. ``probes=4``). ``rectify_at`` defaults to ``"refresh"``
    for deterministic estimators (the paper: EMA of |H_kk 1|) and to ``"use"``
    for stochastic ones (EMA of the signed, unbiased estimate; rectified when
    dividing). Reference: Sun et al., arXiv:2403.02681.
    """
    est = api.estimator(estimator)
    if rectify_at is None:
        rectify_at = "use" if est.stochastic else "refresh"
    second = given(
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        hessian_momentum=hessian_momentum,
        tau=tau,
        eps=eps,
        rectify=rectify,
        rectify_at=rectify_at,
        **estimator_options,
    )
    first = given(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return [
        Rule(
            "channelwise",
            _selector(selector),
            est,
            api.stepper("diag_newton"),
            second,
            schedule=Schedule(every, schedule),
            if_empty=f"sgd-ph: no channel-wise parameter in {type(model).__name__} (selector "
            f"{selector!r}); SGD-PH reduces to SGD with momentum. For a network without "
            "normalization layers, apply optlab.decouple(model) first.",
        ),
        Rule("rest", rest(), None, api.stepper("sgd"), first),
    ]


@defaults_from(("stepper", "diag_newton"))
def sgd_ph_reference(model, lr=0.1, momentum=0.9, weight_decay=0.0, eps=PART_DEFAULT, tau=PART_DEFAULT):
    """The paper's released code, step for step.

    M 1-D tensors (parameter order) share a round-robin of period M; step s
    refreshes tensor ((s-1) mod M)+1 with D <- b*D + (1-b)|H_kk 1| (b = momentum).
    1-D tensors except the last take the Newton step with the reference bias
    correction (1 - b**(s//M + 1)) and decoupled weight decay; every other
    tensor, the last 1-D one included, is plain SGD-momentum with coupled decay.
    """
    one_d = [n for n, p in model.named_parameters() if p.requires_grad and p.dim() == 1]
    m = len(one_d)
    ph = api.selector("names", *one_d[:-1])
    second = given(
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        hessian_momentum=momentum,
        tau=tau,
        eps=eps,
        rectify="abs",
        rectify_at="refresh",
        bias_correction="reference",
        bias_period=m or None,
    )
    return [
        Rule(
            "newton_1d",
            ph,
            api.estimator("rowsum_hvp"),
            api.stepper("diag_newton"),
            second,
            schedule=Schedule(1, "round_robin", period=m or None),
            if_empty=f"sgd-ph-reference: {type(model).__name__} has fewer than two 1-D parameter "
            "tensors; the reference update reduces to SGD with momentum.",
        ),
        Rule("rest", rest(), None, api.stepper("sgd"), dict(lr=lr, momentum=momentum, weight_decay=weight_decay)),
    ]


@defaults_from(("stepper", "adam_hessian"), ("estimator", "hutchinson"))
def adahessian(
    model,
    lr=PART_DEFAULT,
    betas=PART_DEFAULT,
    eps=PART_DEFAULT,
    weight_decay=PART_DEFAULT,
    hessian_power=PART_DEFAULT,
    probes=PART_DEFAULT,
    every=1,
    spatial_average=True,
):
    """AdaHessian = Hutchinson (spatially averaged) + ``adam_hessian`` for every parameter.

    Differs from Yao et al. (2021): one Hutchinson draw per refresh from the
    optimizer's own generator (state_dict-resumable), 1-D tensors are not
    special-cased, and bias correction of the curvature EMA counts refreshes
    (equal to steps when ``every=1``).
    """
    hp = given(
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        hessian_power=hessian_power,
        probes=probes,
        distribution="rademacher",
        spatial_average=spatial_average,
    )
    return [
        Rule(
            "all", rest(), api.estimator("hutchinson"), api.stepper("adam_hessian"), hp, schedule=Schedule(every, "all")
        )
    ]


@defaults_from(("stepper", "clipped_newton"), ("estimator", "ggn_mc"), ("estimator", "hutchinson"))
def sophia(
    model,
    lr=PART_DEFAULT,
    betas=PART_DEFAULT,
    rho=PART_DEFAULT,
    eps=PART_DEFAULT,
    weight_decay=PART_DEFAULT,
    every=10,
    estimator="ggn_mc",
    samples=PART_DEFAULT,
    probes=PART_DEFAULT,
):
    """Sophia = a curvature estimate every ``every`` steps + ``clipped_newton``.

    ``estimator="ggn_mc"`` is Sophia-G (Gauss-Newton-Bartlett; the closure must
    return ``(loss, outputs)``), ``"hutchinson"`` is Sophia-H. Differs from Liu et
    al. (2023): the GNB estimate is scaled to the mean loss's GGN, so ``rho`` is
    not multiplied by the batch size; cross-entropy outputs only for GNB.
    """
    est = api.estimator(estimator)
    extra = {"ggn_mc": given(samples=samples), "hutchinson": given(probes=probes)}.get(estimator, {})
    hp = given(lr=lr, betas=betas, rho=rho, eps=eps, weight_decay=weight_decay, **extra)
    return [Rule("all", rest(), est, api.stepper("clipped_newton"), hp, schedule=Schedule(every, "all"))]


PRESETS = {
    "sgd": sgd,
    "sgd-scaled": sgd_scaled,
    "sgd-frozen": sgd_frozen,
    "sgd-ph": sgd_ph,
    "sgd-ph-reference": sgd_ph_reference,
    "adahessian": adahessian,
    "sophia": sophia,
}
