"""The modular-arithmetic workload: generated data, the pre-LN transformer, what SGD-PH's selector picks."""

import pytest
import torch
from torch import nn

from optlab import api
from optlab.training.tasks import make_model, make_task


def test_every_equation_once_with_fixed_disjoint_splits():
    t = make_task("modular-arithmetic", p=11, train_fraction=0.4)
    n = 11 * 11
    assert (len(t.y_train), len(t.y_val), len(t.y_test)) == (48, 36, 37) and 48 + 36 + 37 == n
    x = torch.cat([t.x_train, t.x_val, t.x_test])
    y = torch.cat([t.y_train, t.y_val, t.y_test])
    assert len({tuple(r) for r in x[:, :2].tolist()}) == n  # every (a, b) exactly once
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % 11) and (x[:, 2] == 11).all()  # '=' token is p
    assert t.num_classes == 11 and t.x_train.dtype == torch.int64
    again = make_task("modular-arithmetic", seed=5, p=11, train_fraction=0.4)
    assert torch.equal(again.x_val, t.x_val)  # the run seed does not move the split
    mul = make_task("modular-arithmetic", p=7, op="mul")
    assert torch.equal(mul.y_train, (mul.x_train[:, 0] * mul.x_train[:, 1]) % 7)
    sub = make_task("modular-arithmetic", p=7, op="sub")
    assert torch.equal(sub.y_train, (sub.x_train[:, 0] - sub.x_train[:, 1]) % 7)


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"p": 2}, r"invalid p=2; expected an integer >= 3"),
        ({"op": "div"}, r"invalid op='div'; expected one of add, sub, mul"),
        ({"train_fraction": 1.0}, r"invalid train_fraction=1.0"),
        ({"p": 3, "train_fraction": 0.99}, r"leaving at least 2 of the 9 equations"),
    ],
)
def test_bad_task_options_are_named(opts, match):
    with pytest.raises(ValueError, match=match):
        make_task("modular-arithmetic", **opts)


def test_transformer_shapes_causal_attention_and_layernorm_selection():
    t = make_task("modular-arithmetic", p=13)
    torch.manual_seed(0)
    m = make_model("transformer-preln", t.info, width=16, layers=2, heads=2)
    out = m(t.x_train[:5])
    assert out.shape == (5, 13)
    # causal: the answer position may read a and b, but a's representation must not depend on b
    x = t.x_train[:1].clone()
    h1 = m.blocks(m.embed(x) + m.pos)
    x2 = x.clone()
    x2[0, 1] = (x2[0, 1] + 1) % 13
    h2 = m.blocks(m.embed(x2) + m.pos)
    assert torch.allclose(h1[0, 0], h2[0, 0]) and not torch.allclose(h1[0, 2], h2[0, 2])
    # SGD-PH's channel-wise class is exactly the LayerNorm affine parameters: 2 per block x 2 blocks + final
    opt = api.optimizer("sgd-ph", m, lr=0.1)
    groups = {g["rule"]: g for g in opt.param_groups}
    ln = {id(p) for mod in m.modules() if isinstance(mod, nn.LayerNorm) for p in mod.parameters()}
    assert {id(p) for p in groups["channelwise"]["params"]} == ln and len(ln) == 2 * (2 * 2 + 1)
    assert not ln & {id(p) for p in groups["rest"]["params"]}
    with pytest.raises(ValueError, match=r"invalid heads=3; expected a divisor of width=16"):
        make_model("transformer-preln", t.info, width=16, heads=3)


def test_hvp_through_the_transformer_matches_finite_differences():
    """SGD-PH's curvature needs double backward through attention and LayerNorm (float64)."""
    t = make_task("modular-arithmetic", p=7)
    torch.manual_seed(1)
    m = make_model("transformer-preln", t.info, width=8, layers=1, heads=2).double()
    x, y = t.x_train[:16], t.y_train[:16]
    ln = m.blocks[0].ln1.weight
    v = torch.randn_like(ln)

    def grad_at(w):
        with torch.no_grad():
            ln.copy_(w)
        loss = nn.functional.cross_entropy(m(x), y)
        return torch.autograd.grad(loss, ln)[0]

    w0 = ln.detach().clone()
    loss = nn.functional.cross_entropy(m(x), y)
    (g,) = torch.autograd.grad(loss, ln, create_graph=True)
    (hv,) = torch.autograd.grad(g, ln, v)
    eps = 1e-5
    fd = (grad_at(w0 + eps * v) - grad_at(w0 - eps * v)) / (2 * eps)
    assert torch.allclose(hv, fd, rtol=1e-5, atol=1e-8)
