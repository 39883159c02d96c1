"""Search spaces and samplers: distributions (checked with scipy's KS test and closed forms),
determinism, equal budgets, Halton's space filling, and an Optuna study persisted and resumed."""

import math

import numpy as np
import pytest
from scipy import stats

from optlab.grid.search import (
    Choice,
    IntUniform,
    LogUniform,
    OptunaSearch,
    SearchError,
    Uniform,
    parse_search,
    parse_space,
    sample_configs,
    stream_seed,
)

BLOCK = {
    "lr": {"log_uniform": [1e-3, 1.0]},
    "momentum": {"uniform": [0.8, 0.99]},
    "hessian_momentum": {"choice": [0.0, 0.9]},
    "refresh": {"int_uniform": [1, 4]},
    "weight_decay": 5e-4,
}


def test_space_parsing_and_fixed_values():
    space = parse_space("opt[0]", BLOCK, "random")
    assert space == {
        "lr": LogUniform(1e-3, 1.0),
        "momentum": Uniform(0.8, 0.99),
        "hessian_momentum": Choice((0.0, 0.9)),
        "refresh": IntUniform(1, 4),
        "weight_decay": 5e-4,
    }
    assert parse_space("o", {"tau": [0.1, 1.0]}, "halton") == {"tau": Choice((0.1, 1.0))}
    assert parse_space("o", {"tau": [0.1, 1.0]}, "grid") == {"tau": [0.1, 1.0]}
    assert parse_space("o", {"betas": [0.9, 0.99]}, "random", list_valued=("betas",)) == {"betas": [0.9, 0.99]}


@pytest.mark.parametrize(
    "block,match",
    [
        (
            {"lr": {"log_uniformm": [1e-3, 1]}},
            r"o\.lr: unknown distribution 'log_uniformm'.*Did you mean 'log_uniform'",
        ),
        ({"lr": {"log_uniform": [0, 1]}}, r"o\.lr: log_uniform needs 0 < low < high"),
        ({"lr": {"uniform": [1, 0.5]}}, r"o\.lr: uniform needs \[low, high\] with low < high"),
        ({"k": {"int_uniform": [1, 2.5]}}, r"o\.k: int_uniform needs integer bounds"),
        ({"k": {"choice": []}}, r"o\.k: choice needs a non-empty list"),
        ({"k": {"uniform": [0, 1], "choice": [1]}}, r"o\.k: a search dimension is one of"),
        ({"k": []}, r"o\.k: empty axis"),
    ],
)
def test_bad_spaces_name_the_key(block, match):
    with pytest.raises(SearchError, match=match):
        parse_space("o", block, "random")


def test_grid_rejects_distributions_and_search_table_is_checked():
    with pytest.raises(SearchError, match=r"o\.lr: sampler 'grid' needs explicit values"):
        parse_space("o", {"lr": {"uniform": [0, 1]}}, "grid")
    with pytest.raises(SearchError, match=r"search\.sampler: unknown sampler 'halten'.*Did you mean 'halton'"):
        parse_search("s", {"sampler": "halten", "trials": 4})
    with pytest.raises(SearchError, match=r"search\.trial: unknown key.*Did you mean 'trials'"):
        parse_search("s", {"sampler": "random", "trial": 4})
    with pytest.raises(SearchError, match=r"search\.trials: sampler 'random' needs a per-optimizer budget"):
        parse_search("s", {"sampler": "random"})
    assert parse_search("s", None).sampler == "grid"


def test_grid_is_the_cartesian_product_with_fixed_values():
    space = parse_space("o", {"lr": [0.1, 0.2, 0.3], "hm": [0.0, 0.9], "wd": 1e-4}, "grid")
    got = sample_configs(space, "grid")
    assert len(got) == 6 and {(c["lr"], c["hm"]) for c in got} == {(a, b) for a in (0.1, 0.2, 0.3) for b in (0.0, 0.9)}
    assert all(c["wd"] == 1e-4 for c in got)


