"""Second-order steppers against closed-form float64 recurrences written out element by element
in plain Python floats (no torch arithmetic in the reference), with the curvature supplied to the
stepper directly, and against ``pytorch_optimizer``'s AdaHessian / SophiaH where the definitions
coincide.

What ``tests/test_plugins.py``'s ``check_stepper_formula`` cases do not reach and these do:
tensors whose first curvature arrives only after some steps (AdaHessian takes no step, diag-Newton
takes an SGD-momentum step), many steps with a long EMA history and refreshes every k steps, the
bias corrections at a step count != refresh count, clipping active on some entries and not others.
"""

from __future__ import annotations

import pytest
import torch

from optlab.builtins.steppers import AdamHessian, ClippedNewton, DiagNewton


def _group(cls, **kw):
    g = {k: v.default for k, v in cls.hparams.items()}
    g.update(kw)
    return g


def _stream(steps, sizes, refresh, seed=0, positive=False):
    """Gradients every step; curvature for tensor i at step t when ``refresh(t, i)``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(1, steps + 1):
        grads = [torch.randn(n, generator=gen, dtype=torch.float64) for n in sizes]
        curv = []
        for i, n in enumerate(sizes):
            h = torch.randn(n, generator=gen, dtype=torch.float64)
            if positive:
                h = h.abs() + 0.05
            curv.append(h if refresh(t, i) else None)
        out.append((grads, curv))
    return out


def _run_stepper(cls, group, p0, stream):
    params = [p.clone() for p in p0]
    states: list[dict] = [{} for _ in params]
    stepper = cls()
    history = []
    for t, (grads, curv) in enumerate(stream, start=1):
        stepper.step(
            params,
            [g.clone() for g in grads],
            states,
            dict(group),
            curvature=[None if c is None else c.clone() for c in curv],
            rule_step=t,
        )
        history.append([p.clone() for p in params])
    return history


def _assert_trajectory(history, ref, rtol=1e-13, atol=1e-15):
    for t, (got, want) in enumerate(zip(history, ref), start=1):
        for i, (a, b) in enumerate(zip(got, want)):
            b = torch.tensor(b, dtype=torch.float64)
            assert torch.allclose(a, b, rtol=rtol, atol=atol), f"step {t}, tensor {i}: {a.tolist()} != {b.tolist()}"


# ------------------------------------------------------------------ adam_hessian (AdaHessian)
def adahessian_closed_form(p0, stream, lr, b1, b2, eps, wd, k):
    """Yao et al. 2021, Alg. 1 per element: m_t = b1 m + (1-b1) g; on refresh n += 1,
    v = b2 v + (1-b2) D^2; p <- p(1 - lr wd) - lr (m/(1-b1^t)) / ((v/(1-b2^n))^(k/2) + eps);
    no update of p before the tensor's first refresh (its m still accumulates)."""
    ps = [[float(x) for x in p] for p in p0]
    m = [[0.0] * len(p) for p in ps]
    v = [[0.0] * len(p) for p in ps]
    n = [0] * len(ps)
    out = []
    for t, (grads, curv) in enumerate(stream, start=1):
        for i in range(len(ps)):
            g = grads[i].tolist()
            m[i] = [b1 * a + (1 - b1) * gj for a, gj in zip(m[i], g)]
            if curv[i] is not None:
                d = curv[i].tolist()
                v[i] = [b2 * a + (1 - b2) * dj * dj for a, dj in zip(v[i], d)]
                n[i] += 1
            if n[i] == 0:
                continue
            new = []
            for pj, mj, vj in zip(ps[i], m[i], v[i]):
                denom = (vj / (1 - b2 ** n[i])) ** (k / 2) + eps
                new.append(pj * (1 - lr * wd) - lr * (mj / (1 - b1**t)) / denom)
            ps[i] = new
        out.append([list(p) for p in ps])
    return out


