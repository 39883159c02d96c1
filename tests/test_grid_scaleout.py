"""The grid runner on the executor contract: `optlab grid run --executor ray` for real, [executor] /
[search] / [sinks] tables validated with named errors, sinks fed and caught up from the store, one
line per finished trial when stdout is not a terminal, and `optlab train --threads`."""

import csv
import json
import os
import subprocess
import sys

import pytest

from optlab.grid.run import grid_status, run_grid
from optlab.grid.spec import SpecError, expand, load_spec

SPEC = """
name = "so"
seeds = [0]
[run]
epochs = 1
batch_size = 256
model_options = {width = 8}
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd"
lr = [0.05, 0.1]
"""

ENV = {**os.environ, "OPTLAB_NO_PROGRESS": "0"}


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "optlab.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


@pytest.mark.parametrize(
    "extra,match",
    [
        ('[executor]\nname = "rey"\n', r"executor\.name: unknown executor 'rey'.*Did you mean 'ray'"),
        (
            '[executor]\nname = "local"\nworker = 2\n',
            r"executor\.worker: unknown option of executor 'local'.*"
            r"Did you mean 'workers'",
        ),
        ('[executor]\nname = "local"\nworkers = 0\n', r"executor: invalid workers=0"),
        ("[executor]\nname = 3\n", r"executor\.name: expected a string"),
        ("[sinks.tensorbord]\n", r"sinks\.tensorbord: unknown sink.*Did you mean 'tensorboard'"),
        ('[sinks.csv]\npth = "x"\n', r"sinks\.csv\.pth: unknown option.*Did you mean 'path'"),
        (
            '[search]\nsampler = "halten"\ntrials = 2\n',
            r"search\.sampler: unknown sampler 'halten'.*Did you mean 'halton'",
        ),
        ('[search]\nsampler = "random"\n', r"search\.trials: sampler 'random' needs a per-optimizer budget"),
        ("[serch]\n", r"unknown key 'serch'.*Did you mean 'search'"),
        ('executor = "ray"\n', r"executor: expected an \[executor\] table"),
    ],
)
def test_scaleout_tables_are_validated_with_named_errors(extra, match):
    text = extra + SPEC if not extra.startswith("[") else SPEC + extra
    with pytest.raises(SpecError, match=match):
        run_grid(load_spec(text, is_text=True), progress=False, results="/nonexistent/never-written")


def test_executor_table_runs_the_grid_and_sinks_catch_up_from_the_store(tmp_path):
    pytest.importorskip("submitit")
    pytest.importorskip("tensorboard")
    res = tmp_path / "res"
    spec = load_spec(SPEC + '[executor]\nname = "submitit"\ncluster = "debug"\n', is_text=True)
    counts = run_grid(spec, results=res, progress=False)
    assert counts["ok"] == 2 and (res / "submitit").is_dir()
    # sinks added after the run: the next run replays the store into them (nothing left to train)
    spec2 = load_spec(
        SPEC + '[sinks.csv]\n[sinks.tensorboard]\nlog_dir = "' + str(tmp_path / "tb") + '"\n', is_text=True
    )
    counts = run_grid(spec2, results=res, progress=False)
    assert counts["skipped_complete"] == 2 and "ok" not in counts
    ids = {t.id for t in expand(spec)}
    rows = list(csv.DictReader(open(res / "sinks" / "metrics.csv")))
    assert {r["trial_id"] for r in rows} == ids
    assert {p.name for p in (tmp_path / "tb").iterdir()} == ids
    with pytest.raises(ValueError, match=r"--workers sizes the local process pool; executor 'submitit'"):
        run_grid(spec, results=res, progress=False, workers=2)


