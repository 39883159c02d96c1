"""Store and analysis at scale: 2,000 synthetic trial files, timed ``grid status``, ``analysis.load``, ``report``.

    python benchmarks/store_scale.py                 # 2000 trials, 20 epochs each, in a temp dir
    python benchmarks/store_scale.py --trials 500 --keep results/scale

The spec is a real grid (2 optimizers x lr axis x 10 seeds on digits/mlp-bn) whose
trial ids are computed with ``optlab.grid.expand``, so ``grid status`` matches every
file. Each file is a realistic record (20 epochs of every metric, environment, config)
of about the size a real trial writes. Timed, each in a fresh subprocess (cold imports
included, as a user sees it) and in-process (warm, the function alone):

* ``optlab grid status SPEC``
* ``optlab.analysis.load(RESULTS)``: from the JSON files, building the Parquet cache, and from it
* ``optlab report RESULTS`` (CLI; plots and tables)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
name = "scale"
seeds = {seeds}
[run]
epochs = {epochs}
batch_size = 128
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd-ph"
lr = {lrs}
[[optimizer]]
name = "sgd"
lr = {lrs}
"""


def synthetic_record(trial, epochs: int, env: dict) -> dict:
    """A trial record shaped like ``run_trial``'s: per-epoch metrics, timings, environment."""
    import random

    rng = random.Random(trial.id)
    lr = trial.config["hparams"]["lr"]
    metrics, wall = [], 0.0
    for e in range(epochs):
        t = 0.05 + 0.01 * rng.random()
        wall += t
        acc = 1 - 0.9 * math.exp(-(e + 1) * lr * 3) - 0.02 * rng.random()
        metrics.append(
            {
                "epoch": e + 1,
                "train_loss": -math.log(max(acc, 1e-3)) * 1.1,
                "train_acc": acc + 0.01,
                "test_loss": -math.log(max(acc, 1e-3)),
                "test_acc": acc,
                "lr": lr,
                "time_forward_backward": 0.6 * t,
                "time_curvature": 0.2 * t,
                "time_update": 0.1 * t,
                "time_epoch": t,
                "wall_time": wall,
                "hvp_count": 12 * (e + 1),
                "vjp_count": 0,
            }
        )
    now = time.time()
    return {
        "config": trial.config,
        "status": "ok",
        "error": None,
        "metrics": metrics,
        "resumed_from_epoch": None,
        "wall_time": wall,
        "id": trial.id,
        "started": now - wall,
        "finished": now,
        "env": env,
    }


def timed(label: str, cmd: list[str] | None = None, fn=None) -> float:
    t0 = time.perf_counter()
    if cmd:
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPTLAB_NO_PROGRESS": "1"})
        if out.returncode != 0:
            raise SystemExit(f"{label} failed:\n{out.stderr[-2000:]}")
    else:
        fn()
    dt = time.perf_counter() - t0
    print(f"  {label:<44} {dt:7.2f} s")
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=2000, help="rounded to a multiple of 20 (2 optimizers x 10 seeds)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--keep", default=None, help="write the results here instead of a temporary directory")
    ap.add_argument("--no-report", action="store_true", help="skip timing `optlab report`")
    args = ap.parse_args()
    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    from optlab.grid.spec import expand, load_spec
    from optlab.grid.trial import environment
    from optlab.store import Store

    n_lr = max(1, args.trials // 20)
    lrs = [round(10 ** (-3 + 3 * i / max(1, n_lr - 1)), 6) for i in range(n_lr)]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="optlab-scale-"))
    spec_path = root.parent / f"{root.name}.toml"
    spec_text = SPEC.format(seeds=list(range(10)), epochs=args.epochs, lrs=json.dumps(lrs))
    root.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec_text)

    t0 = time.perf_counter()
    trials = expand(load_spec(spec_path))
    t_expand = time.perf_counter() - t0
    store = Store(root).init(spec_text)
    env = environment()
    t0 = time.perf_counter()
    for t in trials:
        store.write(t.id, synthetic_record(t, args.epochs, env))
    t_write = time.perf_counter() - t0
    files = list(store.trials.glob("*.json"))
    size = sum(p.stat().st_size for p in files)
    print(
        f"{len(files)} trial files, {args.epochs} epochs each, {size / len(files) / 1024:.1f} KiB per file "
        f"({size / 2**20:.1f} MiB) in {root}"
    )
    print(f"  {'expand the spec (in-process)':<44} {t_expand:7.2f} s")
    print(f"  {'write (atomic, fsync per file)':<44} {t_write:7.2f} s")

    py = sys.executable
    timed(
        "`optlab grid status` (subprocess)",
        [py, "-m", "optlab.cli", "grid", "status", str(spec_path), "--results", str(root)],
    )
    from optlab.grid.run import grid_status

    timed("grid_status() (in-process)", fn=lambda: grid_status(spec_path, results=root))
    import shutil

    from optlab.analysis import load

    shutil.rmtree(root / ".cache", ignore_errors=True)
    timed("analysis.load(cache=False) (in-process)", fn=lambda: load(root, cache=False))
    timed("analysis.load() building the Parquet cache", fn=lambda: load(root))
    timed("analysis.load() from the cache (in-process)", fn=lambda: load(root))
    timed(
        "`python -c 'analysis.load'` cached (subprocess)",
        [py, "-c", f"from optlab.analysis import load; e, t = load({str(root)!r}); print(len(e), len(t))"],
    )
    timed(
        "`python -c 'analysis.load'` uncached (subprocess)",
        [py, "-c", f"from optlab.analysis import load; e, t = load({str(root)!r}, cache=False)"],
    )
    if not args.no_report:
        timed("`optlab report` (subprocess)", [py, "-m", "optlab.cli", "report", str(root), "-o", str(root / "report")])
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        spec_path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
