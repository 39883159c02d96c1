"""Built-in curvature estimators. Each is named for what it computes."""

from __future__ import annotations

import torch

from optlab.optim.hparams import HParam, choice, optional, positive_int
from optlab.optim.rules import CurvatureEstimator

BOOL = lambda default, doc="": HParam(default, lambda x: isinstance(x, bool), "True or False", doc)  # noqa: E731


class RowsumHVP(CurvatureEstimator):
    """``|H_kk 1|`` per tensor k: the Hessian block of the tensor with itself times ones.

    This is the paper's "precise partial Hessian". It equals diag(H_kk) only when
    the block is diagonal, which it is not in general for BatchNorm parameters
    (use ``optlab diagnose`` to measure). One HVP per refreshed tensor, each
    restricted to the tensor's own block. Reference: arXiv:2403.02681, Sec. 3.
    """

    name = "rowsum_hvp"
    target = "hessian_rowsum"  # H_kk 1: row sums of each tensor's diagonal block
    hparams = {"absolute": BOOL(True, "return |H_kk 1| (the paper) instead of the signed row sums")}

    def estimate(self, ctx, indices, group, generator):
        out = {}
        for k in indices:
            r = ctx.hvp({k: torch.ones_like(ctx.params[k])})[k]
            out[k] = r.abs() if group["absolute"] else r
        return out


CHUNK = lambda: optional(positive_int(None, "probes per vmapped batch (bounds memory); None: all at once"))  # noqa: E731


class ExactDiag(CurvatureEstimator):
    """The true Hessian diagonal ``diag(H_kk)``: HVPs with the one-hot basis of each tensor.

    ``numel`` HVPs per tensor, vmapped in chunks of ``chunk_size``; each restricted
    to the tensor's own block (the diagonal needs nothing else). Exact, and
    expensive: for diagnostics and small models. Cost is in ``ctx.hvp_count``.
    """

    name = "exact_diag"
    target = "hessian_diag"
    hparams = {"chunk_size": CHUNK()}

    def estimate(self, ctx, indices, group, generator):
        return {
            k: ctx.dense_block([k], chunk_size=group["chunk_size"]).diagonal().reshape(ctx.params[k].shape).clone()
            for k in indices
        }


def _signs(shape, generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype).mul_(2).sub_(1)


class BlockRademacher(CurvatureEstimator):
    """Unbiased ``H_kk 1`` for every tensor at once, from one HVP.

    v_k = s_k 1 with independent signs s_k; ``s_k (H v)_k = H_kk 1 + sum_{j!=k} s_k s_j H_kj 1``
    and the cross terms have mean zero. Signed (average it, rectify at use).
    """

    name = "block_rademacher"
    stochastic = True
    target = "hessian_rowsum"  # H_kk 1: row sums of each tensor's diagonal block
    hparams = {}

    def estimate(self, ctx, indices, group, generator):
        if not indices:
            return {}
        ref = ctx.params[indices[0]]
        s = _signs((len(indices),), generator, ref)
        hv = ctx.hvp({k: torch.ones_like(ctx.params[k]) * s[j] for j, k in enumerate(indices)})
        return {k: hv[k] * s[j] for j, k in enumerate(indices)}


def spatial_average(t: torch.Tensor) -> torch.Tensor:
    """AdaHessian's spatial averaging: mean over the kernel dims of a conv weight (dim >= 3)."""
    if t.dim() < 3:
        return t
    return t.mean(dim=tuple(range(2, t.dim())), keepdim=True).expand_as(t).clone()


class Hutchinson(CurvatureEstimator):
    """Hutchinson's diagonal estimator ``E[z * (H z)] = diag(H)``.

    ``probes`` Rademacher (or Gaussian) vectors over all refreshed tensors,
    evaluated by one vmapped HVP; the estimate is their mean. Unbiased; variance
    falls as 1/probes. ``spatial_average`` averages over conv kernel dims (as
    AdaHessian). References: Hutchinson (1990); Bekas et al. (2007); Yao et al.,
    AdaHessian (2021).
    """

    name = "hutchinson"
    stochastic = True
    target = "hessian_diag"
    hparams = {
        "probes": positive_int(1, "number of probe vectors per refresh"),
        "distribution": choice("rademacher", ("rademacher", "gaussian")),
        "spatial_average": BOOL(False, "average over conv kernel dims (AdaHessian)"),
        "chunk_size": CHUNK(),
    }

    def estimate(self, ctx, indices, group, generator):
        if not indices:
            return {}
        n = group["probes"]
        zs = {}
        for k in indices:
            p = ctx.params[k]
            if group["distribution"] == "rademacher":
                zs[k] = _signs((n, *p.shape), generator, p)
            else:
                zs[k] = torch.randn((n, *p.shape), generator=generator, dtype=p.dtype, device=p.device)
        hz = ctx.hvp_batched(zs, chunk_size=group["chunk_size"])
        out = {k: (zs[k] * hz[k]).mean(0) for k in indices}
        if group["spatial_average"]:
            out = {k: spatial_average(v) for k, v in out.items()}
        return out


