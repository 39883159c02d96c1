"""Declared contracts and single declarations (issue 22): executors and sinks satisfy their
Protocols, ``optlab train``'s options come from :class:`RunConfig`'s field declarations, and a
grid spec's tables are parsed once into typed fields."""

from __future__ import annotations

import dataclasses

import pytest

from optlab.cli import build_parser
from optlab.grid.executors import EXECUTORS, Executor
from optlab.grid.search import SearchSettings
from optlab.grid.sinks import SINKS, Sink
from optlab.grid.spec import ExecutorTable, ProtocolSettings, SpecError, load_spec
from optlab.training.config import RunConfig, cli_fields


@pytest.mark.parametrize("name", sorted(EXECUTORS))
def test_builtin_executors_satisfy_the_executor_protocol(name):
    cls = EXECUTORS[name]
    assert cls.name == name
    assert isinstance(cls.__new__(cls), Executor)  # structural: name, run, default_threads


@pytest.mark.parametrize("name", sorted(SINKS))
def test_builtin_sinks_satisfy_the_sink_protocol(name):
    cls = SINKS[name]
    assert cls.name == name and isinstance(cls.__new__(cls), Sink)


def test_an_object_missing_a_method_is_no_executor():
    class Half:
        name = "half"

        def run(self, root, trials, threads=None):
            return iter(())

    assert not isinstance(Half(), Executor)


def test_train_options_are_the_declared_run_config_fields():
    declared = {f.name for f, _ in cli_fields()}
    assert {"task", "model", "optimizer", "seed", "epochs", "batch_size", "nproc", "compile"} <= declared
    args = build_parser().parse_args(
        ["train", "--epochs", "3", "--batch-size", "32", "--lr-schedule", "cosine", "--compile", "--nproc", "2"]
    )
    for f in dataclasses.fields(RunConfig):
        if f.name in declared:
            assert hasattr(args, f.name), f.name
    assert (args.epochs, args.batch_size, args.lr_schedule, args.compile, args.nproc) == (3, 32, "cosine", True, 2)
    defaults = build_parser().parse_args(["train"])
    for f, _ in cli_fields():  # the CLI's defaults are the dataclass's
        assert getattr(defaults, f.name) == f.default, f.name


SPEC = """
name = "typed"
seeds = [0, 1]
[protocol]
evaluation_seeds = 3
select = "val_loss"
[search]
sampler = "random"
trials = 2
seed = 5
[executor]
name = "local"
workers = 2
[sinks.csv]
[[optimizer]]
name = "sgd"
lr = {log_uniform = [0.01, 1.0]}
"""


def test_a_spec_is_parsed_once_into_typed_fields():
    spec = load_spec(SPEC, is_text=True)
    assert isinstance(spec.search, SearchSettings) and (spec.search.sampler, spec.search.trials) == ("random", 2)
    assert spec.executor == ExecutorTable("local", {"workers": 2})
    assert spec.protocol == ProtocolSettings([1000, 1001, 1002], "val_loss")
    assert spec.protocol["select"] == "val_loss"  # mapping access still works
    assert [cls.name for cls, _ in spec.sinks] == ["csv"]
    assert spec.block_space(0) is spec.block_space(0)  # parsed once, then reused


def test_a_bad_executor_option_fails_at_load_naming_it():
    with pytest.raises(SpecError, match=r"executor\.wokers"):
        load_spec(SPEC.replace("workers = 2", "wokers = 2"), is_text=True)
