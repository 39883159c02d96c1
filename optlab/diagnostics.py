"""Diagnostics: is the partial Hessian diagonal, and how good is each estimator?

For every selected tensor k this builds the dense block ``H_kk`` from vmapped
HVPs with the one-hot basis (for blocks up to ``max_block`` entries), and reports

* ``offdiag_frob_mass``: ``||H_kk - diag(H_kk)||_F^2 / ||H_kk||_F^2`` (0: diagonal);
* ``neg_diag_frac``: fraction of negative diagonal entries;
* for each estimator: relative error ``||est - diag(H_kk)|| / ||diag(H_kk)||``,
  products used (HVPs + output VJPs) and milliseconds.

A row ``(all selected)`` does the same for the joint block over all selected
tensors (cross-tensor couplings included) when it fits in ``max_block``, and
carries each estimator's cost for refreshing every selected tensor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import api
from .optim.hvp import get_engine
from .optim.selectors import Selector, named_parameters_with_owner
from .progress import track

__all__ = ["diagnose", "plot_diagnostics", "DEFAULT_ESTIMATORS"]

DEFAULT_ESTIMATORS = ("rowsum_hvp", "block_rademacher", "hutchinson", "ggn_exact_diag", "ggn_mc")


def _block_stats(block: torch.Tensor) -> dict:
    d = block.diagonal()
    total = block.pow(2).sum()
    return {
        "offdiag_frob_mass": float((total - d.pow(2).sum()) / total.clamp_min(1e-300)),
        "neg_diag_frac": float((d < 0).double().mean()),
        "diag_abs_mean": float(d.abs().mean()),
    }


def _relerr(est: torch.Tensor, ref: torch.Tensor) -> float:
    return float((est - ref).norm() / ref.norm().clamp_min(1e-30))


def diagnose(
    model: nn.Module,
    batch: tuple,
    loss_fn: Callable = F.cross_entropy,
    selector: str | Selector = "channelwise",
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    estimator_options: dict | None = None,
    max_block: int = 4096,
    engine: str = "autograd",
    seed: int = 0,
    loss: str = "cross_entropy",
    chunk_size: int | None = 64,
) -> pd.DataFrame:
    """Per-tensor report on the Hessian blocks of the parameters ``selector`` picks.

    ``batch`` is ``(x, y)``; the loss is ``loss_fn(model(x), y)`` in the model's
    current mode (train-mode BatchNorm uses batch statistics; buffers are not
    changed). ``loss`` names that loss for the Gauss-Newton estimators
    (``cross_entropy`` or ``mse``). ``estimator_options`` maps an estimator name
    to its options, e.g. ``{"hutchinson": {"probes": 8}}``. Each estimator
    refreshes all selected tensors in one call (as ``schedule="all"``); its cost
    is on the ``(all selected)`` row. ``chunk_size`` bounds vmapped batches.
    """
    x, y = batch
    infos = _selected_tensors(model, selector, max_block)
    names, params = [i.name for i in infos], [i.param for i in infos]

    def closure():
        out = model(x)
        return loss_fn(out, y), out

    eng = get_engine(engine)

    def context():
        return eng.context(model=model, closure=closure, params=params, names=names)

    ests = _estimator_settings(estimators, estimator_options, loss, chunk_size)
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    rows, diags = _exact_rows(infos, context, chunk_size)
    total = _joint_row(params, rows, diags, context, max_block, chunk_size)
    # each estimator refreshes every selected tensor at once, as with schedule="all" in training
    for name, (est, hp) in track(list(ests.items()), desc="estimators", unit="estimators"):
        ctx = context()
        t0 = time.perf_counter()
        val = est.estimate(ctx, list(range(len(params))), hp, gen if est.stochastic else None)
        total[f"{name}_ms"] = 1e3 * (time.perf_counter() - t0)
        total[f"{name}_products"] = ctx.hvp_count + ctx.vjp_count
        for k, row in enumerate(rows):
            row[f"{name}_relerr"] = _relerr(val[k].reshape(-1), diags[k])
        total[f"{name}_relerr"] = _relerr(torch.cat([val[k].reshape(-1) for k in range(len(params))]), torch.cat(diags))
    rows.append(total)
    return pd.DataFrame(rows)


def _selected_tensors(model: nn.Module, selector: str | Selector, max_block: int) -> list:
    """The trainable parameters ``selector`` picks (with their owners); none, or one whose dense block
    exceeds ``max_block`` rows, is an error."""
    sel = selector if isinstance(selector, Selector) else api.selector(selector)
    infos = [i for i in named_parameters_with_owner(model) if i.param.requires_grad and sel.matches(i)]
    if not infos:
        raise ValueError(
            f"diagnose: selector {sel.description!r} matches no trainable parameter of {type(model).__name__}"
        )
    too_big = [(i.name, i.param.numel()) for i in infos if i.param.numel() > max_block]
    if too_big:
        raise ValueError(
            f"diagnose: the dense block of {too_big[0][0]!r} has {too_big[0][1]} rows, more than "
            f"max_block={max_block}; raise max_block (memory grows as its square) or narrow "
            "the selector."
        )
    return infos


def _estimator_settings(estimators: Sequence[str], estimator_options: dict | None, loss: str, chunk_size) -> dict:
    """``{name: (estimator, hyperparameters)}``: declared defaults, the loss and chunk size where the
    estimator takes them, then ``estimator_options[name]``."""
    opts = {k: dict(v) for k, v in (estimator_options or {}).items()}
    ests = {}
    for name in estimators:
        est = api.estimator(name)
        hp = {k: s.default for k, s in est.hparams.items()}
        if "loss" in hp:
            hp["loss"] = loss
        if "chunk_size" in hp:
            hp["chunk_size"] = chunk_size
        hp.update(opts.get(name, {}))
        ests[name] = (est, hp)
    return ests


def _exact_rows(infos: list, context: Callable, chunk_size) -> tuple[list[dict], list[torch.Tensor]]:
    """Per tensor: its dense Hessian block's statistics and cost, and its exact diagonal."""
    rows, diags = [], []
    for k, info in enumerate(track(infos, desc="dense Hessian blocks", unit="tensors")):
        ctx = context()
        t0 = time.perf_counter()
        n = info.param.numel()
        block = ctx.dense_block([k], chunk_size=chunk_size)
        dense_ms = 1e3 * (time.perf_counter() - t0)
        d = block.diagonal()
        diags.append(d)
        rows.append(
            {
                "tensor": info.name,
                "module": type(info.owner).__name__,
                "size": n,
                **_block_stats(block),
                "exact_diag_products": n,
                "exact_diag_ms": dense_ms,
            }
        )
    return rows, diags


