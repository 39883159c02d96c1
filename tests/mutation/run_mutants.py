"""Hand-made mutation check: does the default suite catch a silent arithmetic slip where it would
corrupt research results?

Each mutant replaces one exact snippet of optlab's source (found wherever the module lives now, so
the list survives file moves) by a plausible slip -- a wrong sign, a dropped bias correction, an
off-by-one, a swapped comparison -- and runs the tests that guard that module (GROUP_TESTS: files,
node ids or ``-k`` selections, with ``-x``) on a throw-away copy of the working tree. A mutant is
*killed* when those tests fail (the line names the first failing test); *survived* otherwise;
*stale* when its snippet no longer occurs exactly once (update the list). A mutant that cannot
change any result carries the reason in ``equivalent=``: it is run and listed but not counted.

    .venv/bin/python tests/mutation/run_mutants.py                 # all mutants, kill rate per group
    .venv/bin/python tests/mutation/run_mutants.py --only stats    # one group
    .venv/bin/python tests/mutation/run_mutants.py --mutant 92     # one mutant (index from --list)
    .venv/bin/python tests/mutation/run_mutants.py --exclude tests/test_mutation_kills.py  # without a file
    .venv/bin/python tests/mutation/run_mutants.py --list          # the mutants, nothing run

Not part of CI (132 mutants, about 30 min on 2 loaded cores); the closing note of issue 19 quotes
its figures. Exit status: 0 when every group kills at least ``--goal`` (default 90 %) of its
meaningful mutants.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    group: str
    old: str
    new: str
    what: str
    #: why the mutant cannot change any result (then it is run and listed, but not counted)
    equivalent: str = ""


# The tests that guard each group, cheapest and most pointed first. An entry is a pytest selection:
# a file, a node id ``file::test`` / ``file::test[param]``, or either followed by ``-k EXPR``. Entries
# whose file does not exist are ignored (the list survives test moves); consecutive entries without
# ``-k`` share one pytest run, each ``-k`` entry gets its own (pytest keeps only the last ``-k``).
# A node id or ``-k`` that selects nothing makes the unmutated run fail, so a typo cannot pass as a kill.
KIT = "tests/test_plugins.py::test_builtin_steppers_pass_the_conformance_kit_with_their_formula"
GROUP_TESTS = {
    "steppers": [
        KIT,
        "tests/test_stepper_formulas.py",
        "tests/test_core.py::test_sgd_ph_with_empty_selector_is_torch_sgd",
        "tests/test_core.py::test_sgd_preset_dampening_matches_torch",
        "tests/test_relatives.py -k '(adam or lion or muon or newton_schulz or shape or orthogonal or soap) and not ddp and not resume and not grid and not cli and not explain and not scheduler'",
    ],
    "diag_newton": [
        f"{KIT}[diag_newton]",
        "tests/test_stepper_formulas.py -k diag_newton",
        "tests/test_mutation_kills.py -k diag_newton",
        "tests/test_core.py::test_diag_newton_rectify_modes_and_bias_correction",
        "tests/test_core.py::test_sgd_ph_reference_reproduces_reference_semantics",
        "tests/test_core.py::test_state_dict_resume_is_bit_for_bit",
    ],
    "estimators": [
        "tests/test_estimator_formulas.py",
        "tests/test_estimators.py",
        "tests/test_plugins.py::test_builtin_estimators_pass_the_conformance_kit",
        "tests/test_core.py::test_rowsum_hvp_equals_dense_block_rowsums",
        "tests/test_mutation_kills.py -k estimators",
    ],
    "stats": ["tests/test_stats.py", "tests/test_mutation_kills.py -k stats"],
    "selection": [
        "tests/test_selection.py",
        "tests/test_protocol.py::test_selection_reads_validation_only",
        "tests/test_analysis.py::test_runner_and_report_select_through_one_function",
    ],
    "store": [  # whole files: a narrower list did not finish its unmutated run in 400 s on the loaded machine
        "tests/test_store_validate.py",
        "tests/test_reliability.py",
        "tests/test_reliability_fuzz.py",
        "tests/test_runner.py",
    ],
    "time_to_target": ["tests/test_time_to_target.py", "tests/test_mutation_kills.py -k time_to_target"],
    "edges": [
        "tests/test_selection.py",
        "tests/test_mutation_kills.py -k edges",
        "tests/test_protocol.py -k edge",
    ],
}


def _selections(tree: Path, group: str, exclude: tuple[str, ...] = ()) -> list[list[str]]:
    """The pytest argument lists of ``group``'s tests that exist in ``tree`` (see GROUP_TESTS), less
    the entries of the files in ``exclude``."""
    runs: list[list[str]] = []
    plain: list[str] = []
    for entry in GROUP_TESTS[group]:
        args = shlex.split(entry)
        file = args[0].split("::")[0]
        if file in exclude or not (tree / file).exists():
            continue
        if len(args) == 1:
            plain.append(args[0])
            continue
        if plain:
            runs.append(plain)
            plain = []
        runs.append(args)
    if plain:
        runs.append(plain)
    return runs


M = Mutant
MUTANTS: list[Mutant] = [
    # -- sgd (torch.optim.SGD's rule) ------------------------------------------------------------
    M("steppers", "d = g if wd == 0 else g.add(p, alpha=wd)", "d = g", "sgd: weight decay dropped"),
    M(
        "steppers",
        "buf.mul_(mom).add_(d, alpha=1 - damp)",
        "buf.mul_(mom).add_(d, alpha=1 + damp)",
        "sgd: dampening sign",
    ),
    M("steppers", "buf.mul_(mom).add_(d, alpha=1 - damp)", "buf.add_(d, alpha=1 - damp)", "sgd: momentum not applied"),
    M("steppers", "d = d.add(buf, alpha=mom) if nesterov else buf", "d = buf", "sgd: nesterov ignored"),
    M(
        "steppers",
        "            p.add_(d, alpha=-lr)\n\n\ndef rectify",
        "            p.add_(d, alpha=lr)\n\n\ndef rectify",
        "sgd: ascent",
    ),
    # -- rectify ---------------------------------------------------------------------------------
    M("diag_newton", "return x.clamp_min(floor)", "return x.clamp_min(0)", "rectify clip: floor ignored"),
    M(
        "diag_newton",
        "return x.clamp_min(0).add(damping)",
        "return x.abs().add(damping)",
        "rectify damping: abs not max(x,0)",
    ),
    M("diag_newton", "return x.clamp_min(0).add(damping)", "return x.clamp_min(0)", "rectify damping: damping dropped"),
    # -- diag_newton -----------------------------------------------------------------------------
    M("diag_newton", "D.mul_(beta).add_(h, alpha=1 - beta)", "D.mul_(beta).add_(h)", "EMA weight of the estimate"),
    M(
        "diag_newton",
        "D.mul_(beta).add_(h, alpha=1 - beta)",
        "D.mul_(1 - beta).add_(h, alpha=beta)",
        "EMA coefficients swapped",
    ),
    M("diag_newton", "buf.mul_(mom).add_(g)\n", "buf.mul_(mom).add_(g, alpha=1 - mom)\n", "momentum dampened"),
    M(
        "diag_newton",
        "u = buf.mul(tau).div_(rect(D.div(1 - beta**n)).add(eps))",
        "u = buf.mul(tau).div_(rect(D).add(eps))",
        "refreshes: bias correction dropped",
    ),
    M(
        "diag_newton",
        "u = buf.mul(tau).div_(rect(D.div(1 - beta**n)).add(eps))",
        "u = buf.mul(tau).div_(rect(D.div(1 - beta ** (n + 1))).add(eps))",
        "refreshes: off-by-one in n",
    ),
    M(
        "diag_newton",
        "u = buf.mul(tau).div_(rect(D.div(1 - beta**n)).add(eps))",
        "u = buf.mul(tau).div_(rect(D.div(1 - beta**n))).add(eps)",
        "eps added to the quotient",
    ),
    M(
        "diag_newton",
        "                    u = buf.clone()",
        "                    u = buf.mul(tau)",
        "no-refresh-yet step scaled by tau",
    ),
    M(
        "diag_newton",
        "u = buf.mul(tau * (1 - beta ** (rule_step // period + 1)))",
        "u = buf.mul(tau * (1 - beta ** (rule_step // period)))",
        "reference bias correction off by one",
    ),
    M(
        "diag_newton",
        "u = buf.mul(tau).div_(rect(D).add(eps))",
        "u = buf.div_(rect(D).add(eps))",
        "bias_correction=none: tau dropped",
    ),
    M(
        "diag_newton",
        "            if wd != 0:\n                u.add_(p, alpha=wd)",
        "            if wd != 0:\n                u.add_(p, alpha=-wd)",
        "decoupled weight decay sign",
    ),
    M(
        "diag_newton",
        'st["hessian_refreshes"] = st.get("hessian_refreshes", 0) + 1',
        'st["hessian_refreshes"] = 1',
        "refresh counter stuck at 1",
    ),
    # -- adam_hessian ----------------------------------------------------------------------------
    M(
        "steppers",
        'st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)\n            if h is not None:\n                st["exp_hessian_sq"]',
        'st["exp_avg"].mul_(b1).add_(g)\n            if h is not None:\n                st["exp_hessian_sq"]',
        "adahessian: first moment weight",
    ),
    M(
        "steppers",
        'st["exp_hessian_sq"].mul_(b2).addcmul_(h, h, value=1 - b2)',
        'st["exp_hessian_sq"].mul_(b2).add_(h.abs(), alpha=1 - b2)',
        "adahessian: |D| instead of D^2",
    ),
    M(
        "steppers",
        'denom = (st["exp_hessian_sq"] / (1 - b2**n)).pow(k / 2).add_(eps)',
        'denom = st["exp_hessian_sq"].pow(k / 2).add_(eps)',
        "adahessian: v bias correction dropped",
    ),
    M(
        "steppers",
        'denom = (st["exp_hessian_sq"] / (1 - b2**n)).pow(k / 2).add_(eps)',
        'denom = (st["exp_hessian_sq"] / (1 - b2**n)).pow(k).add_(eps)',
        "adahessian: Hessian power k instead of k/2",
    ),
    M(
        "steppers",
        'p.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - b1 ** st["steps"]))',
        'p.addcdiv_(st["exp_avg"], denom, value=-lr)',
        "adahessian: m bias correction dropped",
    ),
    # -- clipped_newton (Sophia) -----------------------------------------------------------------
    M(
        "steppers",
        'st["hessian"].mul_(b2).add_(h, alpha=1 - b2)',
        'st["hessian"].mul_(b2).add_(h, alpha=b2)',
        "sophia: EMA weight",
    ),
    M(
        "steppers",
        'ratio = (st["exp_avg"].abs() / (rho * st["hessian"]).clamp_min(eps)).clamp_max(1)',
        'ratio = (st["exp_avg"].abs() / (rho * st["hessian"]).clamp_min(eps))',
        "sophia: no clipping",
    ),
    M(
        "steppers",
        'ratio = (st["exp_avg"].abs() / (rho * st["hessian"]).clamp_min(eps)).clamp_max(1)',
        'ratio = (st["exp_avg"].abs() / (st["hessian"]).clamp_min(eps)).clamp_max(1)',
        "sophia: rho dropped",
    ),
    # -- adam (torch.optim.AdamW / Adam single-tensor path) ----------------------------------------
    M("steppers", "exp_avg.lerp_(g, 1 - b1)", "exp_avg.lerp_(g, b1)", "adam: first moment weight b1 for 1-b1"),
    M(
        "steppers",
        "exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)",
        "exp_avg_sq.mul_(b2).addcmul_(g, g, value=b2)",
        "adam: second moment weight",
    ),
    M("steppers", "step_size = lr / (1 - b1**step)", "step_size = lr", "adam: m bias correction dropped"),
    M(
        "steppers",
        "bias_correction2_sqrt = (1 - b2**step) ** 0.5",
        "bias_correction2_sqrt = 1 - b2**step",
        "adam: sqrt of the v bias correction dropped",
    ),
    M(
        "steppers",
        "denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)",
        "denom = exp_avg_sq.add(eps).sqrt() / bias_correction2_sqrt",
        "adam: eps inside the square root",
    ),
    M(
        "steppers",
        "                if decoupled:\n                    p.mul_(1 - lr * wd)",
        "                if not decoupled:\n                    p.mul_(1 - lr * wd)",
        "adam: decoupled and L2 decay swapped",
    ),
    M(
        "steppers",
        'torch.maximum(st["max_exp_avg_sq"], exp_avg_sq, out=st["max_exp_avg_sq"])',
        'torch.minimum(st["max_exp_avg_sq"], exp_avg_sq, out=st["max_exp_avg_sq"])',
        "adam: amsgrad keeps the running min",
    ),
    # -- lion --------------------------------------------------------------------------------------
    M(
        "steppers",
        'update = st["exp_avg"].lerp(g, 1.0 - b1).sign_()',
        'update = st["exp_avg"].lerp(g, 1.0 - b2).sign_()',
        "lion: update interpolates with b2",
    ),
    M(
        "steppers",
        'update = st["exp_avg"].lerp(g, 1.0 - b1).sign_()\n            st["exp_avg"].lerp_(g, 1.0 - b2)',
        'st["exp_avg"].lerp_(g, 1.0 - b2)\n            update = st["exp_avg"].lerp(g, 1.0 - b1).sign_()',
        "lion: momentum updated before the update is formed",
    ),
    M(
        "steppers",
        "p.mul_(1.0 - wd * lr)\n            update",
        "p.mul_(1.0 - wd)\n            update",
        "lion: decay not scaled by lr",
    ),
    # -- orthogonal_momentum (Muon) ----------------------------------------------------------------
    M("steppers", 'u = g.lerp(buf, mu) if group["nesterov"] else buf', "u = buf", "muon: nesterov ignored"),
    M(
        "steppers",
        "x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp_min(eps)",
        "x = x / torch.linalg.matrix_norm(x, ord=2, keepdim=True).clamp_min(eps)",
        "muon: spectral instead of Frobenius normalization",
    ),
    M(
        "steppers",
        "poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)",
        "poly = torch.baddbmm(gram, gram, gram, beta=c, alpha=b)",
        "muon: Newton-Schulz coefficients b and c swapped",
    ),
    M(
        "steppers",
        "return math.pow(max(1.0, rows / cols), 0.5)",
        "return math.pow(rows / cols, 0.5)",
        "muon: sqrt_ratio scale without max(1, .)",
    ),
    M(
        "steppers",
        "return 0.2 * math.sqrt(max(rows, cols))",
        "return 0.2 * math.sqrt(min(rows, cols))",
        "muon: moonlight scale uses min(rows, cols)",
    ),
    M(
        "steppers",
        "p.mul_(1.0 - wd * lr)\n            buf.lerp_",
        "p.mul_(1.0 - wd)\n            buf.lerp_",
        "muon: decay not scaled by lr",
    ),
    # -- estimators ------------------------------------------------------------------------------
    M("estimators", 'out[k] = r.abs() if group["absolute"] else r', "out[k] = r", "rowsum_hvp: absolute ignored"),
    M(
        "estimators",
        ".diagonal().reshape(ctx.params[k].shape)",
        ".sum(1).reshape(ctx.params[k].shape)",
        "exact_diag: row sums instead of diagonal",
    ),
    M(
        "estimators",
        "return {k: hv[k] * s[j] for j, k in enumerate(indices)}",
        "return {k: hv[k] for j, k in enumerate(indices)}",
        "block_rademacher: sign not undone",
    ),
    M(
        "estimators",
        "out = {k: (zs[k] * hz[k]).mean(0) for k in indices}",
        "out = {k: (zs[k] * hz[k]).sum(0) for k in indices}",
        "hutchinson: sum instead of mean over probes",
    ),
    M(
        "estimators",
        "out = {k: (zs[k] * hz[k]).mean(0) for k in indices}",
        "out = {k: hz[k].mean(0) for k in indices}",
        "hutchinson: probe not multiplied",
    ),
    M(
        "estimators",
        "S = (torch.diag_embed(sp) - sp.unsqueeze(-1) * p.unsqueeze(-2)) / n**0.5",
        "S = (torch.diag_embed(sp) - sp.unsqueeze(-1) * p.unsqueeze(-2)) / n",
        "ggn: 1/N instead of 1/sqrt(N)",
    ),
    M(
        "estimators",
        "return {k: jt[k].pow(2).sum(0) for k in indices}",
        "return {k: jt[k].abs().sum(0) for k in indices}",
        "ggn_exact_diag: |J^T s| not squared",
    ),
    M("estimators", "scale = float(n)", "scale = 1.0", "ggn_mc: missing factor N"),
    M("estimators", "us = -2.0 * eps / m", "us = -1.0 * eps / m", "ggn_mc mse: factor 2"),
    M(
        "estimators",
        "return t.mean(dim=tuple(range(2, t.dim())), keepdim=True)",
        "return t.sum(dim=tuple(range(2, t.dim())), keepdim=True)",
        "spatial_average: sum",
    ),
    # -- analysis/stats --------------------------------------------------------------------------
    M("stats", "return min(1.0, 2 * 0.5**n)", "return min(1.0, 0.5**n)", "sign test two-sided halved"),
    M(
        "stats",
        'return 0.5**n if (diff > 0) == (alternative == "greater") else 1.0',
        "return 0.5**n",
        "sign test one-sided ignores direction",
    ),
    M("stats", "nz = d[d != 0]", "nz = d", "wilcoxon: zeros kept"),
    M(
        "stats",
        'return max(_t_pvalue(d, -margin, "greater"), _t_pvalue(d, margin, "less"))',
        'return min(_t_pvalue(d, -margin, "greater"), _t_pvalue(d, margin, "less"))',
        "TOST: min instead of max",
    ),
    M(
        "stats",
        'return max(_t_pvalue(d, -margin, "greater"), _t_pvalue(d, margin, "less"))',
        'return max(_t_pvalue(d, margin, "greater"), _t_pvalue(d, -margin, "less"))',
        "TOST: margins swapped",
    ),
    M(
        "stats",
        "tcrit = stats.t.ppf(1 - alpha / 2, df)",
        "tcrit = stats.t.ppf(1 - alpha, df)",
        "MDE: one-sided critical value",
    ),
    M(
        "stats",
        "adj = np.minimum(1.0, (m - np.arange(m)) * p[order])",
        "adj = np.minimum(1.0, m * p[order])",
        "Holm became Bonferroni",
    ),
    M("stats", "out[order] = np.maximum.accumulate(adj)", "out[order] = adj", "Holm: monotonicity dropped"),
    M(
        "stats",
        "if p_adjusted < alpha and (lo > 0 or hi < 0):",
        "if p_adjusted < alpha:",
        "verdict: CI not required to exclude 0",
    ),
    M(
        "stats",
        'return "better" if (mean_diff > 0) == higher_is_better else "worse"',
        'return "better" if mean_diff > 0 else "worse"',
        "verdict: direction ignores higher_is_better",
    ),
    M(
        "stats",
        "sd = float(d.std(ddof=1)) if n > 1 else math.nan",
        "sd = float(d.std(ddof=0)) if n > 1 else math.nan",
        "paired: population SD",
    ),
    M(
        "stats",
        "w = frac[None, 1:] ** ns[:, None] - frac[None, :-1] ** ns[:, None]",
        "w = frac[None, 1:] ** ns[:, None]",
        "expected_max: weights not differenced",
    ),
    # -- selection (optlab.grid.protocol.select, the one rule of runner and report) -------------
    M("selection", 'sign = 1.0 if mode == "max" else -1.0', "sign = 1.0", "select: val_loss maximised"),
    M("selection", "best = max(s[1] for s in pool)", "best = min(s[1] for s in pool)", "select: worst chosen"),
    M(
        "selection",
        "pool = [s for s in scored if s[0]] or scored",
        "pool = scored",
        "select: incomplete configs eligible",
    ),
    M(
        "selection",
        "tied = [s for s in pool if best - s[1] <= tol]",
        "tied = [s for s in pool if best - s[1] <= tol + 1]",
        "select: tie tolerance widened",
    ),
    M(
        "selection",
        "eligible = len(vals) == len(obs) and len({o.seed for o in obs}) == full",
        "eligible = len(vals) == len(obs)",
        "select: fewer seeds eligible",
    ),
    # -- store.validate_record -------------------------------------------------------------------
    M(
        "store",
        'if not isinstance(m.get("epoch"), int) or m["epoch"] != i + 1:',
        'if not isinstance(m.get("epoch"), int):',
        "validate: epoch order unchecked",
    ),
    M(
        "store",
        "if isinstance(epochs, int) and len(metrics) != epochs:",
        "if isinstance(epochs, int) and len(metrics) > epochs:",
        "validate: truncated ok record accepted",
    ),
    M("store", 'if k != "lrs" and not _is_num(v):', "if False:", "validate: metric values unchecked"),
    M(
        "store",
        'if trial_id is not None and rec.get("id") not in (None, trial_id):',
        "if False:",
        "validate: id/file mismatch accepted",
    ),
    # -- analysis/time_to_target (AlgoPerf time to target, censoring, k of n, profiles) ------------
    M(
        "time_to_target",
        'e.value >= target if mode == "max" else e.value <= target',
        'e.value > target if mode == "max" else e.value <= target',
        "reaching needs strictly more than the target",
    ),
    M(
        "time_to_target",
        'e.value >= target if mode == "max" else e.value <= target',
        'e.value >= target if mode == "max" else e.value >= target',
        "mode=min reached when above the target",
    ),
    M(
        "time_to_target",
        "evs = sorted(evaluations, key=lambda e: (e.step if _finite(e.step) else INF, e.epoch))",
        "evs = list(evaluations)",
        "evaluations not sorted by step",
    ),
    M(
        "time_to_target",
        "float(e.step) + hvp_cost * e.hvp_count",
        "float(e.step) + e.hvp_count",
        "cost ignores hvp_cost",
    ),
    M(
        "time_to_target",
        "return TrialTime(False, INF, INF, INF, INF, len(evs), horizon)",
        "return TrialTime(False, horizon, INF, INF, INF, len(evs), horizon)",
        "censored step imputed as the horizon",
    ),
    M(
        "time_to_target",
        'hvps += int(m.get("hvp_count") or 0)',
        'hvps = int(m.get("hvp_count") or 0)',
        "per-epoch HVPs not accumulated",
    ),
    M(
        "time_to_target",
        'worst = -INF if mode == "max" else INF',
        'worst = INF if mode == "max" else -INF',
        "diverged reference seeds count as best",
    ),
    M("time_to_target", "return n // 2 + 1", "return (n + 1) // 2", "k of n: half instead of a strict majority"),
    M("time_to_target", "return ts[k - 1], sum(", "return ts[0], sum(", "workload time: fastest seed, k ignored"),
    M(
        "time_to_target",
        "            diffs.append(-INF)",
        "            diffs.append(INF)",
        "paired test: only-a-reached counted as a slower",
    ),
    M(
        "time_to_target",
        "return [sum(1 for t in times if _finite(t) and t <= g) / n for g in grid]",
        "return [sum(1 for t in times if _finite(t) and t <= g) / max(1, sum(map(_finite, times))) for g in grid]",
        "reach curve drops unreached seeds from the denominator",
    ),
    M(
        "time_to_target",
        "best = min((float(t) for t in per.values() if _finite(t) and t >= 0), default=INF)",
        "best = max((float(t) for t in per.values() if _finite(t) and t >= 0), default=INF)",
        "profile ratio against the slowest arm",
    ),
    M(
        "time_to_target",
        "ratios[w].get(a, INF) <= t) / nw",
        "ratios[w].get(a, INF) < t) / nw",
        "profile: ratio equal to tau not counted",
    ),
    M(
        "time_to_target",
        "sum((tau_max - max(1.0, r)) / (tau_max - 1) for w",
        "sum((tau_max - max(1.0, r)) / tau_max for w",
        "score normalised by tau_max instead of tau_max - 1",
    ),
    M(
        "time_to_target",
        "reached=n_reached >= kk,",
        "reached=n_reached > 0,",
        "arm summary: one seed reaching is enough",
    ),
    # -- grid/protocol edge detection and the extension proposal -----------------------------------
    M(
        "edges",
        'side = "low" if x == vals[0] else "high" if x == vals[-1] else None',
        'side = "high" if x == vals[0] else "low" if x == vals[-1] else None',
        "grid edge sides swapped",
    ),
    M(
        "edges",
        'side = "low" if pos < EDGE_FRACTION else "high" if pos > 1 - EDGE_FRACTION else None',
        'side = "low" if pos < EDGE_FRACTION else "high" if pos > EDGE_FRACTION else None',
        "range: high edge is anything past the first tenth",
    ),
    M(
        "edges",
        "return (math.log(x) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))",
        "return (x - self.low) / (self.high - self.low)",
        "range: log axis measured on a linear scale",
    ),
    M(
        "edges",
        "vals = sorted({v for v in dom if _numeric(v)} | set(vals))",
        "vals = sorted(set(vals))",
        "choice: edges from the values tried, not the choices",
    ),
    M(
        "edges",
        "if len(vals) < 2:\n            continue",
        "if len(vals) < 1:\n            continue",
        "a fixed value counts as tuned",
    ),
    M("edges", "r = cur / nxt", "r = nxt / cur", "geometric proposal steps back inside"),
    M("edges", "new = cur + (cur - nxt)", "new = cur - (cur - nxt)", "linear proposal steps back inside"),
    M("edges", "if v[0] >= 0 and new < 0 or", "if v[0] > 0 and new < 0 or", "negative proposal below a 0 edge"),
    M(
        "edges",
        'return "geometric" if v[1] / v[0] >= 3 * (1 - 1e-9) else "linear"',
        'return "geometric" if v[1] / v[0] >= 2 else "linear"',
        "two values: ratio 2 already geometric",
    ),
    M(
        "edges",
        'return "geometric" if cv(lg) <= cv(lin) else "linear"',
        'return "geometric" if cv(lg) >= cv(lin) else "linear"',
        "progression test inverted",
    ),
    M("edges", "nxt, cur = cur, float(new)", "cur = float(new)", "multi-step proposal keeps the first ratio's base"),
    M(
        "edges",
        'new = cur + (1 if side == "high" else -1)',
        "new = cur + 1",
        "integer proposal: low side steps up",
        equivalent="unreachable: for distinct integers x < y the proposal beyond either edge never rounds back to it",
    ),
    # -- second wave (session 3): subtler slips, one per branch the first wave left alone ------------
    M(
        "steppers",
        'buf = st["momentum_buffer"] = torch.clone(d).detach()',
        'buf = st["momentum_buffer"] = torch.zeros_like(d)',
        "sgd: first momentum buffer zero instead of d",
    ),
    M(
        "steppers",
        "p.mul_(1 - lr * wd)\n            ratio",
        "p.mul_(1 - wd)\n            ratio",
        "sophia: decay not scaled by lr",
    ),
    M(
        "steppers",
        "p.mul_(1 - lr * wd)\n            p.addcdiv_",
        "p.mul_(1 - wd)\n            p.addcdiv_",
        "adahessian: decay not scaled by lr",
    ),
    M("steppers", "lerp(g, 1.0 - b1).sign_()", "lerp(g, 1.0 - b1)", "lion: sign dropped"),
    M(
        "steppers",
        "oi = oi if oi.size(0) == rows else oi.mT",
        "oi = oi",
        "muon: tall matrix's update not transposed back",
    ),
    M(
        "steppers",
        "m = m.mT if m.size(0) > m.size(1) else m",
        "m = m",
        "muon: tall matrices batched untransposed",
        equivalent="newton_schulz transposes a tall matrix itself and the step transposes back by shape: same ops",
    ),
    M(
        "steppers",
        "step_size *= math.sqrt(1.0 - math.pow(b2, s)) / (1.0 - math.pow(b1, s))",
        "step_size /= 1.0 - math.pow(b1, s)",
        "soap: v bias correction dropped",
    ),
    M(
        "steppers",
        'st["exp_avg_sq"].lerp_(g_rot.square(), weight=1.0 - b2)',
        'st["exp_avg_sq"].lerp_(g.square(), weight=1.0 - b2)',
        "soap: second moment of the unrotated gradient",
    ),
    M("steppers", "v = v.index_select(i, order)", "v = v", "soap: v not permuted with its basis"),
    M(
        "steppers",
        'if s > 0 and s % group["precondition_frequency"] == 0:',
        'if s > 0 and (s + 1) % group["precondition_frequency"] == 0:',
        "soap: eigenbasis refresh one step early",
    ),
    M(
        "diag_newton",
        'if group["rectify_at"] == "refresh":\n                    h = rectify',
        'if group["rectify_at"] == "use":\n                    h = rectify',
        "rectify_at refresh/use swapped at the EMA",
    ),
    M(
        "diag_newton",
        'period = group["bias_period"] or (schedule.period if schedule is not None else None) or len(params)',
        'period = group["bias_period"] or len(params)',
        "reference bias correction ignores the schedule's period",
    ),
    M(
        "diag_newton",
        'if mode == "abs":\n        return x.abs()',
        'if mode == "abs":\n        return x',
        "rectify abs: no abs",
    ),
    M(
        "diag_newton",
        'buf = st["momentum_buffer"] = torch.clone(g).detach()',
        'buf = st["momentum_buffer"] = torch.zeros_like(g)',
        "first momentum buffer zero instead of g",
    ),
    M("estimators", ".mul_(2).sub_(1)", ".mul_(2).sub_(0)", "rademacher signs are {0, 2}"),
    M(
        "estimators",
        "zs[k] = torch.randn((n, *p.shape), generator=generator",
        "zs[k] = torch.rand((n, *p.shape), generator=generator",
        "hutchinson gaussian: uniform probes",
    ),
    M(
        "estimators",
        "(2.0 / m) ** 0.5 * torch.eye",
        "(1.0 / m) ** 0.5 * torch.eye",
        "ggn mse: Hessian 1/m instead of 2/m",
    ),
    M(
        "estimators",
        "torch.multinomial(p.repeat(s, 1), 1",
        "torch.multinomial(torch.ones_like(p).repeat(s, 1), 1",
        "ggn_mc: labels uniform, not from the model",
    ),
    M("estimators", "scale = m / 2.0", "scale = float(m)", "ggn_mc mse: scale m instead of m/2"),
    M(
        "estimators",
        "torch.ones_like(ctx.params[k]) * s[j] for j, k",
        "torch.ones_like(ctx.params[k]) * s[0] for j, k",
        "block_rademacher: one sign for every tensor",
    ),
    M(
        "estimators",
        "if t.dim() < 3:\n        return t",
        "if t.dim() < 4:\n        return t",
        "spatial_average skips conv1d",
    ),
    M(
        "estimators",
        "sp.unsqueeze(-1) * p.unsqueeze(-2)",
        "sp.unsqueeze(-2) * p.unsqueeze(-1)",
        "ggn cross-entropy: outer product transposed",
    ),
    M("stats", "nc = es * math.sqrt(n)", "nc = es * math.sqrt(df)", "MDE: noncentrality with n - 1"),
    M(
        "stats",
        "lo, hi = bootstrap_ci(d, 1 - alpha, n_resamples",
        "lo, hi = bootstrap_ci(d, 1 - alpha / 2, n_resamples",
        "paired: CI at 1 - alpha/2",
    ),
    M(
        "stats",
        "if len(nz) == 0:\n        return 1.0",
        "if len(nz) == 0:\n        return 0.0",
        "wilcoxon: all-zero differences p = 0",
    ),
    M(
        "stats",
        "return _sign_test_equal(float(d[0]), popmean, len(d), alternative)",
        "return 1.0",
        "t-test on constant differences: p = 1",
    ),
    M("stats", "m = len(idx)", "m = len(p)", "Holm: NaN entries counted in m"),
    M(
        "stats",
        "frac = np.arange(big_n + 1) / big_n",
        "frac = np.arange(big_n + 1) / (big_n + 1)",
        "expected_max: ECDF off by one",
    ),
    M(
        "time_to_target",
        "med = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2",
        "med = vals[n // 2]",
        "reference target: upper median for even n",
    ),
    M(
        "time_to_target",
        "horizon = max((float(e.step) for e in evs if _finite(e.step)), default=math.nan)",
        "horizon = min((float(e.step) for e in evs if _finite(e.step)), default=math.nan)",
        "horizon: first evaluation, not last",
    ),
    M(
        "time_to_target",
        "int(math.copysign(1, pos - neg))",
        "int(math.copysign(1, neg - pos))",
        "paired test: direction inverted",
    ),
    M(
        "time_to_target",
        '(r["arm"] if r["direction"] < 0 else r["reference"])',
        '(r["reference"] if r["direction"] < 0 else r["arm"])',
        "paired_against: faster side swapped",
    ),
    M(
        "time_to_target",
        'holm([r["p_value"] for r in out])',
        '[r["p_value"] for r in out]',
        "paired_against: p-values not Holm-adjusted",
    ),
    M("edges", "e.axis: e.next_values[0]})", "e.axis: e.next_values[-1]})", "extension jumps to the farthest proposal"),
    M(
        "edges",
        'nxt = float(v[-2] if side == "high" else v[1])',
        'nxt = float(v[-2] if side == "high" else v[-1])',
        "low-side proposal uses the top values' step",
    ),
]


def _copy_tree(dst: Path) -> None:
    """The working tree (tracked and untracked-but-not-ignored files) into ``dst``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = ROOT / f.decode()
        if src.is_file():
            (dst / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f.decode())