@pytest.mark.parametrize(
    "hp",
    [
        {},  # the adahessian preset's defaults: lr 0.15, betas (0.9, 0.999), eps 1e-4, k = 1
        {"hessian_power": 0.5, "weight_decay": 0.05, "betas": (0.8, 0.95), "lr": 0.05},
        {"hessian_power": 0.0, "betas": (0.5, 0.6), "lr": 0.01, "eps": 0.3},
    ],
)
def test_adam_hessian_matches_the_closed_form_over_many_steps(hp):
    # tensor 0 refreshes every 3 steps from step 1; tensor 1 first at step 4, then every 2
    stream = _stream(14, [3, 5], lambda t, i: (t - 1) % 3 == 0 if i == 0 else t >= 4 and t % 2 == 0, seed=1)
    p0 = [torch.randn(3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    group = _group(AdamHessian, **hp)
    b1, b2 = group["betas"]
    ref = adahessian_closed_form(
        p0, stream, group["lr"], b1, b2, group["eps"], group["weight_decay"], group["hessian_power"]
    )
    hist = _run_stepper(AdamHessian, group, p0, stream)
    assert torch.equal(hist[2][1], p0[1])  # no curvature yet: no step
    assert not torch.equal(hist[3][1], p0[1])
    _assert_trajectory(hist, ref)


def test_adam_hessian_first_step_is_a_signed_unit_step():
    """Closed form at t = n = 1, k = 1, eps -> 0: m/(1-b1) = g, sqrt(v/(1-b2)) = |D|, so the
    step is -lr g / |D| (a Newton step with |curvature|); with k = 0 it is -lr g / (1 + eps)."""
    g, d = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64), torch.tensor([-4.0, 0.5, 2.0], dtype=torch.float64)
    for k, want in [(1.0, -0.1 * g / d.abs()), (0.0, -0.1 * g / (1 + 1e-12))]:
        p = [torch.zeros(3, dtype=torch.float64)]
        AdamHessian().step(p, [g], [{}], _group(AdamHessian, lr=0.1, eps=1e-12, hessian_power=k), curvature=[d])
        torch.testing.assert_close(p[0], want, rtol=1e-11, atol=0)


# ------------------------------------------------------------------ clipped_newton (Sophia)
def sophia_closed_form(p0, stream, lr, b1, b2, rho, eps, wd):
    """Liu et al. 2023, Alg. 3 per element: m = b1 m + (1-b1) g; on refresh h = b2 h + (1-b2) h_hat;
    p <- p(1 - lr wd) - lr sign(m) min(|m| / max(rho h, eps), 1)."""
    ps = [[float(x) for x in p] for p in p0]
    m = [[0.0] * len(p) for p in ps]
    h = [[0.0] * len(p) for p in ps]
    out = []
    for grads, curv in stream:
        for i in range(len(ps)):
            if curv[i] is not None:
                h[i] = [b2 * a + (1 - b2) * c for a, c in zip(h[i], curv[i].tolist())]
            m[i] = [b1 * a + (1 - b1) * gj for a, gj in zip(m[i], grads[i].tolist())]
            new = []
            for pj, mj, hj in zip(ps[i], m[i], h[i]):
                sign = (mj > 0) - (mj < 0)
                new.append(pj * (1 - lr * wd) - lr * sign * min(abs(mj) / max(rho * hj, eps), 1.0))
            ps[i] = new
        out.append([list(p) for p in ps])
    return out


@pytest.mark.parametrize(
    "hp",
    [
        {},  # sophia's defaults: lr 1e-3, betas (0.965, 0.99), rho 0.04, eps 1e-15, wd 0.1
        {"rho": 1.0, "weight_decay": 0.0, "lr": 0.1, "betas": (0.5, 0.7)},
        {"rho": 5.0, "weight_decay": 0.3, "lr": 0.05, "betas": (0.9, 0.9), "eps": 1e-3},
    ],
)
def test_clipped_newton_matches_the_closed_form_over_many_steps(hp):
    stream = _stream(16, [4, 6], lambda t, i: (t - 1) % (2 + i) == 0, seed=2, positive=True)
    p0 = [torch.randn(4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)]
    group = _group(ClippedNewton, **hp)
    b1, b2 = group["betas"]
    ref = sophia_closed_form(p0, stream, group["lr"], b1, b2, group["rho"], group["eps"], group["weight_decay"])
    _assert_trajectory(_run_stepper(ClippedNewton, group, p0, stream), ref)


def test_clipped_newton_clips_some_entries_and_not_others():
    """One step, h_hat = (1, 1, 1), rho = 1, b1 = b2 = 0 (m = g, h = h_hat): the update is
    -lr * clip(g, -1, 1) -- entries with |g| > 1 are clipped to a unit step, the rest are Newton."""
    g = torch.tensor([0.25, -3.0, 0.5], dtype=torch.float64)
    p = [torch.zeros(3, dtype=torch.float64)]
    group = _group(ClippedNewton, lr=0.1, rho=1.0, betas=(0.0, 0.0), weight_decay=0.0)
    ClippedNewton().step(p, [g], [{}], group, curvature=[torch.ones(3, dtype=torch.float64)])
    torch.testing.assert_close(p[0], torch.tensor([-0.025, 0.1, -0.05], dtype=torch.float64), rtol=1e-14, atol=0)


# ------------------------------------------------------------------ diag_newton (SGD-PH's 1-D rule)
def diag_newton_closed_form(p0, stream, lr, mom, beta, tau, eps, wd, bias_correction, rectify_at):
    """SGD-PH's rule (rectify = abs) per element: b = g (first step) then mom b + g; on refresh
    n += 1, D = beta D + (1-beta) h (h -> |h| when rectify_at = refresh);
    refreshes: u = b while n = 0, else tau b / (|D / (1 - beta^n)| + eps); none: tau b / (|D| + eps);
    p <- p - lr (u + wd p)."""
    ps = [[float(x) for x in p] for p in p0]
    b: list = [None] * len(ps)
    D = [[0.0] * len(p) for p in ps]
    n = [0] * len(ps)
    out = []
    for grads, curv in stream:
        for i in range(len(ps)):
            if curv[i] is not None:
                hs = curv[i].tolist()
                if rectify_at == "refresh":
                    hs = [abs(x) for x in hs]
                D[i] = [beta * a + (1 - beta) * x for a, x in zip(D[i], hs)]
                n[i] += 1
            g = grads[i].tolist()
            b[i] = list(g) if b[i] is None else [mom * a + x for a, x in zip(b[i], g)]
            new = []
            for pj, bj, dj in zip(ps[i], b[i], D[i]):
                rect = (lambda x: abs(x)) if rectify_at == "use" else (lambda x: x)
                if bias_correction == "none":
                    u = tau * bj / (rect(dj) + eps)
                elif n[i] == 0:
                    u = bj
                else:
                    u = tau * bj / (rect(dj / (1 - beta ** n[i])) + eps)
                new.append(pj - lr * (u + wd * pj))
            ps[i] = new
        out.append([list(p) for p in ps])
    return out


@pytest.mark.parametrize(
    "hp",
    [
        {"rectify_at": "use"},  # sgd-ph's default path with a stochastic estimator
        {"rectify_at": "use", "tau": 0.3, "momentum": 0.5, "hessian_momentum": 0.6, "weight_decay": 0.01},
        {"rectify_at": "refresh", "tau": 0.3, "hessian_momentum": 0.8},
        {"bias_correction": "none", "tau": 0.4, "momentum": 0.7, "hessian_momentum": 0.5, "rectify_at": "use"},
    ],
)
def test_diag_newton_default_path_matches_the_closed_form_over_many_steps(hp):
    """40 steps; tensor 0 refreshes every 5 steps from step 1, tensor 1 first at step 7 then every 5
    (a round-robin schedule's later tensors: SGD-momentum steps until their first estimate), so the
    EMA of signed estimates, its bias correction 1 - beta^n at n = 1..8, the n = 0 steps and the
    momentum history are all exercised."""
    stream = _stream(40, [3, 4], lambda t, i: (t - 1 - 6 * i) % 5 == 0 and t > 6 * i, seed=3)
    p0 = [torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    group = _group(DiagNewton, lr=0.05, **hp)
    assert group["bias_correction"] in ("refreshes", "none") and group["rectify"] == "abs"
    ref = diag_newton_closed_form(
        p0,
        stream,
        group["lr"],
        group["momentum"],
        group["hessian_momentum"],
        group["tau"],
        group["eps"],
        group["weight_decay"],
        group["bias_correction"],
        group["rectify_at"],
    )
    _assert_trajectory(_run_stepper(DiagNewton, group, p0, stream), ref)


def test_diag_newton_defaults_are_the_documented_path():
    g = _group(DiagNewton)
    assert (g["bias_correction"], g["rectify"], g["momentum"], g["hessian_momentum"]) == ("refreshes", "abs", 0.9, 0.9)


def test_diag_newton_before_its_first_estimate_is_sgd_momentum():
    """n = 0: u = b exactly (not tau b): three steps equal torch.optim.SGD(momentum, weight_decay
    decoupled) -- here wd = 0, so literally torch.optim.SGD."""
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(4, generator=gen, dtype=torch.float64) for _ in range(3)]
    p = torch.randn(4, generator=gen, dtype=torch.float64)
    q = torch.nn.Parameter(p.clone())
    sgd = torch.optim.SGD([q], lr=0.1, momentum=0.9)
    params, states = [p.clone()], [{}]
    for t, g in enumerate(grads, start=1):
        DiagNewton().step(params, [g.clone()], states, _group(DiagNewton, lr=0.1, tau=0.01), curvature=[None])
        q.grad = g.clone()
        sgd.step()
        assert torch.allclose(params[0], q.detach(), rtol=1e-15, atol=1e-16), t


# ------------------------------------------------------------------ against pytorch_optimizer
def _pto_run(opt, params, stream):
    """Drive a pytorch_optimizer optimizer with the given gradients; the curvature goes in through
    ``step(hessian=...)`` on refresh steps (its own Hutchinson pass runs only at step 1 of
    ``update_period``, set larger than the run)."""
    history = []
    for grads, curv in stream:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step(hessian=None if curv[0] is None else [c.clone() for c in curv])
        history.append([p.detach().clone() for p in params])
    return history


def _close(got, ref, what, rtol=1e-12):
    for t, (a, b) in enumerate(zip(got, ref), start=1):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=rtol, atol=1e-15), (what, t, x.tolist(), y.tolist())


