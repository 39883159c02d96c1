"""Presets of the optimizers SGD-PH is compared with, assembled from parts: ``adamw``, ``lion``,
``muon``, ``soap``, and the cross-family ``sgd-ph-muon`` / ``adamw-ph`` (SGD-PH's Newton rule on the
channel-wise parameters of Muon or AdamW). See docs/relatives.md for where each differs from its
reference implementation.
"""

from __future__ import annotations

from typing import Any

from optlab import api
from optlab.optim.hparams import PART_DEFAULT, defaults_from, given
from optlab.optim.rules import Rule, Schedule
from optlab.optim.selectors import Selector, rest

from .orthogonal import hidden_matrices, output_head

#: Muon's AdamW half, as Jordan's MuonWithAuxAdam and pytorch_optimizer.Muon: lr, betas, eps, wd
MUON_ADAMW = dict(adamw_lr=3e-4, adamw_betas=(0.9, 0.95), adamw_eps=1e-10, adamw_weight_decay=0.0)


def _selector(sel) -> Selector:
    return sel if isinstance(sel, Selector) else api.selector(sel)


@defaults_from(("stepper", "adam"))
def adamw(
    model,
    lr=PART_DEFAULT,
    betas=PART_DEFAULT,
    eps=PART_DEFAULT,
    weight_decay=PART_DEFAULT,
    amsgrad=PART_DEFAULT,
    decoupled_weight_decay=PART_DEFAULT,
):
    """AdamW for every parameter: the ``adam`` stepper, bit for bit ``torch.optim.AdamW``
    (``decoupled_weight_decay=False``: ``torch.optim.Adam`` with L2 weight decay)."""
    hp = given(
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        decoupled_weight_decay=decoupled_weight_decay,
    )
    return [Rule("all", rest(), None, api.stepper("adam"), hp)]


@defaults_from(("stepper", "lion"))
def lion(model, lr=PART_DEFAULT, betas=PART_DEFAULT, weight_decay=PART_DEFAULT):
    """Lion for every parameter: sign of the interpolated momentum, decoupled weight decay
    (Chen et al. 2023; ``pytorch_optimizer.Lion``'s update)."""
    return [Rule("all", rest(), None, api.stepper("lion"), given(lr=lr, betas=betas, weight_decay=weight_decay))]


def _matrix_selector(model, head: Any) -> Selector:
    """Hidden matrices without the output head (``head="auto"``: :func:`output_head`; a module
    name; ``None``: no head excluded)."""
    if head == "auto":
        head = output_head(model)
    elif head is not None and (not isinstance(head, str) or head not in dict(model.named_modules())):
        modules = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
        raise ValueError(
            f"invalid head={head!r}: expected 'auto', None or the qualified name of a module of "
            f"{type(model).__name__}: {', '.join(modules)}"
        )
    return hidden_matrices(() if head is None else (head,))


def _muon_rules(
    model, matrices: Selector, muon_hp: dict, adamw_hp: dict, *, rest_name: str = "adamw", preset: str
) -> list[Rule]:
    return [
        Rule(
            "muon",
            matrices,
            None,
            api.stepper("orthogonal_momentum"),
            muon_hp,
            if_empty=f"{preset}: {type(model).__name__} has no hidden matrix (Linear/Conv weights other than "
            "the output head); every parameter goes to AdamW.",
        ),
        Rule(rest_name, rest(), None, api.stepper("adam"), adamw_hp),
    ]


def _adamw_hp(lr, betas, eps, weight_decay) -> dict:
    return dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@defaults_from(("stepper", "orthogonal_momentum"))
def muon(
    model,
    lr=PART_DEFAULT,
    momentum=PART_DEFAULT,
    nesterov=PART_DEFAULT,
    weight_decay=PART_DEFAULT,
    ns_steps=PART_DEFAULT,
    ns_dtype=PART_DEFAULT,
    shape_scale=PART_DEFAULT,
    adamw_lr=MUON_ADAMW["adamw_lr"],
    adamw_betas=MUON_ADAMW["adamw_betas"],
    adamw_eps=MUON_ADAMW["adamw_eps"],
    adamw_weight_decay=MUON_ADAMW["adamw_weight_decay"],
    head="auto",
):
    """Muon: orthogonalized Nesterov momentum on hidden matrices, AdamW on the rest.

    Hidden matrices (``hidden_matrices``): weights of Linear/Conv layers (conv kernels as
    out x in*kh*kw) except the output head; embeddings, biases, norm affines and raw parameters
    go to AdamW (``adamw_*``; defaults as Jordan's MuonWithAuxAdam). ``head="auto"`` takes the
    last module holding a weight matrix (see ``optlab explain``); pass a module name or None.
    ``shape_scale``: ``sqrt_ratio`` (Jordan) or ``moonlight`` (0.2 sqrt(max dim), Liu et al.).
    Reference: Jordan et al. (2024); matched to pytorch_optimizer.Muon (docs/relatives.md).
    """
    muon_hp = given(
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        ns_steps=ns_steps,
        ns_dtype=ns_dtype,
        shape_scale=shape_scale,
    )
    adamw_hp = _adamw_hp(adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay)
    return _muon_rules(model, _matrix_selector(model, head), muon_hp, adamw_hp, preset="muon")


def _channelwise_newton_rule(model, preset, selector, estimator, every, schedule, hp, estimator_options) -> Rule:
    """SGD-PH's rule for the channel-wise class (as in ``sgd-ph``): a curvature estimate every
    ``every`` steps and the ``diag_newton`` step."""
    est = api.estimator(estimator)
    if hp.get("rectify_at") is None:
        hp["rectify_at"] = "use" if est.stochastic else "refresh"
    return Rule(
        "channelwise",
        _selector(selector),
        est,
        api.stepper("diag_newton"),
        given(**hp, **estimator_options),
        schedule=Schedule(every, schedule),
        if_empty=f"{preset}: no channel-wise parameter in {type(model).__name__} (selector {selector!r}); "
        "the Newton rule is empty.",
    )