def _locate(tree: Path, m: Mutant) -> Path | None:
    hits = [p for p in (tree / "optlab").rglob("*.py") if p.read_text().count(m.old) == 1]
    total = sum(p.read_text().count(m.old) for p in (tree / "optlab").rglob("*.py"))
    return hits[0] if len(hits) == 1 and total == 1 else None


def _run_tests(tree: Path, runs: list[list[str]], timeout: float) -> tuple[int, str]:
    """``(0, "")`` when every run passes (the mutant survived); else the exit status of the first run
    that failed (124: it ran past ``timeout``, which counts as detected) and the first test pytest
    reports as failed. Stops at the first failure."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OPTLAB_NO_PROGRESS": "1"}
    base = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-m", "not slow", "-p", "no:cacheprovider"]
    deadline = time.time() + timeout
    for args in runs:
        try:
            r = subprocess.run([*base, *args], cwd=tree, env=env, capture_output=True, timeout=deadline - time.time())
        except (subprocess.TimeoutExpired, ValueError):
            return 124, "timeout"  # a hang counts as detected
        if r.returncode != 0:
            failed = [
                ln.split()[1]
                for ln in r.stdout.decode(errors="replace").splitlines()
                if ln.startswith(("FAILED ", "ERROR "))
            ]
            return r.returncode, failed[0] if failed else " ".join(args)
    return 0, ""


def _pick(mutants: list[Mutant], which: list[str] | None) -> list[Mutant]:
    """``--mutant`` filters: an index into MUTANTS, or a substring of a mutant's ``what``."""
    if not which:
        return mutants
    out = []
    for i, m in enumerate(MUTANTS):
        if m in mutants and any((w.isdigit() and int(w) == i) or (not w.isdigit() and w in m.what) for w in which):
            out.append(m)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(GROUP_TESTS), help="run only these groups")
    ap.add_argument(
        "--mutant", action="append", help="run only this mutant: its index in --list, or a substring of its name"
    )
    ap.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="FILE",
        help="leave this test file out of every group (to measure what it adds)",
    )
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--goal", type=float, default=0.9, help="required kill rate per group (default 0.9)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutant's test runs")
    args = ap.parse_args(argv)
    chosen = _pick([m for m in MUTANTS if not args.only or m.group in args.only], args.mutant)
    if args.list:
        for m in chosen:
            eq = f"  [equivalent: {m.equivalent}]" if m.equivalent else ""
            print(f"{MUTANTS.index(m):3d} {m.group:14s} {m.what}{eq}")
        return 0
    if not chosen:
        print("error: no mutant matches --only/--mutant")
        return 2
    results: dict[str, list[tuple[Mutant, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="optlab-mutants-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        groups = sorted({m.group for m in chosen})
        runs = {g: _selections(tree, g, tuple(args.exclude)) for g in groups}
        for g in groups:  # the unmutated tree must pass, or every mutant would look killed
            rc, _ = _run_tests(tree, runs[g], args.timeout)
            if rc != 0:
                why = "selects no test" if rc == 5 else f"fail (exit status {rc})"
                print(f"error: the unmutated tests of group {g!r} {why}: {runs[g]}; fix them first")
                return 2
        for i, m in enumerate(chosen):
            path = _locate(tree, m)
            if path is None:
                outcome = "stale"
                print(f"[{i + 1}/{len(chosen)}] stale    {m.group:14s} {m.what} (snippet not found exactly once)")
            else:
                original = path.read_text()
                path.write_text(original.replace(m.old, m.new))
                t0 = time.time()
                try:
                    rc, by = _run_tests(tree, runs[m.group], args.timeout)
                finally:
                    path.write_text(original)
                outcome = "survived" if rc == 0 else "killed"
                eq = " [judged equivalent]" if m.equivalent else ""
                print(
                    f"[{i + 1}/{len(chosen)}] {outcome:8s} {m.group:14s} {m.what}{eq} ({time.time() - t0:.0f} s)"
                    + (f"  by {by}" if by else ""),
                    flush=True,
                )
            results.setdefault(m.group, []).append((m, outcome))
    ok = True
    print("\ngroup           killed / meaningful  rate   survivors (equivalent mutants are not counted)")
    for g, rs in sorted(results.items()):
        counted = [(m, o) for m, o in rs if o != "stale" and not m.equivalent]
        killed = sum(o == "killed" for _, o in counted)
        rate = killed / len(counted) if counted else float("nan")
        ok &= bool(counted) and rate >= args.goal
        survivors = "; ".join(m.what for m, o in counted if o == "survived") or "-"
        notes = []
        if stale := sum(o == "stale" for _, o in rs):
            notes.append(f"{stale} stale")
        if eq := sum(bool(m.equivalent) for m, o in rs if o != "stale"):
            notes.append(f"{eq} equivalent")
        print(
            f"{g:14s} {killed:4d} / {len(counted):<4d}          {rate:5.0%}  {survivors}"
            + (f"  ({', '.join(notes)})" if notes else "")
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
