"""The Parquet cache of analysis frames: identical frames, served without rebuilding while the trial
files are unchanged, rebuilt when any file is added, rewritten or removed, never caching a lossy frame."""

import math
import os
import time

import pandas as pd
import pytest

from optlab.analysis import data, load
from optlab.analysis.cache import cached_frames, fingerprint
from optlab.grid.spec import expand, load_spec
from optlab.store import Store

pytest.importorskip("pyarrow")

SPEC = """
name = "c"
seeds = [0, 1]
[run]
epochs = 5
[[setting]]
task = "digits"
model = "mlp-bn"
[[optimizer]]
name = "sgd-ph"
lr = [0.01, 0.1]
[[optimizer]]
name = "sgd"
lr = [0.01, 0.1, 1.0]
"""


def _record(t, status="ok"):
    lr = t.config["hparams"]["lr"]
    metrics = [
        {
            "epoch": e + 1,
            "train_loss": 1 / (e + 1 + lr),
            "train_acc": 0.5,
            "test_loss": 1 / (e + 2),
            "test_acc": 1 - math.exp(-(e + 1) * lr),
            "lr": lr,
            "time_epoch": 0.1,
            "hvp_count": e,
        }
        for e in range(5)
    ]
    if status == "diverged":
        metrics[-1]["train_loss"] = float("nan")
    return {
        "id": t.id,
        "config": t.config,
        "status": status,
        "error": None,
        "metrics": metrics,
        "resumed_from_epoch": None,
        "wall_time": 0.5,
        "started": 1.0,
        "finished": 2.0,
        "env": {},
    }


@pytest.fixture
def results(tmp_path):
    store = Store(tmp_path / "res").init(SPEC)
    trials = expand(load_spec(SPEC, is_text=True))
    for i, t in enumerate(trials[:-1]):
        store.write(t.id, _record(t, "diverged" if i == 3 else "ok"))
    return store, trials


def _cached(root, calls):
    def build():
        calls.append(1)
        return load(root, cache=False)

    return cached_frames(root, build, options={"skip_corrupt": False}, key_of=data.load)


def _same(a, b):
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)


def test_cache_serves_identical_frames_until_a_file_changes(results):
    store, trials = results
    calls = []
    first = _cached(store.root, calls)
    _same(first, load(store.root, cache=False))
    assert calls == [1] and (store.root / ".cache" / "epochs.parquet").exists()
    _same(_cached(store.root, calls), first)
    assert calls == [1]  # served from Parquet
    # a new trial -> rebuilt, and it is in the frames
    store.write(trials[-1].id, _record(trials[-1]))
    new = _cached(store.root, calls)
    assert calls == [1, 1] and trials[-1].id in set(new[1]["trial_id"])
    # a rewritten trial (same name; mtime and size change) -> rebuilt
    time.sleep(0.01)
    rec = _record(trials[0], "diverged")
    store.write(trials[0].id, rec)
    again = _cached(store.root, calls)
    assert calls == [1, 1, 1]
    _same(again, load(store.root, cache=False))
    # a removed trial -> rebuilt
    (store.trials / f"{trials[1].id}.json").unlink()
    gone = _cached(store.root, calls)
    assert calls == [1, 1, 1, 1] and trials[1].id not in set(gone[1]["trial_id"])


def test_fingerprint_sees_mtime_alone_and_ignores_temporary_files(results):
    store, trials = results
    before = fingerprint(store.trials)
    (store.trials / ".x.json.tmp1").write_text("{")
    assert fingerprint(store.trials) == before
    p = store.trials / f"{trials[0].id}.json"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # same bytes, new mtime
    assert fingerprint(store.trials) != before
    assert fingerprint(store.trials, salt="a") != fingerprint(store.trials, salt="b")


def test_options_and_builder_source_are_part_of_the_key(results):
    store, _ = results
    calls = []
    _cached(store.root, calls)
    cached_frames(
        store.root,
        lambda: (calls.append(1), load(store.root, skip_corrupt=True, cache=False))[1],
        options={"skip_corrupt": True},
        key_of=data.load,
    )
    assert calls == [1, 1]


def test_a_frame_parquet_cannot_hold_exactly_is_not_cached(results):
    store, _ = results
    mixed = pd.DataFrame({"a": pd.Series([1, "x", None], dtype=object)})
    with pytest.warns(RuntimeWarning, match="results cache not written"):
        out = cached_frames(store.root, lambda: (mixed, mixed), key_of=data.load)
    assert out[0] is mixed and not (store.root / ".cache" / "frames.key").exists()
    assert not [p for p in (store.root / ".cache").iterdir() if p.name.startswith(".")]  # no temporary left


def test_analysis_load_uses_the_cache_and_matches_the_json(results):
    store, trials = results
    cached = load(store.root)
    assert (store.root / ".cache" / "frames.key").exists()
    _same(cached, load(store.root, cache=False))
    _same(load(store.root), cached)  # served from Parquet
    store.write(trials[-1].id, _record(trials[-1]))
    assert trials[-1].id in set(load(store.root)[1]["trial_id"])  # rebuilt for the new file
