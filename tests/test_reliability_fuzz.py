"""Property tests (hypothesis) of the store and spec readers: malformed specs give a SpecError,
never a traceback; ``validate_record`` accepts every well-formed trial record (and the store reads
it back) and rejects every corruption of one with a reason naming what is wrong.

Split from ``test_reliability.py`` so that without hypothesis only these skip."""

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from optlab.grid.spec import SpecError, expand, load_spec  # noqa: E402
from optlab.store import SCHEMA_VERSION, STATUSES, Store  # noqa: E402
from optlab.store import record_problem as validate_record  # noqa: E402

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.just("digits"),
    st.just("sgd"),
    st.just("../x"),
)
_values = st.recursive(
    _scalars,
    lambda c: st.one_of(
        st.lists(c, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "lr", "epochs", "task", "model", "optimizer", "epoch", "x", "seed"]), c, max_size=3
        ),
    ),
    max_leaves=6,
)
_KEYS = ["name", "seeds", "run", "setting", "optimizer", "results", "protocol", "description", "bogus"]


def _toml(obj) -> str:
    """A small TOML writer for generated specs (inline tables/arrays)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if v == v and abs(v) != float("inf") else "nan"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v if x is not None) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items() if x is not None) + "}"
        return '""'

    return "\n".join(f"{k} = {val(v)}" for k, v in obj.items() if v is not None) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_KEYS), _values, max_size=6))
def test_fuzzed_specs_give_a_spec_error_never_a_traceback(spec):
    text = _toml(spec)
    try:
        expand(load_spec(text, is_text=True))
    except SpecError as exc:
        assert str(exc)
    except Exception as exc:  # anything else is a crash a user would see as a traceback
        pytest.fail(f"{type(exc).__name__}: {exc}\nspec:\n{text}")


# ------------------------------------------------------------------ trial records
_TID = "0123456789abcdef"
_numbers = st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True))
_metric_names = st.sampled_from(["train_loss", "test_acc", "val_acc", "lr", "hvp_count", "wall_time"])


@st.composite
def valid_records(draw) -> dict:
    """A well-formed trial record as the runner writes it (any status, schema version, stage)."""
    status = draw(st.sampled_from(STATUSES))
    epochs = draw(st.integers(1, 4))
    n_rows = epochs if status == "ok" else draw(st.integers(0, epochs))
    rows = []
    for i in range(n_rows):
        row = {"epoch": i + 1, **draw(st.dictionaries(_metric_names, _numbers, max_size=4))}
        if draw(st.booleans()):
            row["lrs"] = {"rule": draw(st.floats(0, 1))}
        rows.append(row)
    config = {
        "task": draw(st.text(min_size=1, max_size=6)),
        "model": draw(st.text(min_size=1, max_size=6)),
        "optimizer": draw(st.text(min_size=1, max_size=6)),
        "seed": draw(st.integers(0, 10)),
        "epochs": epochs,
        "hparams": draw(st.dictionaries(st.text(min_size=1, max_size=4), st.floats(0, 1), max_size=3)),
    }
    rec = {"status": status, "config": config, "metrics": rows, "error": None if status == "ok" else "x"}
    if draw(st.booleans()):
        rec["schema_version"] = draw(st.integers(1, SCHEMA_VERSION))
    if draw(st.booleans()):
        rec["id"] = _TID
    if draw(st.booleans()):
        rec["stage"] = draw(st.sampled_from(["tuning", "evaluation"]))
    return rec


def _set(path, value):
    """A corruption: ``rec`` with the value at ``path`` (keys/indices) replaced."""

    def apply(rec):
        rec = json.loads(json.dumps(rec))  # a deep copy
        target = rec
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
        return rec

    return apply


def _drop_row(rec):
    return {**rec, "metrics": rec["metrics"][:-1]}


# (corruption, applies to this record?, what the reason must say)
CORRUPTIONS = {
    "not_an_object": (lambda r: [r], lambda r: True, "expected a JSON object, got list"),
    "future_schema": (_set(["schema_version"], SCHEMA_VERSION + 1), lambda r: True, "unknown schema_version"),
    "bool_schema": (_set(["schema_version"], True), lambda r: True, "unknown schema_version"),
    "status": (_set(["status"], "running"), lambda r: True, "unknown status 'running'"),
    "other_id": (_set(["id"], "fedcba9876543210"), lambda r: True, "does not match the file name"),
    "no_config": (_set(["config"], None), lambda r: True, "missing 'config' object"),
    "task_not_str": (_set(["config", "task"], 3), lambda r: True, "config.task must be a string"),
    "optimizer_missing": (_set(["config", "optimizer"], None), lambda r: True, "config.optimizer must be a string"),
    "seed_not_int": (_set(["config", "seed"], "1"), lambda r: True, "config.seed must be an integer"),
    "hparams_list": (_set(["config", "hparams"], [1]), lambda r: True, "config.hparams must be an object"),
    "metrics_dict": (_set(["metrics"], {}), lambda r: True, "'metrics' must be a list"),
    "row_list": (_set(["metrics", 0], [1]), lambda r: bool(r["metrics"]), "metrics[0] must be an object"),
    "epoch_gap": (_set(["metrics", -1, "epoch"], 9), lambda r: bool(r["metrics"]), ".epoch must be"),
    "epoch_float": (_set(["metrics", 0, "epoch"], 1.0), lambda r: bool(r["metrics"]), "metrics[0].epoch must be 1"),
    "value_str": (_set(["metrics", 0, "test_acc"], "high"), lambda r: bool(r["metrics"]), "must be a number"),
    "value_bool": (_set(["metrics", 0, "train_loss"], True), lambda r: bool(r["metrics"]), "must be a number"),
    "ok_short": (_drop_row, lambda r: r["status"] == "ok", "epochs recorded"),
    "stage": (_set(["stage"], "final"), lambda r: True, "unknown stage 'final'"),
}


@settings(max_examples=300, deadline=None)
@given(valid_records())
def test_well_formed_records_validate_and_read_back(tmp_path_factory, rec):
    assert validate_record(rec, _TID) is None, rec
    store = Store(tmp_path_factory.mktemp("store")).init()
    store.write(_TID, rec)
    back = store.read(_TID)  # raises CorruptRecord for a file that does not validate
    assert back["status"] == rec["status"] and len(back["metrics"]) == len(rec["metrics"])


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@settings(max_examples=40, deadline=None)
@given(rec=valid_records())
def test_every_corruption_of_a_record_is_rejected_with_its_reason(rec, kind):
    corrupt, applies, reason = CORRUPTIONS[kind]
    hypothesis.assume(applies(rec))
    problem = validate_record(corrupt(rec), _TID)
    assert problem is not None and reason in problem, (kind, problem)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        _values,
        st.fixed_dictionaries(
            {"status": st.sampled_from(["ok", "failed", "x"]), "config": _values, "metrics": _values}
        ),
    )
)
def test_arbitrary_json_is_rejected_with_a_reason_unless_readers_can_use_it(rec):
    """Either a non-empty reason, or the shape every reader relies on (checked here independently)."""
    problem = validate_record(rec, "abc")
    if problem is not None:
        assert isinstance(problem, str) and problem
        return
    assert isinstance(rec, dict) and rec["status"] in STATUSES
    cfg = rec["config"]
    assert all(isinstance(cfg[k], str) for k in ("task", "model", "optimizer"))
    for i, row in enumerate(rec["metrics"]):
        assert row["epoch"] == i + 1 and not isinstance(row["epoch"], bool)
        assert all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in row.values())
    if rec["status"] == "ok" and isinstance(cfg.get("epochs"), int):
        assert len(rec["metrics"]) == cfg["epochs"]
