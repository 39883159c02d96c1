"""``RuleOptimizer``: one ``torch.optim.Optimizer`` that runs every rule.

Per step, with a closure that returns the loss (forward only):

1. the optimizer differentiates the loss -- with ``create_graph=True`` only when
   some rule refreshes curvature this step and the engine is ``autograd``;
   ``p.grad`` is *set* to the gradient of this loss;
2. each refreshing rule asks its estimator for curvature of the tensors its
   schedule names (through an HVP context);
3. each rule's stepper updates its parameters.

Everything needed to resume (per-rule step, round-robin position, HVP count,
curvature age, generator state; per-parameter buffers) lives in ``state``, so
``state_dict`` -> ``load_state_dict`` continues bit for bit. Rule-level state is
stored under string keys ``"rule:<name>"`` next to the per-parameter entries.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from .hvp import get_engine, split_closure_result
from .rules import Rule, Schedule, partition

__all__ = ["RuleOptimizer"]


class RuleOptimizer(torch.optim.Optimizer):
    """Runs a list of :class:`~optlab.rules.Rule` over ``model``'s parameters.

    Args:
        model: the module whose parameters are optimized (also used by the
            ``func`` HVP engine to re-run the closure functionally).
        rules: the rules; see :func:`optlab.rules.partition`.
        engine: HVP engine, ``"autograd"`` (default, fastest on CPU) or ``"func"``.
        seed: seed for the generators of stochastic estimators; ``None`` draws
            one from torch's global RNG (deterministic after ``torch.manual_seed``).
        name: label used in messages (the preset's name).
    """

    def __init__(self, model: nn.Module, rules: list[Rule], *, engine: str = "autograd",
                 seed: int | None = None, name: str = "optlab"):
        self._engine = get_engine(engine)
        self.name = name
        self.rules = {r.name: r for r in rules}
        groups = partition(model, rules)
        super().__init__(groups, defaults={})
        self.model = model
        #: seconds and HVP counts accumulated over steps (read and reset by runners)
        self.timings = {"forward_backward": 0.0, "curvature": 0.0, "update": 0.0}
        for group in self.param_groups:
            rule = self.rules[group["rule"]]
            st = {"step": 0, "rr_pos": 0, "hvp_count": 0, "vjp_count": 0}
            if rule.curvature is not None and rule.curvature.stochastic:
                s = seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
                gen = torch.Generator(device=group["params"][0].device if group["params"] else "cpu")
                gen.manual_seed(s + sum(map(ord, rule.name)))
                st["generator"] = gen.get_state()
            self.state[self._key(group)] = st

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _key(group) -> str:
        return f"rule:{group['rule']}"

    def rule_state(self, rule: str) -> dict:
        return self.state[f"rule:{rule}"]

    @property
    def hvp_count(self) -> int:
        return sum(self.rule_state(g["rule"])["hvp_count"] for g in self.param_groups)

    @property
    def vjp_count(self) -> int:
        """Output-Jacobian-transpose products of the Gauss-Newton estimators so far."""
        return sum(self.rule_state(g["rule"])["vjp_count"] for g in self.param_groups)

    @property
    def needs_closure(self) -> bool:
        return any(self.rules[g["rule"]].curvature is not None and g["params"] for g in self.param_groups)

    def _plan(self) -> dict[int, tuple[list[int], int]]:
        plan = {}
        for gi, group in enumerate(self.param_groups):
            rule = self.rules[group["rule"]]
            if rule.curvature is None:
                continue
            st = self.state[self._key(group)]
            sched = Schedule(group.get("every", 1), group.get("schedule", "all"), group.get("period"))
            idx, nxt = sched.indices(st["step"] + 1, st["rr_pos"], len(group["params"]))
            plan[gi] = (idx, nxt)
        return plan

    # ------------------------------------------------------------------ step
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One optimization step; returns the (detached) loss the closure returned."""
        if closure is None and self.needs_closure:
            raise RuntimeError(
                f"{self.name}: this optimizer estimates curvature and needs the loss, so call "
                "opt.step(closure) with a closure that runs the forward pass and returns the "
                "scalar loss (no backward): opt.step(lambda: loss_fn(model(x), y)).")
        plan = self._plan()
        refresh = {gi: p for gi, p in plan.items() if p[0]}
        loss = None
        t0 = time.perf_counter()
        curvature: dict[int, dict[int, torch.Tensor]] = {}
        if closure is not None:
            params = [p for g in self.param_groups for p in g["params"]]
            for p in params:  # overwritten below; freeing them first keeps one set of gradients alive
                p.grad = None
            with torch.enable_grad():
                loss, outputs = split_closure_result(closure())
                if not loss.requires_grad:
                    raise ValueError("the loss returned by the closure does not require grad; "
                                     "did the closure run under torch.no_grad()?")
                create_graph = bool(refresh) and self._engine.needs_graph
                grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
                by_param = dict(zip(params, grads))
                for p, g in by_param.items():
                    p.grad = None if g is None else g.detach()
                t1 = time.perf_counter()
                self.timings["forward_backward"] += t1 - t0
                for gi, (idx, _) in refresh.items():
                    curvature[gi] = self._estimate(gi, idx, closure, by_param, outputs, loss)
                del grads, by_param, outputs
            self.timings["curvature"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        with torch.no_grad():
            for gi, group in enumerate(self.param_groups):
                rule = self.rules[group["rule"]]
                st = self.state[self._key(group)]
                st["step"] += 1
                if gi in plan:
                    st["rr_pos"] = plan[gi][1]
                params = group["params"]
                states = [self.state[p] for p in params]
                curv = None
                if rule.curvature is not None:
                    est = curvature.get(gi, {})
                    curv = [est.get(i) for i in range(len(params))]
                    for i, s in enumerate(states):
                        if curv[i] is not None:
                            s["curvature_step"] = st["step"]
                rule.stepper.step(params, [p.grad for p in params], states, group,
                                  curvature=curv, rule_step=st["step"])
        self.timings["update"] += time.perf_counter() - t2
        return None if loss is None else loss.detach()

    def _estimate(self, gi, idx, closure, by_param, outputs, loss) -> dict[int, torch.Tensor]:
        group = self.param_groups[gi]
        rule = self.rules[group["rule"]]
        st = self.state[self._key(group)]
        params = group["params"]
        ctx = self._engine.context(model=self.model, closure=closure, params=params,
                                   names=group["param_names"],
                                   grads=[by_param[p] for p in params] if self._engine.needs_graph else None,
                                   outputs=outputs, loss=loss)
        gen = None
        if "generator" in st:
            gen = torch.Generator(device=params[0].device)
            gen.set_state(st["generator"])
        est = rule.curvature.estimate(ctx, idx, group, gen)
        if gen is not None:
            st["generator"] = gen.get_state()
        st["hvp_count"] += ctx.hvp_count
        st["vjp_count"] += ctx.vjp_count
        missing = [group["param_names"][i] for i in idx if i not in est]
        if missing:
            raise RuntimeError(f"estimator {rule.curvature.name!r} returned no estimate for {missing}")
        for i, t in est.items():
            if not isinstance(t, torch.Tensor) or t.shape != params[i].shape or t.dtype != params[i].dtype:
                raise RuntimeError(
                    f"estimator {rule.curvature.name!r} returned {type(t).__name__} "
                    f"{tuple(getattr(t, 'shape', ()))} {getattr(t, 'dtype', '')} for {group['param_names'][i]!r}; "
                    f"expected a tensor of shape {tuple(params[i].shape)} and dtype {params[i].dtype}")
        return {i: t.detach() for i, t in est.items()}

    def curvature_age(self) -> dict[str, int | None]:
        """Steps since each curvature-rule tensor was last refreshed (None: never)."""
        out = {}
        for group in self.param_groups:
            if self.rules[group["rule"]].curvature is None:
                continue
            step = self.state[self._key(group)]["step"]
            for n, p in zip(group["param_names"], group["params"]):
                last = self.state[p].get("curvature_step") if p in self.state else None
                out[n] = None if last is None else step - last
        return out

    def load_state_dict(self, state_dict) -> None:
        mine = [g["rule"] for g in self.param_groups]
        theirs = [g.get("rule") for g in state_dict["param_groups"]]
        if mine != theirs:
            raise ValueError(f"{self.name}: state_dict has rules {theirs}, this optimizer has {mine}")
        super().load_state_dict(state_dict)
