"""Step cost of SGD-PH configurations as ratios to torch.optim.SGD, measured side by side.

The relatives assembled from parts (``adamw``, ``lion``, ``muon``, ``soap``, ``sgd-ph-muon``, ``adamw-ph``)
are also given as ratios to ``torch.optim.AdamW`` timed in the same run.

    python benchmarks/step_cost.py                 # ResNet-18 (width 64), batch 32 and 128
    python benchmarks/step_cost.py --quick         # width 16, fewer repeats: a 1-minute smoke run

Time: one process, warm-up, then ``--repeats`` rounds; each round times every
configuration once (interleaved, so machine noise hits all alike). A
configuration with a refresh interval k is timed on refresh steps and on plain
steps separately; its per-step average is ``(t_refresh + (k-1) t_plain) / k``.
Round-robin configurations are timed over successive round-robin positions.
Memory: every configuration runs in a fresh subprocess; after one warm-up step
we reset the RSS high-water mark (``/proc/self/clear_refs``) and report the
peak RSS during the measured steps minus the RSS before them (the memory a step
needs on top of model, data and optimizer state).

Also: ``exact_diag`` on a 64-channel BatchNorm block, vmapped HVPs vs a Python
loop of single HVPs, and the two HVP engines on the same estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

import optlab
from optlab.training.tasks import make_model

warnings.filterwarnings("ignore")

# name -> (optimizer, hparams, engine)   -- "mirror" is the reference code's structure, hand-written below
CONFIGS = {
    "sgd": ("torch", {}, None),
    "mirror-of-reference-code": ("mirror", {}, None),
    "sgd-ph-reference": ("sgd-ph-reference", {}, "autograd"),
    "sgd-ph rowsum_hvp round_robin every=1 (paper schedule)": (
        "sgd-ph",
        dict(estimator="rowsum_hvp", schedule="round_robin", every=1),
        "autograd",
    ),
    "sgd-ph block_rademacher every=1": (
        "sgd-ph",
        dict(estimator="block_rademacher", schedule="all", every=1),
        "autograd",
    ),
    "sgd-ph block_rademacher every=1 [func]": (
        "sgd-ph",
        dict(estimator="block_rademacher", schedule="all", every=1),
        "func",
    ),
    "sgd-ph block_rademacher every=10": (
        "sgd-ph",
        dict(estimator="block_rademacher", schedule="all", every=10),
        "autograd",
    ),
    "sgd-ph default (block_rademacher every=50)": ("sgd-ph", {}, "autograd"),
    "sgd-ph hutchinson every=10": ("sgd-ph", dict(estimator="hutchinson", schedule="all", every=10), "autograd"),
    "sgd-ph ggn_mc every=10": ("sgd-ph", dict(estimator="ggn_mc", schedule="all", every=10), "autograd"),
    # the relatives (issue 24), against torch.optim.AdamW timed in the same rounds
    "torch.optim.AdamW": ("torch-adamw", {}, None),
    "adamw (adam stepper)": ("adamw", dict(lr=1e-3), "autograd"),
    "lion": ("lion", dict(lr=1e-4), "autograd"),
    "muon (batched Newton-Schulz)": ("muon", dict(lr=0.02), "autograd"),
    "soap (precondition_frequency=10)": ("soap", dict(lr=3e-3), "autograd"),
    "sgd-ph-muon default (every=50)": ("sgd-ph-muon", dict(lr=0.02), "autograd"),
    "adamw-ph default (every=50)": ("adamw-ph", dict(lr=1e-3), "autograd"),
    # M restricted HVPs per refresh (one per tensor): expensive, opt in with --configs
    "sgd-ph rowsum_hvp all every=10": ("sgd-ph", dict(estimator="rowsum_hvp", schedule="all", every=10), "autograd"),
}
DEFAULT_CONFIGS = [c for c in CONFIGS if "rowsum_hvp all" not in c]
MEMORY = [
    "sgd",
    "mirror-of-reference-code",
    "sgd-ph-reference",
    "sgd-ph rowsum_hvp round_robin every=1 (paper schedule)",
    "sgd-ph block_rademacher every=1",
    "sgd-ph block_rademacher every=1 [func]",
    "sgd-ph plain step",
    "torch.optim.AdamW",
    "muon (batched Newton-Schulz)",
]


def build(width: int, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    model = make_model("resnet18", {"input_shape": (3, 32, 32), "num_classes": 10}, width=width)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    return model, x, y


class Mirror:
    """The reference implementation's structure: ``backward(create_graph=True)`` on every
    step, then an HVP with v = ones on one 1-D tensor (zeros elsewhere) back-propagated
    through *every* parameter's gradient; update as in ``sgd-ph-reference``."""

    def __init__(self, model, lr=0.1, beta=0.9, eps=1e-4, tau=1e-3):
        self.model, self.lr, self.beta, self.eps, self.tau = model, lr, beta, eps, tau
        self.params = list(model.parameters())
        self.one_d = [p for p in self.params if p.dim() == 1]
        self.buf, self.D, self.s = {}, {p: torch.zeros_like(p) for p in self.one_d}, 0

    def step(self, closure):
        self.s += 1
        for p in self.params:
            p.grad = None
        loss = closure()
        loss.backward(create_graph=True)
        k = self.one_d[(self.s - 1) % len(self.one_d)]
        vs = [torch.ones_like(p) if p is k else torch.zeros_like(p) for p in self.params]
        hv = torch.autograd.grad([p.grad for p in self.params], self.params, vs)
        with torch.no_grad():
            hk = hv[[i for i, p in enumerate(self.params) if p is k][0]]
            self.D[k].mul_(self.beta).add_((1 - self.beta) * hk.abs())
            M = len(self.one_d)
            for p in self.params:
                g = p.grad.detach()
                b = self.buf.get(p)
                b = self.buf[p] = g.clone() if b is None else b.mul_(self.beta).add_(g)
                if p.dim() == 1 and p is not self.one_d[-1]:
                    u = self.tau * (1 - self.beta ** (self.s // M + 1)) * b / (self.D[p] + self.eps)
                else:
                    u = b
                p.sub_(self.lr * u)
        for p in self.params:
            p.grad = None  # break the grad -> graph cycle
        return loss.detach()


def make_stepper(name, model, x, y):
    kind, hp, engine = CONFIGS[name] if name in CONFIGS else ("sgd-ph", {}, "autograd")
    if kind in ("torch", "torch-adamw"):
        opt = (
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            if kind == "torch"
            else torch.optim.AdamW(model.parameters(), lr=1e-3)
        )

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step, None
    if kind == "mirror":
        m = Mirror(model)
        return (lambda: m.step(lambda: F.cross_entropy(model(x), y))), None
    opt = optlab.optimizer(kind, model, engine=engine, **{"lr": 0.1, **hp})

    def closure():
        out = model(x)
        return F.cross_entropy(out, y), out

    return (lambda: opt.step(closure)), opt


def _every(name: str) -> int:
    kind, hp, _ = CONFIGS[name]
    if kind not in ("sgd-ph", "sgd-ph-muon", "adamw-ph"):
        return 1
    return hp.get("every", optlab.preset_hparams(kind)["every"])


def _force(opt, refresh: bool):
    """Position every curvature rule so the next step is (or is not) a refresh step."""
    for g in opt.param_groups:
        if opt.rules[g["rule"]].curvature is None:
            continue
        st = opt.rule_state(g["rule"])
        every = g.get("every", 1)
        st["step"] = (st["step"] // every) * every + (0 if refresh else 1)


def time_steps(width, batch, repeats, names):
    model, x, y = build(width, batch)
    steppers = {}
    for n in names:
        m = make_model("resnet18", {"input_shape": (3, 32, 32), "num_classes": 10}, width=width)
        m.load_state_dict(model.state_dict())
        steppers[n] = make_stepper(n, m, x, y)
    times = {n: {"refresh": [], "plain": []} for n in names}
    for step, _opt in steppers.values():  # warm-up
        step()
    for _ in range(repeats):
        for n, (step, opt) in steppers.items():
            every = _every(n)
            kinds = ["refresh", "plain"] if (opt is not None and opt.needs_closure and every > 1) else ["refresh"]
            for kind in kinds:
                if opt is not None and opt.needs_closure and every > 1:
                    _force(opt, kind == "refresh")
                t0 = time.perf_counter()
                step()
                times[n][kind].append(time.perf_counter() - t0)
    out = {}
    for n in names:
        every = _every(n)
        tr = statistics.median(times[n]["refresh"])
        tp = statistics.median(times[n]["plain"]) if times[n]["plain"] else tr
        out[n] = {"refresh_ms": 1e3 * tr, "plain_ms": 1e3 * tp, "avg_ms": 1e3 * (tr + (every - 1) * tp) / every}
    return out


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def memory_child(name, width, batch, steps):
    model, x, y = build(width, batch)
    cfg_name = name if name != "sgd-ph plain step" else "sgd-ph default (block_rademacher every=50)"
    step, opt = make_stepper(cfg_name, model, x, y)
    step()  # warm-up (lazy state, allocator pools); for "plain step" this is the refresh step
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # reset the RSS high-water mark (VmHWM)
        f.write("5")
    base = _status_kb("VmRSS")
    for _ in range(steps):
        if name == "sgd-ph plain step":
            _force(opt, refresh=False)
        step()
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_growth_mb": max(peak - base, 0) / 1024}))


def measure_memory(names, width, batch, steps):
    out = {}
    for n in names:
        # a fixed mmap threshold makes glibc hand every large tensor back to the OS when freed,
        # so RSS follows live tensor memory instead of the allocator's cached heap
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                n,
                "--width",
                str(width),
                "--batch",
                str(batch),
                "--steps",
                str(steps),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        try:
            out[n] = json.loads(res.stdout.strip().splitlines()[-1])["peak_growth_mb"]
        except (IndexError, ValueError):
            out[n] = float("nan")
            print(f"memory run of {n!r} failed: {res.stderr[-500:]}", file=sys.stderr)
    return out


def exact_diag_vmap_vs_loop(repeats=3):
    """exact_diag on the 64-channel last BatchNorm weight of a ResNet-20: vmapped vs loop, both engines."""
    from optlab.optim.hvp import get_engine

    torch.manual_seed(0)
    model = make_model("resnet20", {"input_shape": (3, 32, 32), "num_classes": 10})
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    name = [n for n, p in model.named_parameters() if n.endswith("bn2.weight")][-1]
    p = dict(model.named_parameters())[name]
    assert p.numel() == 64
    est = optlab.estimator("exact_diag")
    out = {}
    for engine in ("autograd", "func"):

        def ctx():
            return get_engine(engine).context(
                model=model, closure=lambda: F.cross_entropy(model(x), y), params=[p], names=[name]
            )

        tv, tl = [], []
        for _ in range(repeats):
            c = ctx()
            t0 = time.perf_counter()
            dv = est.estimate(c, [0], {"chunk_size": None}, None)[0]
            tv.append(time.perf_counter() - t0)
            c = ctx()
            t0 = time.perf_counter()
            eye = torch.eye(64)
            dl = torch.stack([c.hvp({0: eye[j]})[0][j] for j in range(64)])
            tl.append(time.perf_counter() - t0)
        assert torch.allclose(dv, dl, rtol=1e-4, atol=1e-6)
        out[engine] = (1e3 * statistics.median(tv), 1e3 * statistics.median(tl))
    return out


UPDATE_ONLY = ("adamw", "lion", "muon", "soap")


def update_only(width: int, repeats: int) -> dict[str, float]:
    """Median ms of ``opt.step()`` alone (gradients computed once, kept in ``p.grad``; no forward or
    backward) for ``torch.optim.AdamW`` and the relatives' presets, interleaved per round: the
    optimizer's own arithmetic (Muon: the batched Newton-Schulz; SOAP: projections, QR every 10th)."""
    model, x, y = build(width, 32)
    opts = {}
    for n in ("torch.optim.AdamW", *UPDATE_ONLY):
        m = make_model("resnet18", {"input_shape": (3, 32, 32), "num_classes": 10}, width=width)
        m.load_state_dict(model.state_dict())
        F.cross_entropy(m(x), y).backward()
        opts[n] = torch.optim.AdamW(m.parameters(), lr=1e-3) if n.startswith("torch") else optlab.optimizer(n, m)
    times: dict[str, list[float]] = {n: [] for n in opts}
    for o in opts.values():  # warm-up: lazy state, SOAP's first (initializing) step
        o.step()
        o.step()
    for _ in range(repeats):
        for n, o in opts.items():
            t0 = time.perf_counter()
            o.step()
            times[n].append(time.perf_counter() - t0)
    return {n: 1e3 * statistics.median(t) for n, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="width 16, 3 repeats, batch 32 only")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="*", default=[32, 128])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per memory subprocess")
    ap.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, help=f"subset of: {list(CONFIGS)}")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--update-only", action="store_true", help="time opt.step() alone for AdamW and the relatives")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.width, args.batch, args.steps)
        return
    if args.quick:
        args.width, args.repeats, args.batches = 16, 3, [32]
    if args.update_only:
        ms = update_only(args.width, max(args.repeats, 10))
        threads = torch.get_num_threads()
        print(f"# opt.step() alone, ResNet-18 width {args.width}, torch {torch.__version__}, {threads} threads")
        print("| optimizer | ms per update | ratio to torch.optim.AdamW |\n|---|---|---|")
        for n, t in ms.items():
            print(f"| {n} | {t:.1f} | {t / ms['torch.optim.AdamW']:.2f} |")
        return
    print(
        f"# step cost, ResNet-18 (width {args.width}, 10 classes, 32x32 random data), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )
    print(
        "# ratios are to torch.optim.SGD in the same run; medians over repeats; avg = per-step average over the refresh cycle"  # noqa: E501
    )
    for b in args.batches:
        names = ["sgd"] + [c for c in args.configs if c != "sgd"]
        t = (
            {n: {"refresh_ms": float("nan"), "plain_ms": float("nan"), "avg_ms": float("nan")} for n in names}
            if args.memory_only
            else time_steps(args.width, b, args.repeats, names)
        )
        mem = (
            {}
            if args.no_memory
            else measure_memory(
                [m for m in MEMORY if m in args.configs or m == "sgd-ph plain step"], args.width, b, args.steps
            )
        )
        base_t, base_m = t["sgd"]["avg_ms"], mem.get("sgd")
        print(f"\n## batch {b}\n")
        adamw_t = t.get("torch.optim.AdamW", {}).get("avg_ms")
        print(
            "| configuration | time ratio (avg) | refresh step ratio | plain step ratio | avg ms | peak-memory ratio | peak growth MB | time ratio to torch.optim.AdamW |"  # noqa: E501
        )
        print("|---|---|---|---|---|---|---|---|")
        for n, r in t.items():
            m = mem.get(n)
            mr = f"{m / base_m:.2f}" if m is not None and base_m else "-"
            ar = f"{r['avg_ms'] / adamw_t:.2f}" if adamw_t else "-"
            print(
                f"| {n} | {r['avg_ms'] / base_t:.2f} | {r['refresh_ms'] / base_t:.2f} | {r['plain_ms'] / base_t:.2f} | "
                f"{r['avg_ms']:.0f} | {mr} | {'-' if m is None else f'{m:.0f}'} | {ar} |"
            )
        if "sgd-ph plain step" in mem and base_m:
            print(
                f"| sgd-ph plain step (no refresh) | - | - | - | - | {mem['sgd-ph plain step'] / base_m:.2f} | "
                f"{mem['sgd-ph plain step']:.0f} | - |"
            )
        sys.stdout.flush()
    if args.memory_only:
        return
    print("\nexact_diag on a 64-channel BatchNorm block (ResNet-20, batch 32):")
    for engine, (tv, tl) in exact_diag_vmap_vs_loop().items():
        print(f"  {engine}: vmapped {tv:.0f} ms, loop of 64 single HVPs {tl:.0f} ms, speed-up {tl / tv:.2f}x")


if __name__ == "__main__":
    main()