@defaults_from(("stepper", "orthogonal_momentum"), ("stepper", "diag_newton"))
def sgd_ph_muon(
    model,
    lr=PART_DEFAULT,
    momentum=PART_DEFAULT,
    nesterov=PART_DEFAULT,
    weight_decay=PART_DEFAULT,
    ns_steps=PART_DEFAULT,
    shape_scale=PART_DEFAULT,
    adamw_lr=MUON_ADAMW["adamw_lr"],
    adamw_betas=MUON_ADAMW["adamw_betas"],
    adamw_eps=MUON_ADAMW["adamw_eps"],
    adamw_weight_decay=MUON_ADAMW["adamw_weight_decay"],
    head="auto",
    newton_lr=0.1,
    newton_momentum=0.9,
    newton_weight_decay=0.0,
    hessian_momentum=PART_DEFAULT,
    tau=PART_DEFAULT,
    newton_eps=1e-4,
    rectify=PART_DEFAULT,
    rectify_at=None,
    every=50,
    schedule="all",
    estimator="block_rademacher",
    selector="channelwise",
    **estimator_options,
):
    """SGD-PH's diagonal Newton on channel-wise parameters, Muon on hidden matrices, AdamW on the rest.

    Three rules: ``channelwise`` (normalization affines and weight-norm scales: ``sgd-ph``'s
    estimator, schedule and ``diag_newton`` step, its hyperparameters prefixed ``newton_`` where
    Muon has the same name), ``muon`` (as the ``muon`` preset) and ``adamw`` (everything else:
    embeddings, the output head, biases). An example of composing parts across families: the
    question "does SGD-PH's treatment of normalization parameters help Muon too?" as a preset.
    """
    newton = _channelwise_newton_rule(
        model,
        "sgd-ph-muon",
        selector,
        estimator,
        every,
        schedule,
        dict(
            lr=newton_lr,
            momentum=newton_momentum,
            weight_decay=newton_weight_decay,
            hessian_momentum=hessian_momentum,
            tau=tau,
            eps=newton_eps,
            rectify=rectify,
            rectify_at=rectify_at,
        ),
        estimator_options,
    )
    muon_hp = given(
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        ns_steps=ns_steps,
        shape_scale=shape_scale,
    )
    matrices = _matrix_selector(model, head) & ~newton.selector
    adamw_hp = _adamw_hp(adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay)
    return [newton, *_muon_rules(model, matrices, muon_hp, adamw_hp, preset="sgd-ph-muon")]


@defaults_from(("stepper", "adam"), ("stepper", "diag_newton"))
def adamw_ph(
    model,
    lr=PART_DEFAULT,
    betas=PART_DEFAULT,
    eps=PART_DEFAULT,
    weight_decay=PART_DEFAULT,
    newton_lr=0.1,
    newton_momentum=0.9,
    newton_weight_decay=0.0,
    hessian_momentum=PART_DEFAULT,
    tau=PART_DEFAULT,
    newton_eps=1e-4,
    rectify=PART_DEFAULT,
    rectify_at=None,
    every=50,
    schedule="all",
    estimator="block_rademacher",
    selector="channelwise",
    **estimator_options,
):
    """SGD-PH's diagonal Newton on channel-wise parameters, AdamW on every other parameter.

    ``sgd-ph`` with AdamW in place of SGD-momentum for the first-order class (the ``newton_``
    hyperparameters are the channel-wise rule's; the unprefixed ones AdamW's).
    """
    newton = _channelwise_newton_rule(
        model,
        "adamw-ph",
        selector,
        estimator,
        every,
        schedule,
        dict(
            lr=newton_lr,
            momentum=newton_momentum,
            weight_decay=newton_weight_decay,
            hessian_momentum=hessian_momentum,
            tau=tau,
            eps=newton_eps,
            rectify=rectify,
            rectify_at=rectify_at,
        ),
        estimator_options,
    )
    hp = given(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return [newton, Rule("adamw", rest(), None, api.stepper("adam"), hp)]


@defaults_from(("stepper", "eigenbasis_adam"))
def soap(
    model,
    lr=PART_DEFAULT,
    betas=PART_DEFAULT,
    shampoo_beta=PART_DEFAULT,
    eps=PART_DEFAULT,
    weight_decay=PART_DEFAULT,
    precondition_frequency=PART_DEFAULT,
    max_precondition_dim=PART_DEFAULT,
    precondition_1d=PART_DEFAULT,
):
    """SOAP for every parameter: Adam in the eigenbasis of Shampoo's Kronecker factors
    (``eigenbasis_adam``; Vyas et al. 2025; pytorch_optimizer.SOAP's update). 1-D tensors and
    dimensions over ``max_precondition_dim`` keep the identity basis (plain Adam there)."""
    hp = given(
        lr=lr,
        betas=betas,
        shampoo_beta=shampoo_beta,
        eps=eps,
        weight_decay=weight_decay,
        precondition_frequency=precondition_frequency,
        max_precondition_dim=max_precondition_dim,
        precondition_1d=precondition_1d,
    )
    return [Rule("all", rest(), None, api.stepper("eigenbasis_adam"), hp)]


PRESETS = {
    "adamw": adamw,
    "soap": soap,
    "lion": lion,
    "muon": muon,
    "sgd-ph-muon": sgd_ph_muon,
    "adamw-ph": adamw_ph,
}