def _joint_row(params: list, rows: list[dict], diags: list, context: Callable, max_block: int, chunk_size) -> dict:
    """The ``(all selected)`` row: the joint block's statistics (cross-tensor couplings included) when it
    fits in ``max_block``, else what the per-tensor diagonals give."""
    n_all = sum(p.numel() for p in params)
    total = {
        "tensor": "(all selected)",
        "module": "-",
        "size": n_all,
        "exact_diag_products": n_all,
        "exact_diag_ms": sum(r["exact_diag_ms"] for r in rows),
    }
    if len(params) > 1 and n_all <= max_block:  # the joint block, cross-tensor couplings included
        total.update(_block_stats(context().dense_block(list(range(len(params))), chunk_size=chunk_size)))
    else:
        total.update(
            offdiag_frob_mass=float("nan"),
            neg_diag_frac=float((torch.cat(diags) < 0).double().mean()),
            diag_abs_mean=float(torch.cat(diags).abs().mean()),
        )
    return total


READING_GUIDE = """\
How to read it (table columns and the two panels of the figure):
  offdiag_frob_mass  share of the tensor's Hessian block (squared Frobenius norm) off its diagonal:
                     0 = the block is diagonal, so a diagonal curvature estimate loses nothing;
                     below ~0.1 (dotted line) a diagonal model is good; 0.3-0.9 was measured
                     on BatchNorm blocks of small CNNs (the diagonal then misses most of the
                     coupling); near 1 the diagonal says little about the block.
  neg_diag_frac      share of negative diagonal entries (a Newton step needs a rectified,
                     e.g. absolute or clipped, diagonal there).
  <estimator>_relerr ||estimate - diag(H)|| / ||diag(H)|| per tensor; lower is better:
                     below ~0.1 good, 0.1-0.5 usable with averaging (momentum on curvature),
                     ~1 (dotted line) no better than estimating zero. rowsum_hvp (H times the ones vector: row
                     sums) can exceed 1 when the off-diagonal mass is large; ggn_* estimate the
                     Gauss-Newton diagonal, so their error includes its gap to the Hessian's.
                     Stochastic estimators: one draw at their default probes; more probes lower
                     the error by about 1/sqrt(probes).
  row '(all selected)' the joint block of all selected tensors (cross-tensor couplings
                     included) when it is small enough (--max-block), and the cost of each
                     estimator (_ms, _products = Hessian- or Jacobian-vector products)."""


def plot_diagnostics(df: pd.DataFrame):
    """Two panels: off-diagonal mass per tensor, and estimator relative errors."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    ests = [c[: -len("_relerr")] for c in df.columns if c.endswith("_relerr")]
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.35 * len(df) + 1.5)), sharey=True)
    sns.barplot(data=df, y="tensor", x="offdiag_frob_mass", ax=axes[0], color="#4C72B0")
    axes[0].set_xlabel("off-diagonal Frobenius mass of the block (0 = diagonal)")
    axes[0].set_xlim(0, 1)
    axes[0].set_ylabel("")
    long = df.melt(
        id_vars=["tensor"],
        value_vars=[f"{e}_relerr" for e in ests],
        var_name="estimator",
        value_name="relative error vs exact diagonal",
    )
    long["estimator"] = long["estimator"].str.replace("_relerr", "", regex=False)
    sns.barplot(data=long, y="tensor", x="relative error vs exact diagonal", hue="estimator", ax=axes[1])
    axes[1].set_xscale("log")
    axes[1].set_ylabel("")
    axes[1].legend(title="estimator", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    axes[0].axvline(0.1, color="grey", ls=":", lw=1.2)  # READING_GUIDE: below ~0.1 a diagonal model is good
    axes[1].axvline(1.0, color="grey", ls=":", lw=1.2)  # error of estimating zero
    axes[0].set_title("Is the partial Hessian diagonal? (dotted: 0.1)")
    axes[1].set_title("Estimator error against diag(H) (dotted: 1 = zero)")
    fig.tight_layout()
    return fig
