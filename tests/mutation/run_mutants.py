"""Hand-made mutation check: does the default suite catch a silent arithmetic slip where it would
corrupt research results?

Each mutant replaces one exact snippet of optlab's source (found wherever the module lives now, so
the list survives file moves) by a plausible slip -- a wrong sign, a dropped bias correction, an
off-by-one, a swapped comparison -- and runs the tests that guard that module on a throw-away copy
of the working tree. A mutant is *killed* when those tests fail; *survived* otherwise; *stale* when
its snippet no longer occurs exactly once (update the list).

    .venv/bin/python tests/mutation/run_mutants.py                 # all mutants, kill rate per module
    .venv/bin/python tests/mutation/run_mutants.py --only stats    # one module group
    .venv/bin/python tests/mutation/run_mutants.py --list          # the mutants, nothing run

Not part of CI (about 15-30 min on 2 cores); the closing note of issue 19 quotes its figures.
Exit status: 0 when every group kills at least ``--goal`` (default 90 %) of its mutants.
"""

from __future__ import annotations

import argparse
import os
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


# the tests that guard each group (files that do not exist are ignored)
GROUP_TESTS = {
    "steppers": [
        "tests/test_core.py",
        "tests/test_stepper_formulas.py",
        "tests/test_plugin_contract.py",
        "tests/test_relatives.py",
        "tests/test_schedulers.py",
    ],
    "diag_newton": ["tests/test_core.py", "tests/test_stepper_formulas.py", "tests/test_plugin_contract.py"],
    "estimators": ["tests/test_estimators.py", "tests/test_estimator_formulas.py", "tests/test_core.py"],
    "stats": ["tests/test_stats.py"],
    "selection": ["tests/test_selection.py", "tests/test_protocol.py", "tests/test_analysis.py"],
    "store": [
        "tests/test_store_validate.py",
        "tests/test_reliability.py",
        "tests/test_reliability_fuzz.py",
        "tests/test_runner.py",
    ],
}

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


def _run_tests(tree: Path, tests: list[str], timeout: float) -> bool:
    """True when the tests pass (the mutant survived)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OPTLAB_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests]
    try:
        r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False  # a hang counts as detected
    return r.returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(GROUP_TESTS), help="run only these groups")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--goal", type=float, default=0.9, help="required kill rate per group (default 0.9)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutant's test run")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.group in args.only]
    if args.list:
        for i, m in enumerate(chosen):
            print(f"{i:3d} {m.group:12s} {m.what}")
        return 0
    results: dict[str, list[tuple[Mutant, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="optlab-mutants-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        groups = sorted({m.group for m in chosen})
        for g in groups:  # the unmutated tree must pass, or every mutant would look killed
            tests = [t for t in GROUP_TESTS[g] if (tree / t).exists()]
            if not _run_tests(tree, tests, args.timeout):
                print(f"error: the unmutated tests of group {g!r} fail ({' '.join(tests)}); fix them first")
                return 2
        for i, m in enumerate(chosen):
            path = _locate(tree, m)
            if path is None:
                outcome = "stale"
            else:
                original = path.read_text()
                path.write_text(original.replace(m.old, m.new))
                t0 = time.time()
                try:
                    tests = [t for t in GROUP_TESTS[m.group] if (tree / t).exists()]
                    outcome = "survived" if _run_tests(tree, tests, args.timeout) else "killed"
                finally:
                    path.write_text(original)
                print(
                    f"[{i + 1}/{len(chosen)}] {outcome:8s} {m.group:12s} {m.what} ({time.time() - t0:.0f} s)",
                    flush=True,
                )
            if outcome == "stale":
                print(f"[{i + 1}/{len(chosen)}] stale    {m.group:12s} {m.what} (snippet not found exactly once)")
            results.setdefault(m.group, []).append((m, outcome))
    ok = True
    print("\ngroup         killed / meaningful  rate   survivors")
    for g, rs in sorted(results.items()):
        counted = [(m, o) for m, o in rs if o != "stale"]
        killed = sum(o == "killed" for _, o in counted)
        rate = killed / len(counted) if counted else float("nan")
        ok &= bool(counted) and rate >= args.goal
        survivors = "; ".join(m.what for m, o in counted if o == "survived") or "-"
        stale = sum(o == "stale" for _, o in rs)
        print(
            f"{g:12s} {killed:4d} / {len(counted):<4d}          {rate:5.0%}  {survivors}"
            + (f"  ({stale} stale)" if stale else "")
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
