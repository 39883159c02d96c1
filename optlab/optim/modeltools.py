"""Model transformations."""

from __future__ import annotations

import re
from typing import cast

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

__all__ = ["decouple", "DEFAULT_DECOUPLE_TYPES", "PrimitiveWeightNorm"]


class PrimitiveWeightNorm(_WeightNorm):
    """``torch.nn.utils.parametrizations.weight_norm``'s parametrization, in primitive ops.

    Same parameters (``original0`` = g, ``original1`` = v) and initialisation, but
    ``g * v / ||v||`` is written with differentiable primitives instead of the
    fused ``torch._weight_norm``, which has no forward-mode AD in torch 2.13 (so
    ``torch.func.jvp`` -- the ``func`` HVP engine -- could not run through it).
    """

    def forward(self, weight_g, weight_v):
        dims = [d for d in range(weight_v.dim()) if d != self.dim]
        return weight_v * (weight_g / weight_v.pow(2).sum(dim=dims, keepdim=True).sqrt())


DEFAULT_DECOUPLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def decouple(
    model: nn.Module, types: tuple[type[nn.Module], ...] = DEFAULT_DECOUPLE_TYPES, exclude: str | None = None
) -> nn.Module:
    """Weight-normalize conv/linear layers in place: ``w = g * v / ||v||`` per output channel.

    This gives a network without normalization layers channel-wise scales ``g``
    (the paper's route to SGD-PH for BN-free nets, Sec. 3.3). ``g`` is
    initialised to ``||w||`` so the outputs are unchanged. Layers whose qualified
    name matches the regex ``exclude`` are left alone; layers already using
    torch's ``weight_norm`` get its primitive-op twin (same values). Returns ``model``.
    Reference: Salimans & Kingma, "Weight Normalization" (2016).
    """
    rx = re.compile(exclude) if exclude else None
    swapped = 0
    for m in model.modules():  # torch's own weight_norm: same maths, but no forward-mode AD -> swap
        if parametrize.is_parametrized(m, "weight"):
            plist = cast(nn.ModuleList, cast(nn.ModuleDict, m.parametrizations)["weight"])
            for i, pm in enumerate(plist):
                if type(pm) is _WeightNorm:
                    plist[i] = PrimitiveWeightNorm(pm.dim)
                    swapped += 1
    targets = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, types) and not (rx and rx.search(n)) and not parametrize.is_parametrized(m, "weight")
    ]
    if not targets and swapped:
        return model
    if not targets:
        raise ValueError(
            f"decouple: {type(model).__name__} has no {', '.join(t.__name__ for t in types)} "
            "layer to weight-normalize" + (f" outside exclude={exclude!r}" if exclude else "")
        )
    for _, layer in targets:
        parametrize.register_parametrization(layer, "weight", PrimitiveWeightNorm(0), unsafe=True)
    return model
