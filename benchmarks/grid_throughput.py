"""Grid throughput (trials per minute) with 1 and 2 workers on the same spec, side by side.

    python benchmarks/grid_throughput.py                       # experiments/quickstart.toml, 2 rounds
    python benchmarks/grid_throughput.py --spec experiments/refresh-interval.toml --rounds 1

Each round runs the whole grid into a fresh temporary results directory, first
with 1 worker (all cores as torch threads), then with 2 workers (cores split),
alternating so that machine noise hits both alike. Prints the medians and the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from optlab.grid import expand, load_spec, run_grid


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default="experiments/quickstart.toml")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    args = ap.parse_args()
    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    spec = load_spec(args.spec)
    n = len(expand(spec))
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    for r in range(args.rounds):
        for w in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                counts = run_grid(spec, workers=w, results=tmp, progress=False)
                dt = time.perf_counter() - t0
            ok = sum(v for k, v in counts.items() if k in ("ok", "diverged"))
            rates[w].append(60 * n / dt)
            print(f"round {r + 1}: {w} worker(s): {n} trials ({ok} ok/diverged) in {dt:.1f}s = {60 * n / dt:.1f} trials/min",
                  flush=True)
    base = statistics.median(rates[args.workers[0]])
    print(f"\n{spec.name}: {n} trials, {os.cpu_count()} cores")
    for w in args.workers:
        m = statistics.median(rates[w])
        print(f"  {w} worker(s): {m:.1f} trials/min  ({m / base:.2f}x of {args.workers[0]} worker)")


if __name__ == "__main__":
    main()