def test_cli_logs_one_line_per_trial_without_carriage_returns(tmp_path):
    # (the same run on the ray executor through the CLI: the slow kill -9 test in test_executors.py)
    spec = tmp_path / "g.toml"
    spec.write_text(SPEC + "[sinks.csv]\n")
    res = tmp_path / "res"
    out = _cli(
        "grid", "run", str(spec), "--results", str(res), "--executor", "local", "--workers", "2", "--threads", "1"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and all(" ok " in line and "sgd[lr=" in line for line in lines), out.stdout
    assert {line.split("]")[0] for line in lines} == {"[1/2", "[2/2"}
    assert "\r" not in out.stdout + out.stderr
    assert grid_status(spec, results=res)["ok"] == 2
    rows = list(csv.DictReader(open(res / "sinks" / "metrics.csv")))
    assert len({r["trial_id"] for r in rows}) == 2  # the sink saw each trial as it finished
    bad = _cli("grid", "run", str(spec), "--results", str(res), "--address", "auto")
    assert bad.returncode == 2 and "--address applies to executor ray, not 'local'" in bad.stderr


def test_train_threads_and_plain_logs(tmp_path):
    out = _cli(
        "train",
        "--task",
        "digits",
        "--model",
        "mlp-bn",
        "--optimizer",
        "sgd",
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stdout + out.stderr  # no per-batch bar outside a terminal
    assert [line.split()[1] for line in out.stdout.splitlines() if line.startswith("epoch")] == ["1", "2"]
    bad = _cli("train", "--threads", "0", "--epochs", "1")
    assert bad.returncode == 2 and "invalid --threads 0" in bad.stderr


SEARCH_SPEC = """
name = "srch"
seeds = [0, 1]
[run]
epochs = 1
batch_size = 256
model_options = {width = 8}
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd"
lr = {log_uniform = [0.01, 0.5]}
momentum = [0.0, 0.9]
"""


def test_random_and_halton_give_each_optimizer_its_budget_deterministically():
    for sampler in ("random", "halton"):
        text = (
            SEARCH_SPEC + f'[[optimizer]]\nname = "sgd-ph"\nlr = {{uniform = [0.01, 0.5]}}\n'
            f'[search]\nsampler = "{sampler}"\ntrials = 5\nseed = 3\n'
        )
        trials = expand(load_spec(text, is_text=True))
        assert [t.id for t in trials] == [t.id for t in expand(load_spec(text, is_text=True))]
        per_arm = {
            a: {json.dumps(t.config["hparams"], sort_keys=True) for t in trials if t.arm == a}
            for a in ("sgd", "sgd-ph")
        }
        assert {a: len(c) for a, c in per_arm.items()} == {"sgd": 5, "sgd-ph": 5}  # equal budgets
        assert len(trials) == 2 * 5 * 2  # x seeds
        assert all(0.01 <= t.config["hparams"]["lr"] <= 0.5 for t in trials)
        assert {t.config["hparams"]["momentum"] for t in trials if t.arm == "sgd"} <= {0.0, 0.9}


def test_optuna_search_runs_its_budget_tells_validation_means_and_resumes(tmp_path):
    optuna = pytest.importorskip("optuna")
    res = tmp_path / "res"
    text = SEARCH_SPEC + '[search]\nsampler = "optuna"\ntrials = 3\nbatch = 2\n'
    counts = run_grid(load_spec(text, is_text=True), results=res, progress=False)
    assert counts["ok"] == 3 * 2
    study = optuna.load_study(study_name="srch/0-sgd", storage=f"sqlite:///{res / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    recs = [json.loads(p.read_text()) for p in (res / "trials").glob("*.json")]
    for t in done:  # the value told is the mean final validation accuracy over the configuration's seeds
        mine = [r for r in recs if r["config"]["hparams"] == t.params]
        assert len(mine) == 2
        assert t.value == pytest.approx(sum(r["metrics"][-1]["val_acc"] for r in mine) / 2)
    assert grid_status(load_spec(text, is_text=True), results=res)["ok"] == 6
    from optlab.analysis import expected_trials

    assert len(expected_trials(res)) == 6  # the report knows the trials the studies asked for
    again = run_grid(load_spec(text, is_text=True), results=res, progress=False)
    assert again["skipped_complete"] == 6 and "ok" not in again  # the study resumed with its budget spent
    more = run_grid(load_spec(text.replace("trials = 3", "trials = 4"), is_text=True), results=res, progress=False)
    assert more["ok"] == 2 and more["skipped_complete"] == 6  # a larger budget continues the same study
