"""Parameter selectors: which parameters belong to a rule.

A selector is a predicate over ``(name, parameter, owner_module)`` -- by module
type, not by ``p.dim()`` (a weight-norm scale has shape ``[C,1,1,1]``; a conv
bias is 1-D but not a normalization parameter). Selectors compose with ``|``,
``&`` and ``~``. ``rest()`` is the special "everything no other rule took"
selector, resolved by :func:`optlab.optim.rules.partition`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Selector",
    "Rest",
    "rest",
    "named_parameters_with_owner",
    "by_predicate",
    "NORM_TYPES",
    "is_norm_affine",
    "is_weight_norm_scale",
]

Predicate = Callable[[str, torch.Tensor, nn.Module], bool]


@dataclass(frozen=True)
class ParamInfo:
    name: str
    param: nn.Parameter
    owner: nn.Module  # the module whose ``_parameters`` holds ``param``


def named_parameters_with_owner(model: nn.Module) -> Iterator[ParamInfo]:
    """``model.named_parameters()`` (deduplicated, same order) with each owner module."""
    seen: set[int] = set()
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for leaf, p in module.named_parameters(recurse=False):
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            yield ParamInfo(f"{mod_name}.{leaf}" if mod_name else leaf, p, module)


class Selector:
    """A named predicate on parameters; compose with ``|``, ``&``, ``~``."""

    def __init__(self, predicate: Predicate, description: str):
        self._predicate = predicate
        self.description = description

    def matches(self, info: ParamInfo) -> bool:
        return bool(self._predicate(info.name, info.param, info.owner))

    def select(self, model: nn.Module) -> list[str]:
        """Names of the parameters of ``model`` this selector matches, in model order."""
        return [i.name for i in named_parameters_with_owner(model) if self.matches(i)]

    def __or__(self, other: Selector) -> Selector:
        _check_composable(self, other)
        return Selector(
            lambda n, p, m: self._predicate(n, p, m) or other._predicate(n, p, m),
            f"({self.description} | {other.description})",
        )

    def __and__(self, other: Selector) -> Selector:
        _check_composable(self, other)
        return Selector(
            lambda n, p, m: self._predicate(n, p, m) and other._predicate(n, p, m),
            f"({self.description} & {other.description})",
        )

    def __invert__(self) -> Selector:
        _check_composable(self)
        return Selector(lambda n, p, m: not self._predicate(n, p, m), f"~{self.description}")

    def __repr__(self) -> str:
        return f"Selector({self.description})"


class Rest(Selector):
    """Every parameter that no other rule selected (at most one per optimizer)."""

    def __init__(self):
        super().__init__(lambda n, p, m: False, "rest")


def _check_composable(*sels) -> None:
    for s in sels:
        if isinstance(s, Rest):
            raise TypeError(
                "rest() cannot be composed with |, & or ~; it means "
                "'whatever no other rule selected' and is resolved by partition()."
            )
        if not isinstance(s, Selector):
            raise TypeError(f"cannot compose a selector with {s!r}")


def rest() -> Rest:
    """Every parameter that no other rule selected (at most one ``rest`` rule per optimizer)."""
    return Rest()


def by_predicate(predicate: Predicate, description: str) -> Selector:
    return Selector(predicate, description)


# --- module-type knowledge shared by the built-in selectors ------------------------
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm, LazyBatchNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,  # InstanceNorm1d/2d/3d (affine=True)
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def is_norm_affine(name: str, p: torch.Tensor, owner: nn.Module) -> bool:
    """Affine weight/bias of a normalization layer."""
    return isinstance(owner, NORM_TYPES) and name.rsplit(".", 1)[-1] in ("weight", "bias")


def is_weight_norm_scale(name: str, p: torch.Tensor, owner: nn.Module) -> bool:
    """The magnitude ``g`` of a weight-normalized layer, ``w = g * v / ||v||``.

    Recognises ``torch.nn.utils.parametrizations.weight_norm`` (``original0`` of
    a ``ParametrizationList`` holding ``_WeightNorm``) and the legacy
    ``torch.nn.utils.weight_norm`` hook (``<name>_g``).
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "original0":
        from torch.nn.utils.parametrizations import _WeightNorm
        from torch.nn.utils.parametrize import ParametrizationList

        return isinstance(owner, ParametrizationList) and any(isinstance(m, _WeightNorm) for m in owner)
    if leaf.endswith("_g"):
        from torch.nn.utils.weight_norm import WeightNorm

        base = leaf[:-2]
        return any(isinstance(h, WeightNorm) and h.name == base for h in owner._forward_pre_hooks.values())
    return False


def regex(pattern: str) -> Selector:
    """Parameters whose qualified name matches ``pattern`` (``re.search``), e.g. ``r"^fc\\."``."""
    rx = re.compile(pattern)
    return Selector(lambda n, p, m: rx.search(n) is not None, f"regex({pattern!r})")
