"""Grid throughput (trials per minute) with 1 and 2 workers on the same spec, side by side.

    python benchmarks/grid_throughput.py                       # experiments/quickstart.toml, 2 rounds
    python benchmarks/grid_throughput.py --spec experiments/refresh-interval.toml --rounds 1

Each round runs the whole grid into a fresh temporary results directory with
1 worker x 2 torch threads (the whole machine), 1 worker x 1 thread, and 2 workers
x 1 thread, alternating so that machine noise hits all alike. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from optlab.grid.run import run_grid
from optlab.grid.spec import expand, load_spec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default="experiments/quickstart.toml")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--setups", nargs="*", default=["1x2", "1x1", "2x1"], help="WORKERSxTHREADS")
    args = ap.parse_args()
    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    spec = load_spec(args.spec)
    n = len(expand(spec))
    setups = [tuple(int(v) for v in x.split("x")) for x in args.setups]
    rates: dict[tuple, list[float]] = {w: [] for w in setups}
    for r in range(args.rounds):
        for w, th in setups:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                counts = run_grid(spec, workers=w, results=tmp, progress=False, threads=th)
                dt = time.perf_counter() - t0
            ok = sum(v for k, v in counts.items() if k in ("ok", "diverged"))
            rates[(w, th)].append(60 * n / dt)
            print(
                f"round {r + 1}: {w} worker(s) x {th} thread(s): {n} trials ({ok} ok/diverged) in {dt:.1f}s "
                f"= {60 * n / dt:.1f} trials/min",
                flush=True,
            )
    base = statistics.median(rates[setups[0]])
    print(f"\n{spec.name}: {n} trials, {os.cpu_count()} cores")
    for w, th in setups:
        m = statistics.median(rates[(w, th)])
        print(
            f"  {w} worker(s) x {th} thread(s): {m:.1f} trials/min  ({m / base:.2f}x of {setups[0][0]} worker x "
            f"{setups[0][1]} threads)"
        )


if __name__ == "__main__":
    main()
