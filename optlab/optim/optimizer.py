"""``RuleOptimizer``: one ``torch.optim.Optimizer`` that runs every rule.

Per step:

1. gradients: ``p.grad`` is *set* to the gradient of this step's loss. Steps that
   refresh no curvature use a plain ``loss.backward()`` (through DDP's reducer
   when the model is DDP); refresh steps build the gradient with
   ``create_graph=True`` (engine ``autograd``), under ``ddp.no_sync()`` and
   averaged over ranks by the optimizer (:mod:`optlab.optim.ddp`);
2. each refreshing rule asks its estimator for curvature of the tensors its
   schedule names (through an HVP context; products and estimates averaged over
   ranks under DDP);
3. optional clipping of the gradients (``max_grad_norm``), then each rule's
   stepper updates its parameters.

The phases are the methods ``_gradients``, ``_curvature`` and ``_update``; the update's
kernel and the gradient helpers are functions in :mod:`optlab.optim.phases` (as
``torch.optim.SGD.step`` calls the functional ``sgd``).

The loss arrives in one of three styles (:mod:`optlab.optim.closures`): a forward-only
closure, a torch-standard closure that calls ``backward()`` itself, or
backward-first (``loss.backward(create_graph=opt.needs_graph()); opt.step()``).

Everything needed to resume (per-rule step, round-robin position, HVP count,
curvature age, generator state; per-parameter buffers) lives in ``state``, so
``state_dict`` -> ``load_state_dict`` continues bit for bit. Rule-level state is
stored under string keys ``"rule:<name>"`` next to the per-parameter entries.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import compiled
from . import ddp as distributed
from .closures import STYLES, TIMED_PHASES, check_max_grad_norm, grad_marks, grads_written
from .hvp import get_engine, split_closure_result
from .phases import (
    ScaledHVPContext,
    apply_rules,
    check_loss,
    graph_grads_from_p_grad,
    refresh_forward,
    rule_key,
    unscale_grads,
)
from .rules import Rule, Schedule, check_estimate, partition

__all__ = ["RuleOptimizer"]

#: group keys that are bookkeeping, not hyperparameters (kept out of ``defaults``)
_GROUP_META = ("params", "param_names", "rule")


def common_defaults(groups: list[dict]) -> dict:
    """``defaults`` for torch code that reads it (``OneCycleLR``/``CyclicLR`` look for
    ``momentum`` or ``betas``): the hyperparameters every group has, with the first
    group's value. A key absent from a group is absent here, so a scheduler that
    finds ``momentum`` in ``defaults`` finds it in every group it writes to."""
    if not groups:
        return {}
    keys = [k for k in groups[0] if k not in _GROUP_META and all(k in g for g in groups[1:])]
    return {k: groups[0][k] for k in keys}


class RuleOptimizer(torch.optim.Optimizer):
    """Runs a list of :class:`~optlab.optim.rules.Rule` over ``model``'s parameters.

    Args:
        model: the module whose parameters are optimized, or its
            ``DistributedDataParallel`` wrapper (gradients and curvature are then
            averaged over its process group; see :mod:`optlab.optim.ddp`).
            ``DataParallel`` and FSDP are refused.
        rules: the rules; see :func:`optlab.optim.rules.partition`.
        engine: HVP engine, ``"autograd"`` (default, fastest on CPU) or ``"func"``.
        seed: seed for the generators of stochastic estimators; ``None`` draws
            one from torch's global RNG (deterministic after ``torch.manual_seed``;
            under DDP rank 0's draw is broadcast).
        name: label used in messages (the preset's name).
        max_grad_norm: clip the total gradient 2-norm to this value before the
            steppers (``torch.nn.utils.clip_grad_norm_``); the pre-clip norm is
            ``opt.last_grad_norm``. ``None``: no clipping.
        process_group: under DDP, must be DDP's group (``None``: DDP's).
    """

    #: ``torch.amp.GradScaler`` passes ``grad_scale``/``found_inf`` and lets ``step`` unscale
    _step_supports_amp_scaling = True
    #: torch's per-tensor state, plus one entry per rule under a string key (``rule:<name>``)
    state: defaultdict[Any, Any]

    def __init__(
        self,
        model: nn.Module,
        rules: list[Rule],
        *,
        engine: str = "autograd",
        seed: int | None = None,
        name: str = "optlab",
        max_grad_norm: float | None = None,
        process_group=None,
    ):
        self._engine = get_engine(engine)
        self.name = name
        check_max_grad_norm(name, max_grad_norm)
        self.max_grad_norm = max_grad_norm
        #: total gradient 2-norm before clipping at the last step (``None`` without ``max_grad_norm``)
        self.last_grad_norm: torch.Tensor | None = None
        module, ddp = distributed.unwrap(model)
        self.rules = {r.name: r for r in rules}
        groups = partition(module, rules)
        super().__init__(groups, defaults=common_defaults(groups))
        self.model = module
        #: seconds and HVP counts accumulated over steps (read and reset by runners)
        self.timings = dict.fromkeys(TIMED_PHASES, 0.0)
        for group in self.param_groups:
            rule = self.rules[group["rule"]]
            st: dict[str, Any] = {"step": 0, "rr_pos": 0, "hvp_count": 0, "vjp_count": 0}
            if rule.curvature is not None and rule.curvature.stochastic:
                s = seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
                gen = torch.Generator(device=group["params"][0].device if group["params"] else "cpu")
                gen.manual_seed(s + sum(map(ord, rule.name)))
                st["generator"] = gen.get_state()
            self.state[self._key(group)] = st
        self._replicas: distributed.Replicas | None = None
        self._independent = False
        if ddp is not None:
            self.distribute(ddp, process_group=process_group)
        elif process_group is not None:
            raise ValueError(
                f"{name}: process_group is given but the model is not DistributedDataParallel; "
                "pass the DDP-wrapped model."
            )

    # ------------------------------------------------------------------ distributed
    def distribute(self, ddp: nn.Module | None, *, process_group=None) -> RuleOptimizer:
        """Attach the ``DistributedDataParallel`` wrapper of the model (when it was wrapped after
        the optimizer was built, as Lightning does); ``None`` declares that every process
        trains its own, independent model. Broadcasts the estimators' generator states from
        the group's first rank so all ranks draw identical probes."""
        if self._replicas is not None:
            self._replicas.close()
            self._replicas = None
        if ddp is None:
            self._independent = True
            return self
        if not isinstance(ddp, nn.parallel.DistributedDataParallel):
            distributed.check_supported(ddp, self.name)
            raise TypeError(
                f"{self.name}: distribute() takes a DistributedDataParallel model or None; got {type(ddp).__name__}"
            )
        distributed.check_supported(ddp.module, self.name)
        params = [p for g in self.param_groups for p in g["params"]]
        self._replicas = distributed.Replicas(ddp, params, process_group)
        self._independent = False
        for group in self.param_groups:
            st = self.state[self._key(group)]
            if "generator" in st:
                self._replicas.broadcast_(st["generator"])
        return self

    def refresh_context(self):
        """Context for the forward and backward of a backward-first step under DDP:
        when the next step refreshes curvature, every ``torch.compile`` region runs eagerly
        (:func:`optlab.optim.compiled.eager`: compiled graphs have no double backward) and, under
        DDP, inside ``ddp.no_sync()`` (the optimizer then averages those gradients itself);
        on other steps it does nothing::

            with opt.refresh_context():
                loss = loss_fn(ddp_model(x), y)
                loss.backward(create_graph=opt.needs_graph())
            opt.step()
        """
        if not self._refreshing(self._plan()):
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(compiled.eager())  # a compiled model's double backward runs eagerly
        if self._replicas is not None:
            stack.enter_context(self._replicas.no_sync())
        return stack

    # ------------------------------------------------------------------ helpers
    _key = staticmethod(rule_key)

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

    @staticmethod
    def _refreshing(plan) -> dict:
        return {gi: p for gi, p in plan.items() if p[0]}

    def needs_graph(self) -> bool:
        """True when the next step refreshes curvature from gradients with a graph: the
        backward-first style calls ``loss.backward(create_graph=opt.needs_graph())``."""
        return self._engine.needs_graph and bool(self._refreshing(self._plan()))

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    # ------------------------------------------------------------------ step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        # (torch types step's return as float; like LBFGS's, ours is the loss tensor)
        """One optimization step; returns the (detached) loss, or ``None`` without a closure.

        ``closure`` runs the forward pass and returns the loss (or ``(loss, outputs)``);
        it may call ``loss.backward()`` itself (torch's convention), or be omitted
        after ``loss.backward(create_graph=opt.needs_graph())``.

        A refresh step runs the closure, gradient and curvature with every ``torch.compile``
        region eager (:mod:`optlab.optim.compiled`); other steps run compiled code as it is.
        """
        plan = self._plan()
        refresh = self._refreshing(plan)
        if refresh:
            with compiled.eager():
                return self._step(closure, plan, refresh)
        return self._step(closure, plan, refresh)

    def _step(self, closure, plan, refresh):
        """:meth:`step` once the plan (which rules refresh which tensors) is known: the three
        phases, each timed -- gradients (:meth:`_gradients`), curvature (:meth:`_curvature`),
        update (:meth:`_update`, which runs the kernel :func:`~optlab.optim.phases.apply_rules`)."""
        replicas = self._replicas
        distributed.check_ddp_known(self._replicas, self._independent, self.name)
        scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        params = self._params()
        if replicas is not None and refresh and self._engine.name == "func":
            raise ValueError(
                f"{self.name}: engine='func' re-runs the closure through torch.func transforms, "
                "which DistributedDataParallel's forward does not support; use engine='autograd' "
                "under DDP."
            )
        if found_inf is not None and float(found_inf) > 0:  # GradScaler: skip, retry the refresh next step
            for p in params:
                if p.grad is not None:
                    p.grad = p.grad.detach()
            if replicas is not None:
                replicas.forwards = 0
            return None
        if refresh and found_inf is not None and scale is None and self._engine.needs_graph:
            raise RuntimeError(
                f"{self.name}: scaler.unscale_(opt) was called before a curvature step; the gradient graph still "
                "carries the loss scale, so curvature would be off by it. Let scaler.step(opt) unscale (clip with "
                "optlab.optimizer(..., max_grad_norm=...))."
            )
        t0 = time.perf_counter()
        loss, outputs, graph_grads = self._gradients(closure, params, refresh, scale)
        t1 = time.perf_counter()
        self.timings["forward_backward"] += t1 - t0
        curvature = self._curvature(closure, params, refresh, graph_grads, outputs, loss, scale) if refresh else {}
        del graph_grads, outputs  # the double-backward graph is not needed by the update
        self.timings["curvature"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        self._update(params, plan, curvature, loss)
        self.timings["update"] += time.perf_counter() - t2
        if replicas is not None:
            replicas.forwards = 0
        return None if loss is None else loss.detach()

    # ------------------------------------------------------------------ phase 1: gradients
    def _gradients(self, closure, params, refresh, scale):
        """Set ``p.grad`` to this step's gradient, whatever the closure style; under DDP averaged
        over ranks; unscaled under ``GradScaler``. Returns ``(loss, outputs, graph_grads)``:
        ``graph_grads`` carry a double-backward graph on refresh steps of the autograd engine."""
        loss = outputs = graph_grads = None
        if closure is not None:
            marks = grad_marks(params)
            if refresh:
                loss, outputs, graph_grads = self._refresh_gradients(closure, params, marks)
            else:
                loss = self._plain_gradients(closure, params, marks)
        else:
            graph_grads = self._written_gradients(params, refresh)
        distributed.check_ddp_forward(self._replicas, self.name)
        if scale is not None:  # GradScaler: the gradients (and their graph) carry the loss scale
            unscale_grads(params, scale)
        return loss, outputs, graph_grads

    def _refresh_gradients(self, closure, params, marks):
        """A refresh step with a closure: the gradient with ``create_graph`` (autograd engine), taken
        with ``torch.autograd.grad`` outside DDP's reducer, then averaged over ranks."""
        loss, outputs = refresh_forward(self.name, self._engine, closure, params, self._replicas, marks)
        for p in params:  # overwritten below; freeing them first keeps one set of gradients alive
            p.grad = None
        create_graph = self._engine.needs_graph
        graph_grads = list(torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True))
        grads = [None if g is None else g.detach() for g in graph_grads]
        if self._replicas is not None:
            grads = self._replicas.average(grads, params)
        for p, g in zip(params, grads):
            p.grad = g
        return loss, outputs, (graph_grads if create_graph else None)

    def _plain_gradients(self, closure, params, marks):
        """A step that refreshes nothing: a torch-standard closure runs its own backward (through
        DDP's reducer); for a forward-only closure ``p.grad`` is set to its loss's gradient."""
        with torch.enable_grad():
            result = closure()
        if grad_marks(params) != marks:  # torch-standard closure: its backward ran (DDP's reducer)
            return None if result is None else split_closure_result(result)[0]
        loss, _ = split_closure_result(result)
        check_loss(loss)
        for p in params:
            p.grad = None
        loss.backward()
        return loss

    def _written_gradients(self, params, refresh):
        """Backward-first style (no closure): the gradients are in ``p.grad`` already; on a refresh
        step they carry their graph, and under DDP the optimizer averages them."""
        if self.needs_closure and not grads_written(params):
            raise RuntimeError(
                f"{self.name}: this optimizer estimates curvature and needs the loss, so call "
                "opt.step(closure) with a closure that runs the forward pass and returns the "
                "scalar loss (no backward): opt.step(lambda: loss_fn(model(x), y)), or run "
                "loss.backward(create_graph=opt.needs_graph()) before opt.step(). The styles:\n" + STYLES
            )
        if not refresh:
            return None
        graph_grads = graph_grads_from_p_grad(
            self.name, self._engine, [self.param_groups[gi] for gi in refresh], params, self._replicas is not None
        )
        if self._replicas is not None:
            avg = self._replicas.average([p.grad for p in params], params)
            for p, g in zip(params, avg):
                p.grad = g
        else:
            for p in params:
                if p.grad is not None:
                    p.grad = p.grad.detach()
        return graph_grads

    # ------------------------------------------------------------------ phase 2: curvature
    def _curvature(self, closure, params, refresh, graph_grads, outputs, loss, scale) -> dict:
        """``{group index: {tensor index: curvature}}`` of every refreshing rule's scheduled tensors."""
        by_param = dict(zip(params, graph_grads)) if graph_grads is not None else None
        curvature: dict[int, dict[int, torch.Tensor]] = {}
        with torch.enable_grad():
            for gi, (idx, _) in refresh.items():
                curvature[gi] = self._estimate(gi, idx, closure, by_param, outputs, loss, scale)
        if self._replicas is not None:  # flag restored: the next forward broadcasts buffers again
            self._replicas.ddp.require_forward_param_sync = True
        return curvature

    def _estimate(self, gi, idx, closure, by_param, outputs, loss, scale=None) -> dict[int, torch.Tensor]:
        group = self.param_groups[gi]
        rule = self.rules[group["rule"]]
        st = self.state[self._key(group)]
        params = group["params"]
        ctx = self._engine.context(
            model=self.model,
            closure=closure,
            params=params,
            names=group["param_names"],
            grads=[by_param[p] for p in params] if self._engine.needs_graph else None,
            outputs=outputs,
            loss=loss,
        )
        if scale is not None:
            ctx = ScaledHVPContext(ctx, 1.0 / float(scale))
        if self._replicas is not None:
            ctx = distributed.AveragedHVPContext(ctx, self._replicas, self.model)
        gen = None
        if "generator" in st:
            gen = torch.Generator(device=params[0].device)
            gen.set_state(st["generator"])
        est = rule.curvature.estimate(ctx, idx, group, gen)
        if gen is not None:
            st["generator"] = gen.get_state()
        st["hvp_count"] += ctx.hvp_count
        st["vjp_count"] += ctx.vjp_count
        est = check_estimate(
            est, idx, params, group["param_names"], who=f"estimator {rule.curvature.name!r}", finite=False
        )  # non-finite curvature is the stepper's to rectify
        if self._replicas is not None:  # identical on every rank (a no-op for HVP-only estimators)
            keys = sorted(est)
            est = dict(zip(keys, self._replicas.average([est[i] for i in keys], [params[i] for i in keys])))
        return est

    # ------------------------------------------------------------------ phase 3: update
    def _update(self, params, plan, curvature, loss) -> None:
        """Clip (``max_grad_norm``), then every rule's stepper (:func:`~optlab.optim.phases.apply_rules`)."""
        self.last_grad_norm = None
        if self.max_grad_norm is not None:
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm).detach()
        with torch.no_grad():
            apply_rules(self.name, self.param_groups, self.rules, self.state, plan, curvature, loss)

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
