"""Orthogonalized momentum (Muon's matrix rule): Newton--Schulz iteration, its stepper, its selector.

Muon updates each hidden weight matrix with the (approximate) orthogonal polar factor of its
Nesterov momentum; embeddings, the output head and every non-matrix parameter go to AdamW.
The parts here are the matrix half: :func:`newton_schulz` (batched over same-shape matrices),
the ``orthogonal_momentum`` stepper and the ``hidden_matrices`` selector. The preset ``muon``
(:mod:`optlab.builtins.relatives_presets`) joins them with the ``adam`` stepper.

Reference: K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/ ; J. Liu et al., "Muon is Scalable for LLM Training"
(Moonlight, arXiv:2502.16982) for the ``moonlight`` shape scale. Numerically matched against
``pytorch_optimizer.Muon`` (4.x) in ``tests/test_relatives.py``.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from optlab.optim.hparams import HParam, choice, nonneg, positive, positive_int, unit_interval
from optlab.optim.rules import Stepper
from optlab.optim.selectors import Selector, by_predicate, is_weight_norm_scale

__all__ = [
    "NS_COEFFICIENTS",
    "newton_schulz",
    "shape_scale",
    "OrthogonalMomentum",
    "MATRIX_TYPES",
    "EMBEDDING_TYPES",
    "is_hidden_matrix",
    "hidden_matrices",
    "output_head",
]

#: the quintic's (a, b, c) of Jordan's Muon: x <- a x + (b A + c A^2) x with A = x x^T
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    g: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = 1e-7
) -> torch.Tensor:
    """Approximate orthogonal polar factor U V^T of each matrix ``g[..., m, n]`` (g = U S V^T).

    A matrix with more rows than columns is transposed first (so A = x x^T is the smaller Gram
    matrix) and back at the end; x_0 = g / max(||g||_F, eps); then ``steps`` times::

        A = x x^T;   x <- a x + (b A + c A A) x

    The quintic pushes every singular value of x_0 (all in (0, 1]) towards ~[0.7, 1.2], not to
    exactly 1 (Jordan's coefficients trade exactness for speed). All leading dimensions are
    one batch: one ``baddbmm`` per product for every matrix of that shape, no Python loop.
    Computed in ``g``'s dtype.
    """
    if g.dim() < 2:
        raise ValueError(f"newton_schulz needs matrices (a tensor of >= 2 dims); got shape {tuple(g.shape)}")
    a, b, c = coefficients
    transpose = g.size(-2) > g.size(-1)
    x = g.mT if transpose else g
    lead = x.shape[:-2]
    x = x.reshape(-1, x.size(-2), x.size(-1))
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp_min(eps)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a, alpha=1.0)
    x = x.reshape(*lead, x.size(-2), x.size(-1))
    return x.mT if transpose else x


SHAPE_SCALES = ("sqrt_ratio", "moonlight", "none")


def shape_scale(shape: torch.Size | tuple[int, ...], mode: str) -> float:
    """The factor on the learning rate of an orthogonalized update of a ``(rows, *rest)`` parameter
    (fan_out = rows, fan_in = prod(rest)):

    * ``sqrt_ratio`` -- Jordan's Muon: sqrt(max(1, fan_out / fan_in));
    * ``moonlight`` -- Liu et al.: 0.2 sqrt(max(fan_out, fan_in)) (update RMS ~ AdamW's, so AdamW's lr
      and weight decay carry over);
    * ``none`` -- 1.
    """
    rows, cols = shape[0], math.prod(shape[1:])
    if mode == "sqrt_ratio":
        return math.pow(max(1.0, rows / cols), 0.5)
    if mode == "moonlight":
        return 0.2 * math.sqrt(max(rows, cols))
    if mode == "none":
        return 1.0
    raise ValueError(f"unknown shape_scale {mode!r}; valid: {', '.join(SHAPE_SCALES)}")


def _coefficients(x) -> bool:
    return (
        isinstance(x, (tuple, list))
        and len(x) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in x)
    )


class OrthogonalMomentum(Stepper):
    """Muon's matrix rule: Nesterov momentum, orthogonalized by Newton--Schulz, shape-scaled.

    Per parameter W (rows = W.shape[0]; a conv kernel is viewed as rows x (in*kh*kw), a 1-D tensor
    as an n x 1 matrix as ``pytorch_optimizer.Muon`` does -- its update is the normalized momentum,
    but Muon's selector gives this rule matrices only)::

        W <- W (1 - lr wd)                                (decoupled weight decay)
        m <- m + (1-mu)(g - m);  u = g + mu (m - g) (nesterov) | m     (lerps; m starts at 0)
        W <- W - lr * s(W.shape) * NS(u as rows x rest)   (s: ``shape_scale``, NS: :func:`newton_schulz`)

    Same-shape matrices of the rule are orthogonalized as one batch. The EMA momentum (lerp) and
    Jordan's original sum momentum (m <- mu m + g) differ by the factor (1 - mu) only, which the
    Frobenius normalization removes. ``ns_dtype``: ``"param"`` iterates in the parameter's dtype,
    ``"bfloat16"`` as Jordan's GPU code (the update is cast back to the parameter's dtype).
    """

    name = "orthogonal_momentum"
    hparams = {
        "lr": nonneg(0.02, "learning rate (before the shape scale)"),
        "momentum": unit_interval(0.95, "mu: EMA coefficient of the momentum"),
        "nesterov": HParam(True, lambda x: isinstance(x, bool), "True or False", "orthogonalize g + mu (m - g)"),
        "weight_decay": nonneg(0.0, "decoupled weight decay: W <- W (1 - lr wd)"),
        "ns_steps": positive_int(5, "Newton-Schulz iterations"),
        "ns_coefficients": HParam(NS_COEFFICIENTS, _coefficients, "three finite numbers (a, b, c)", "the quintic"),
        "ns_eps": positive(1e-7, "floor of the Frobenius norm that normalizes the input"),
        "ns_dtype": choice("param", ("param", "float32", "bfloat16"), "dtype of the iteration"),
        "shape_scale": choice("sqrt_ratio", SHAPE_SCALES, "lr factor by shape: see optlab.builtins.orthogonal"),
    }

    def step(self, params, grads, states, group, *, curvature=None, rule_step=0):
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        dtype = None if group["ns_dtype"] == "param" else getattr(torch, group["ns_dtype"])
        batches: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        names = group.get("param_names") or [f"#{i}" for i in range(len(params))]
        for p, g, st, name in zip(params, grads, states, names):
            if g is None:
                continue
            if p.dim() == 0:
                raise ValueError(
                    f"orthogonal_momentum: parameter {name!r} is a scalar (shape ()), which has no matrix view; "
                    "select parameters of >= 1 dims for this rule (Muon's own: the 'hidden_matrices' selector)"
                )
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if wd != 0:
                p.mul_(1.0 - wd * lr)
            buf.lerp_(g, 1.0 - mu)
            u = g.lerp(buf, mu) if group["nesterov"] else buf
            m = u.reshape(u.size(0), -1)
            m = m.mT if m.size(0) > m.size(1) else m  # rows <= cols; a batch holds one orientation
            batches[(tuple(m.shape), m.dtype, m.device, tuple(p.shape))].append((p, m))
        for members in batches.values():
            ps = [p for p, _ in members]
            x = torch.stack([m for _, m in members])
            x = x if dtype is None else x.to(dtype)
            o = newton_schulz(x, group["ns_steps"], tuple(group["ns_coefficients"]), group["ns_eps"])
            scale = shape_scale(ps[0].shape, group["shape_scale"])
            for p, oi in zip(ps, o.unbind(0)):
                rows = p.size(0)
                oi = oi if oi.size(0) == rows else oi.mT  # undo the transpose
                p.add_(oi.reshape(p.shape).to(p.dtype), alpha=-lr * scale)


STEPPERS = (OrthogonalMomentum,)


# --- which parameters are "hidden matrices" ----------------------------------------------------
#: modules whose weight is a matrix of a linear map applied inside the network
MATRIX_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
#: lookup tables: their rows are per-token vectors, not a linear map (Muon leaves them to AdamW)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
_MHA_MATRICES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def is_hidden_matrix(name: str, p: torch.Tensor, owner: nn.Module) -> bool:
    """A weight matrix (>= 2 dims) of a linear map by module type: the ``weight`` of ``nn.Linear``,
    ``nn.Bilinear``, ``nn.Conv*d``/``nn.ConvTranspose*d``, the input projections of
    ``nn.MultiheadAttention`` (its ``out_proj`` is a Linear), and the direction ``v`` of a
    weight-normalized layer. Not: embeddings, weight-norm scales ``g``, raw ``nn.Parameter``s of
    custom modules (e.g. positional embeddings), biases and norm affines."""
    leaf = name.rsplit(".", 1)[-1]
    if p.dim() < 2 or isinstance(owner, EMBEDDING_TYPES) or is_weight_norm_scale(name, p, owner):
        return False
    if isinstance(owner, MATRIX_TYPES):
        return leaf == "weight" or leaf == "weight_v"  # weight_v: legacy weight_norm's direction
    if isinstance(owner, nn.MultiheadAttention):
        return leaf in _MHA_MATRICES
    if leaf == "original1":  # parametrizations.weight_norm: original0 = g, original1 = v
        from torch.nn.utils.parametrizations import _WeightNorm
        from torch.nn.utils.parametrize import ParametrizationList

        return isinstance(owner, ParametrizationList) and any(isinstance(m, _WeightNorm) for m in owner)
    return False


def hidden_matrices(exclude: tuple[str, ...] | list[str] | str = ()) -> Selector:
    """Hidden weight matrices (:func:`is_hidden_matrix`) outside the modules named in ``exclude``
    (qualified module names, e.g. the output head ``"fc"``; a name excludes its submodules too)."""
    excl = (exclude,) if isinstance(exclude, str) else tuple(exclude)

    def under(name: str) -> bool:
        return any(name.startswith(e + ".") for e in excl)

    desc = f"hidden_matrices(exclude={list(excl)})" if excl else "hidden_matrices"
    return by_predicate(lambda n, p, m: is_hidden_matrix(n, p, m) and not under(n), desc)


def output_head(model: nn.Module) -> str | None:
    """The qualified name of the module taken as the output head: the last module, in registration
    order (``model.named_modules()``), that holds a hidden-matrix parameter directly (its own
    ``_parameters``, so a head whose weight is tied to the embedding is still found). ``None`` if
    there is none. Models that register their head before their body need ``head=`` given."""
    head = None
    for mod_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            if p is not None and p.requires_grad and is_hidden_matrix(f"{mod_name}.{leaf}", p, module):
                head = mod_name
    return head