@pytest.mark.parametrize("hp", [{}, {"hessian_power": 0.5, "weight_decay": 0.02, "lr": 0.05, "betas": (0.8, 0.99)}])
def test_adam_hessian_equals_pytorch_optimizer_adahessian_in_float64(hp):
    """Where they coincide: curvature every step (then refreshes n = steps t), ``hessian_power`` k,
    decoupled weight decay p(1 - lr wd) applied before the update, eps added after the power.
    They differ (i) in the estimate fed to the EMA -- pytorch_optimizer's AdaHessian (4.x) runs its
    own Hutchinson pass, the preset uses optlab's ``hutchinson`` estimator with its own generator
    (here both get the same given curvature), and (ii) with ``every`` > 1: pytorch_optimizer
    bias-corrects v with 1 - b2^t (t steps), the ``adam_hessian`` stepper with 1 - b2^n (n refreshes
    of the tensor), which is the correct debiasing of an EMA that was updated n times."""
    pto = pytest.importorskip("pytorch_optimizer")
    stream = _stream(12, [3, 5], lambda t, i: True, seed=4)
    p0 = [torch.randn(3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    group = _group(AdamHessian, **hp)
    params = [torch.nn.Parameter(p.clone()) for p in p0]
    opt = pto.AdaHessian(
        params,
        lr=group["lr"],
        betas=tuple(group["betas"]),
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        weight_decouple=True,
        hessian_power=group["hessian_power"],
        update_period=1,
    )
    _close(_run_stepper(AdamHessian, group, p0, stream), _pto_run(opt, params, stream), hp)


@pytest.mark.parametrize(
    "hp",
    [{"lr": 0.02, "rho": 0.04, "weight_decay": 0.1}, {"lr": 0.1, "rho": 2.0, "weight_decay": 0.0, "betas": (0.5, 0.9)}],
)
def test_clipped_newton_equals_pytorch_optimizer_sophiah_in_float64(hp):
    """SophiaH (pytorch_optimizer 4.x) writes the clipped step as lr' clip(m / max(h, eps), -p, p);
    ours is lr sign(m) min(|m| / max(rho h, eps), 1) = lr clip(m / (rho h), -1, 1). They coincide
    with p = rho, lr' = lr / rho and decoupled decay wd' = wd rho (so that lr' wd' = lr wd), while
    rho h > eps (positive curvature here; for h <= 0 both take the full clipped step sign(m)).
    Curvature every 3 steps: both keep the EMA h untouched between refreshes. They differ in the
    estimate (SophiaH: its own Hutchinson pass; the ``sophia`` preset: ``ggn_mc`` or ``hutchinson``)
    and in the scale of GNB's estimate (see the preset's docstring)."""
    pto = pytest.importorskip("pytorch_optimizer")
    stream = _stream(15, [4, 6], lambda t, i: (t - 1) % 3 == 0, seed=6, positive=True)
    p0 = [torch.randn(4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)]
    group = _group(ClippedNewton, **hp)
    params = [torch.nn.Parameter(p.clone()) for p in p0]
    rho = group["rho"]
    opt = pto.SophiaH(
        params,
        lr=group["lr"] / rho,
        betas=tuple(group["betas"]),
        weight_decay=group["weight_decay"] * rho,
        weight_decouple=True,
        p=rho,
        update_period=1000,
        eps=group["eps"],
    )
    _close(_run_stepper(ClippedNewton, group, p0, stream), _pto_run(opt, params, stream), hp, rtol=1e-11)
