"""Per-trial overhead of each executor on the same tiny grid, in the same run.

    python benchmarks/executor_overhead.py                      # local and ray, 2 slots, 16 trials, 2 rounds
    python benchmarks/executor_overhead.py --executors local ray submitit --trials 8

Every round runs the grid into a fresh results directory with each executor in turn
(2 parallel slots x 1 torch thread each). A trial's own time is ``finished - started``
from its record (inside ``run_trial``: training plus writing). Reported per executor:

* wall: the driver's wall time for the whole grid, start-up (pool / Ray instance) included;
* startup: time until the first trial *started* (pool fork, Ray instance, worker imports);
* overhead per trial = (wall x slots - sum of trial times) / trials: what the backend adds to
  each trial (scheduling, serialisation, process start, idle slots at the tail);
* after startup: the same from the first trial's start on (the per-trial cost without the
  one-off start of the pool / Ray instance).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

SPEC = """
name = "overhead"
seeds = {seeds}
[run]
epochs = 1
batch_size = 256
model_options = {{width = 8}}
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd"
lr = [0.02, 0.05, 0.1, 0.2]
"""

OPTIONS = {
    "local": dict(workers=2),
    "ray": dict(num_cpus=2, cpus_per_trial=1),
    "submitit": dict(cluster="local", poll_s=0.1),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--executors", nargs="*", default=["local", "ray"])
    ap.add_argument("--trials", type=int, default=16, help="rounded to a multiple of 4")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ["OPTLAB_NO_PROGRESS"] = "1"
    from optlab.grid.executors import make_executor
    from optlab.grid.spec import expand, load_spec
    from optlab.store import Store

    spec = load_spec(SPEC.format(seeds=list(range(max(1, args.trials // 4)))), is_text=True)
    trials = expand(spec)
    slots = 2
    rows: dict[str, list[dict]] = {e: [] for e in args.executors}
    for r in range(args.rounds):
        for name in args.executors:
            with tempfile.TemporaryDirectory() as tmp:
                store = Store(tmp).init(spec.text)
                ex = make_executor(name, **OPTIONS[name])
                t0 = time.time()
                out = list(ex.run(str(store.root), trials, threads=1))
                wall = time.time() - t0
                recs = [json.loads(p.read_text()) for p in Path(tmp, "trials").glob("*.json")]
            assert len(recs) == len(trials) and all(s == "ok" for _, s in out), out
            busy = sum(x["finished"] - x["started"] for x in recs)
            first = min(x["started"] for x in recs) - t0
            row = dict(
                wall=wall,
                startup=first,
                busy=busy,
                per_trial=(wall * slots - busy) / len(trials),
                steady=((wall - first) * slots - busy) / len(trials),
                trial=busy / len(trials),
            )
            rows[name].append(row)
            print(
                f"round {r + 1} {name:<9} {len(trials)} trials: wall {wall:6.2f}s  startup {first:5.2f}s  "
                f"mean trial {row['trial']:5.2f}s  overhead/trial {row['per_trial']:5.2f}s "
                f"(after startup {row['steady']:5.2f}s)"
            )
    print(f"\nmedians over {args.rounds} round(s), {len(trials)} trials, {slots} slots x 1 thread:")
    for name, rs in rows.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        print(
            f"  {name:<9} wall {med['wall']:6.2f}s  startup {med['startup']:5.2f}s  mean trial {med['trial']:5.2f}s  "
            f"overhead per trial {med['per_trial']:5.2f}s (after startup {med['steady']:5.2f}s)"
        )
    print(f"load average during the run: {os.getloadavg()}")


if __name__ == "__main__":
    main()
