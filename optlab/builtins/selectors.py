"""Built-in parameter selectors (registered as factories: ``factory(**options) -> Selector``)."""

from __future__ import annotations

from optlab.optim.selectors import Selector, by_predicate, is_norm_affine, is_weight_norm_scale, regex, rest


def norm() -> Selector:
    """Affine weight/bias of BatchNorm*/SyncBatchNorm/GroupNorm/LayerNorm/InstanceNorm/RMSNorm."""
    return by_predicate(is_norm_affine, "norm")


def wn_scale() -> Selector:
    """Weight-normalization magnitudes g (parametrizations ``original0`` and legacy ``weight_g``)."""
    return by_predicate(is_weight_norm_scale, "wn_scale")


def channelwise() -> Selector:
    """SGD-PH's second-order set: normalization affine parameters and weight-norm scales."""
    return norm() | wn_scale()


def one_d() -> Selector:
    """Every 1-D tensor (what the paper's reference code selects: includes linear/conv biases)."""
    return by_predicate(lambda n, p, m: p.dim() == 1, "one_d")


def names(*names: str) -> Selector:
    """Exactly the parameters with these qualified names."""
    wanted = frozenset(names)
    return by_predicate(lambda n, p, m: n in wanted, f"names({', '.join(sorted(wanted))})")


def nothing() -> Selector:
    """Matches no parameter (e.g. to turn a compound preset into its first-order part)."""
    return by_predicate(lambda n, p, m: False, "nothing")


SELECTORS = {
    "channelwise": channelwise,
    "norm": norm,
    "wn_scale": wn_scale,
    "one_d": one_d,
    "regex": regex,
    "names": names,
    "nothing": nothing,
    "rest": rest,
}