LOSS = lambda: choice(
    "cross_entropy",
    ("cross_entropy", "mse"),  # noqa: E731
    "the loss the closure computes on the outputs (mean reduction)",
)


def _output_sqrt_rows(outputs: torch.Tensor, loss: str) -> torch.Tensor:
    """Rows r of S with ``S^T S`` = Hessian of the loss w.r.t. the outputs (mean reduction).

    Returns ``(R, *outputs.shape)``. Cross-entropy, per sample n with p = softmax(f_n):
    ``(diag(p) - p p^T)/N = S_n^T S_n`` with ``S_n = (diag(sqrt p) - sqrt(p) p^T)/sqrt(N)``.
    MSE (mean over all N*C entries of (f-y)^2): ``2/(N C) I``.
    """
    if loss == "mse":
        m = outputs.numel()
        return (2.0 / m) ** 0.5 * torch.eye(m, dtype=outputs.dtype, device=outputs.device).reshape(m, *outputs.shape)
    if outputs.dim() != 2:
        raise ValueError(f"loss='cross_entropy' needs outputs of shape (N, C); got {tuple(outputs.shape)}")
    n, c = outputs.shape
    p = outputs.softmax(-1)
    sp = p.sqrt()
    S = (torch.diag_embed(sp) - sp.unsqueeze(-1) * p.unsqueeze(-2)) / n**0.5  # (N, C, C), rows r
    rows = torch.zeros(n, c, n, c, dtype=outputs.dtype, device=outputs.device)
    idx = torch.arange(n)
    rows[idx, :, idx, :] = S
    return rows.reshape(n * c, n, c)


class GGNExactDiag(CurvatureEstimator):
    """Exact diagonal of the generalized Gauss-Newton ``J^T H_out J``.

    With ``H_out = S^T S`` (one row of S per output entry), ``diag(GGN) = sum_r
    (J^T s_r)^2``: one vmapped output-VJP per row. Needs the closure to return
    ``(loss, outputs)``. Cost: N*C VJPs. Reference: Dangel et al., BackPACK
    ``DiagGGNExact`` (2020); Schraudolph (2002).
    """

    name = "ggn_exact_diag"
    target = "ggn_diag"
    requires = {"closure": "loss_outputs"}
    hparams = {"loss": LOSS(), "chunk_size": CHUNK()}

    def estimate(self, ctx, indices, group, generator):
        if not indices:
            return {}
        rows = _output_sqrt_rows(ctx.outputs, group["loss"])
        jt = ctx.output_vjp_batched(rows, chunk_size=group["chunk_size"])
        return {k: jt[k].pow(2).sum(0) for k in indices}


class GGNMonteCarlo(CurvatureEstimator):
    """Monte-Carlo GGN diagonal from labels sampled from the model (Gauss-Newton-Bartlett).

    Cross-entropy: y_hat ~ softmax(f); g_hat = J^T (p - onehot(y_hat))/N is the
    gradient of the loss at the sampled labels, and ``N * E[g_hat^2] = diag(GGN)``.
    MSE: y_hat = f + N(0, I); ``(N C / 2) E[g_hat^2] = diag(GGN)``. Averaged over
    ``samples``. Unbiased. Reference: Liu et al., Sophia (2023), GNB estimator;
    Dangel et al., BackPACK ``DiagGGNMC``.
    """

    name = "ggn_mc"
    stochastic = True
    target = "ggn_diag"
    requires = {"closure": "loss_outputs"}
    hparams = {"loss": LOSS(), "samples": positive_int(1, "sampled label sets per refresh"), "chunk_size": CHUNK()}

    def estimate(self, ctx, indices, group, generator):
        if not indices:
            return {}
        f = ctx.outputs
        s = group["samples"]
        if group["loss"] == "cross_entropy":
            if f.dim() != 2:
                raise ValueError(f"loss='cross_entropy' needs outputs of shape (N, C); got {tuple(f.shape)}")
            n = f.shape[0]
            p = f.softmax(-1)
            yhat = torch.multinomial(p.repeat(s, 1), 1, replacement=True, generator=generator).reshape(s, n)
            us = (p.unsqueeze(0) - torch.nn.functional.one_hot(yhat, f.shape[1]).to(p.dtype)) / n
            scale = float(n)
        else:
            m = f.numel()
            eps = torch.randn((s, *f.shape), generator=generator, dtype=f.dtype, device=f.device)
            us = -2.0 * eps / m
            scale = m / 2.0
        jt = ctx.output_vjp_batched(us, chunk_size=group["chunk_size"])
        return {k: jt[k].pow(2).mean(0) * scale for k in indices}


ESTIMATORS = (RowsumHVP, ExactDiag, BlockRademacher, Hutchinson, GGNExactDiag, GGNMonteCarlo)