@pytest.mark.parametrize("sampler", ["random", "halton"])
def test_samplers_follow_their_distributions(sampler):
    space = parse_space("o", BLOCK, sampler)
    cfgs = sample_configs(space, sampler, n=512, seed=3)
    lr = np.array([c["lr"] for c in cfgs])
    mom = np.array([c["momentum"] for c in cfgs])
    # log10(lr) ~ U(-3, 0) and momentum ~ U(0.8, 0.99): Kolmogorov-Smirnov against the closed-form CDFs
    assert stats.kstest(np.log10(lr), stats.uniform(-3, 3).cdf).pvalue > 0.01
    assert stats.kstest(mom, stats.uniform(0.8, 0.19).cdf).pvalue > 0.01
    assert lr.min() >= 1e-3 and lr.max() <= 1.0
    for key, values in (("hessian_momentum", {0.0, 0.9}), ("refresh", {1, 2, 3, 4})):
        counts = {v: sum(c[key] == v for c in cfgs) for v in values}
        assert set(counts) == values and min(counts.values()) > 512 / len(values) * 0.75, counts
    assert all(isinstance(c["refresh"], int) and c["weight_decay"] == 5e-4 for c in cfgs)


def test_halton_fills_space_more_evenly_than_random():
    space = {"a": Uniform(0, 1), "b": Uniform(0, 1)}
    pts = {
        s: np.array([[c["a"], c["b"]] for c in sample_configs(space, s, n=64, seed=0)]) for s in ("random", "halton")
    }
    from scipy.stats import qmc

    assert qmc.discrepancy(pts["halton"]) < 0.5 * qmc.discrepancy(pts["random"])


@pytest.mark.parametrize("sampler", ["random", "halton"])
def test_deterministic_given_seed_and_independent_per_optimizer(sampler):
    space = parse_space("o", BLOCK, sampler)
    a = sample_configs(space, sampler, n=8, seed=stream_seed(0, 0, "sgd-ph"))
    b = sample_configs(space, sampler, n=8, seed=stream_seed(0, 0, "sgd-ph"))
    c = sample_configs(space, sampler, n=8, seed=stream_seed(0, 1, "adamw"))
    assert a == b and a != c and len(a) == 8


def _objective(cfg):
    """A closed-form objective with its maximum 1 at lr = 0.01, momentum = 0.9."""
    return math.exp(-((math.log10(cfg["lr"]) + 2) ** 2) - 50 * (cfg["momentum"] - 0.9) ** 2)


def test_optuna_tpe_study_persists_resumes_and_beats_random(tmp_path):
    pytest.importorskip("optuna")
    space = parse_space(
        "o", {"lr": {"log_uniform": [1e-4, 1.0]}, "momentum": {"uniform": [0.5, 0.99]}, "wd": 0.0}, "optuna"
    )
    db = tmp_path / "optuna.db"
    s = OptunaSearch(space, db, "grid/sgd", budget=40, seed=0, batch=4)
    asked = s.ask()
    assert len(asked) == 4 and all(c["wd"] == 0.0 for _, c in asked)
    for n, cfg in asked[:3]:
        s.tell(n, _objective(cfg))
    # a new driver (the old one was killed with one configuration asked but not told) resumes the study
    del s
    s = OptunaSearch(space, db, "grid/sgd", budget=40, seed=0, batch=4)
    assert s.counts() == {"complete": 3, "failed": 0, "running": 1}
    again = s.ask()
    assert again[0] == asked[3]  # the unfinished configuration is run again, same parameters
    while True:
        for n, cfg in again:
            s.tell(n, _objective(cfg) if n % 7 else None)  # some trials fail: they count against the budget
        if s.done():
            break
        again = s.ask()
        assert again
    c = s.counts()
    assert c["complete"] + c["failed"] == 40 and c["running"] == 0 and c["failed"] > 0
    assert s.ask() == []  # budget spent
    best_cfg, best = s.best()
    rand = max(
        _objective(cfg)
        for cfg in sample_configs(
            parse_space("o", {"lr": {"log_uniform": [1e-4, 1.0]}, "momentum": {"uniform": [0.5, 0.99]}}, "random"),
            "random",
            n=c["complete"],
            seed=0,
        )
    )
    assert best > 0.9 and best >= rand, (best, rand, best_cfg)
