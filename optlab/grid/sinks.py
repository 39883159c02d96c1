"""Metric sinks: mirror finished trials into the tools researchers already watch.

The JSON store (``RESULTS/trials/<id>.json``) stays the source of truth. A sink
is fed, by the grid driver, the stored record of every trial that finishes
(``write(record)``) and can be replayed over a whole results directory
(:func:`export`), so a sink added later or a driver killed mid-grid loses
nothing: re-export. Every sink skips a trial it already holds (write is
idempotent per trial id).

Built-ins (options in the spec's ``[sinks.NAME]`` table)::

    csv          RESULTS/sinks/metrics.csv, tidy: one row per trial x epoch x metric
    tensorboard  one run directory per trial (torch.utils.tensorboard), scalars per epoch + hparams
    mlflow       one MLflow run per trial (params = hyperparameters and run settings, metrics per epoch);
                 tracking_uri default sqlite:///RESULTS/mlflow.db, experiment default = results folder name
    wandb        one offline W&B run per trial under RESULTS/wandb (``wandb sync`` uploads later)
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

__all__ = [
    "Sink",
    "CSVSink",
    "TensorBoardSink",
    "MLflowSink",
    "WandbSink",
    "SINKS",
    "check_sinks",
    "make_sinks",
    "export",
    "SinkError",
    "scalar_metrics",
    "flat_params",
]


class SinkError(ValueError):
    pass


@runtime_checkable
class Sink(Protocol):
    """A mirror of finished trials. Constructed as ``cls(root, **options)`` (``root``: the results
    directory; options from the spec's ``[sinks.NAME]`` table); registered with ``optlab_register_sinks``."""

    name: ClassVar[str]

    def write(self, record: dict) -> None:
        """Mirror one stored trial record; a trial the sink already holds is skipped (idempotent)."""
        ...

    def close(self) -> None:
        """Flush and release whatever the sink holds open."""
        ...


def _require(module: str, extra: str = "tracking") -> None:
    if importlib.util.find_spec(module) is None:
        raise SinkError(
            f"this sink needs the '{module}' package: pip install 'optlab[{extra}]' "
            "(with -c constraints.txt to keep the CPU torch)"
        )


def scalar_metrics(row: dict) -> dict[str, float]:
    """The finite numeric metrics of one epoch row (the ``epoch`` counter itself excluded)."""
    out = {}
    for k, v in row.items():
        if k == "epoch" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def flat_params(record: dict) -> dict[str, str | float | int | bool]:
    """Hyperparameters (``hp.<name>``) and run settings of a trial, flattened to scalars for trackers."""
    cfg = record.get("config", {})
    out: dict = {}
    for k, v in sorted(cfg.get("hparams", {}).items()):
        out[f"hp.{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    for k, v in sorted(cfg.items()):
        if k == "hparams":
            continue
        out[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def _label(record: dict) -> str:
    c = record.get("config", {})
    hp = ",".join(f"{k}={v}" for k, v in sorted(c.get("hparams", {}).items()))
    return f"{c.get('optimizer')}[{hp}] {c.get('task')}/{c.get('model')} seed={c.get('seed')}"


# ------------------------------------------------------------------------ CSV
class CSVSink:
    """A tidy CSV: ``trial_id, task, model, optimizer, seed, status, hparams (JSON), epoch, metric, value``."""

    name = "csv"
    COLUMNS = ["trial_id", "task", "model", "optimizer", "seed", "status", "hparams", "epoch", "metric", "value"]

    def __init__(self, root: str | Path, path: str | None = None):
        self.path = Path(path) if path else Path(root) / "sinks" / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seen: set[str] = set()
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                self._seen = {r["trial_id"] for r in csv.DictReader(f)}

    def write(self, record: dict) -> None:
        tid = record["id"]
        if tid in self._seen:
            return
        c = record.get("config", {})
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.COLUMNS)
            ident = [
                tid,
                c.get("task"),
                c.get("model"),
                c.get("optimizer"),
                c.get("seed"),
                record.get("status"),
                json.dumps(c.get("hparams", {}), sort_keys=True),
            ]
            for row in record.get("metrics", []):
                for k, v in scalar_metrics(row).items():
                    w.writerow(ident + [row.get("epoch"), k, repr(v)])
        self._seen.add(tid)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- TensorBoard
class TensorBoardSink:
    """One TensorBoard run per trial in ``log_dir/<trial_id>`` (default ``RESULTS/tensorboard``):
    every epoch metric as a scalar at step = epoch, and the hyperparameters with the final
    metrics in the HParams plugin. ``tensorboard --logdir RESULTS/tensorboard`` shows them."""

    name = "tensorboard"

    def __init__(self, root: str | Path, log_dir: str | None = None):
        _require("tensorboard")
        self.log_dir = Path(log_dir) if log_dir else Path(root) / "tensorboard"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        run_dir = self.log_dir / record["id"]
        if run_dir.exists() and any(run_dir.glob("events.out.tfevents.*")):
            return
        metrics = record.get("metrics", [])
        with SummaryWriter(log_dir=str(run_dir)) as w:
            w.add_text("trial", f"{_label(record)} -- status {record.get('status')}", 0)
            for row in metrics:
                for k, v in scalar_metrics(row).items():
                    w.add_scalar(k, v, global_step=int(row.get("epoch", 0)))
            final = {f"final/{k}": v for k, v in (scalar_metrics(metrics[-1]) if metrics else {}).items()}
            params = {k: v for k, v in flat_params(record).items() if isinstance(v, (int, float, str, bool))}
            # the HParams plugin's summaries through this writer (add_hparams would open a second event file)
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(params, final):
                w.file_writer.add_summary(summary)
            for k, v in final.items():
                w.add_scalar(k, v, global_step=int(metrics[-1].get("epoch", 0)))

    def close(self) -> None:
        pass


# --------------------------------------------------------------------- MLflow
class MLflowSink:
    """One MLflow run per trial (tag ``optlab.trial_id``), in ``experiment`` at ``tracking_uri``.

    ``tracking_uri`` defaults to ``sqlite:///RESULTS/mlflow.db`` (any MLflow URI works: a
    tracking server's ``http://...``; MLflow 3's ``file:`` store is in maintenance mode and
    needs ``MLFLOW_ALLOW_FILE_STORE=true``). Browse with
    ``mlflow ui --backend-store-uri sqlite:///RESULTS/mlflow.db``.
    """

    name = "mlflow"
    BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch

    def __init__(self, root: str | Path, tracking_uri: str | None = None, experiment: str | None = None):
        _require("mlflow")
        from mlflow.tracking import MlflowClient

        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment = experiment or root.name
        exp = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)

    def _has(self, trial_id: str) -> bool:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`optlab.trial_id` = '{trial_id}'", max_results=1
        )
        return bool(runs)

    def write(self, record: dict) -> None:
        from mlflow.entities import Metric, Param

        tid = record["id"]
        if self._has(tid):
            return
        c = record.get("config", {})
        tags = {
            "optlab.trial_id": tid,
            "optlab.status": str(record.get("status")),
            "optimizer": str(c.get("optimizer")),
            "task": str(c.get("task")),
            "model": str(c.get("model")),
        }
        start_ms = int(1000 * (record.get("started") or 0)) or None
        run = self.client.create_run(self.experiment_id, start_time=start_ms, tags=tags, run_name=_label(record)[:250])
        rid = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat_params(record).items()]
        ts = start_ms or 0
        metrics = [
            Metric(k, v, ts, int(row.get("epoch", 0)))
            for row in record.get("metrics", [])
            for k, v in scalar_metrics(row).items()
        ]
        for i in range(0, max(len(params), 1), 100):  # at most 100 params per batch
            self.client.log_batch(rid, params=params[i : i + 100])
        for i in range(0, len(metrics), self.BATCH):
            self.client.log_batch(rid, metrics=metrics[i : i + self.BATCH])
        status = {"ok": "FINISHED", "diverged": "FINISHED"}.get(record.get("status"), "FAILED")
        end_ms = int(1000 * record["finished"]) if record.get("finished") else None
        self.client.set_terminated(rid, status=status, end_time=end_ms)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- W&B
class WandbSink:
    """One offline Weights & Biases run per trial under ``dir`` (default ``RESULTS/wandb``);
    ``wandb sync RESULTS/wandb/offline-run-*`` uploads them later. Never goes online."""

    name = "wandb"

    def __init__(self, root: str | Path, project: str | None = None, dir: str | None = None):
        _require("wandb")
        self.dir = Path(dir) if dir else Path(root) / "wandb"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.project = project or Path(root).resolve().name
        self._seen = {p.name.split("-")[-1] for p in self.dir.glob("wandb/offline-run-*")}

    def write(self, record: dict) -> None:
        import wandb

        tid = record["id"]
        if tid in self._seen:
            return
        run = wandb.init(
            mode="offline",
            project=self.project,
            dir=str(self.dir),
            id=tid,
            name=_label(record)[:120],
            config=flat_params(record),
            reinit="create_new",
            settings=wandb.Settings(silent=True),
        )
        try:
            for row in record.get("metrics", []):
                run.log(scalar_metrics(row), step=int(row.get("epoch", 0)))
            run.summary["status"] = record.get("status")
        finally:
            run.finish()
        self._seen.add(tid)

    def close(self) -> None:
        pass


SINKS = {"csv": CSVSink, "tensorboard": TensorBoardSink, "mlflow": MLflowSink, "wandb": WandbSink}


def check_sinks(table: dict | None, where: str = "sinks") -> list[tuple[type, dict]]:
    """A spec's ``[sinks]`` table -> ``[(cls, options)]``; unknown sinks and options are named with the valid ones.

    ``{name: {option: value}}``; ``true`` means default options, ``false`` leaves the sink out.
    """
    import inspect

    from optlab.optim.hparams import unknown_name
    from optlab.plugin import registry

    if not table:
        return []
    if not isinstance(table, dict):
        raise SinkError(f"{where}: expected a table of sinks, e.g. [sinks.tensorboard]; got {table!r}")
    out = []
    for name, opts in table.items():
        try:  # short or qualified (<plugin>:<name>)
            entry = registry.entry("sink", name)
        except registry.AmbiguousName as exc:
            raise SinkError(f"{where}.{name}: {exc}") from exc
        except registry.RegistryError:
            valid = registry.names("sink")
            raise SinkError(f"{where}.{name}: " + unknown_name("sink", name, valid, show_name=False)) from None
        if opts is False:
            continue
        if opts is True:
            opts = {}
        if not isinstance(opts, dict):
            raise SinkError(f"{where}.{name}: expected true or a table of options; got {opts!r}")
        valid = [n for n in inspect.signature(entry.item).parameters if n not in ("self", "root")]
        for k in opts:
            if k not in valid:
                raise SinkError(f"{where}.{name}.{k}: " + unknown_name("option", k, valid, show_name=False))
        out.append((entry.item, dict(opts)))
    return out


def make_sinks(root: str | Path, table: dict | None, where: str = "sinks") -> list[Sink]:
    """The sinks of a spec's ``[sinks]`` table, opened on the results directory ``root``."""
    return [cls(root, **opts) for cls, opts in check_sinks(table, where)]


def export(records: Iterable[dict], sinks: list[Sink]) -> int:
    """Feed every record to every sink (a replay of a results directory); returns the number of records."""
    n = 0
    for rec in records:
        for s in sinks:
            s.write(rec)
        n += 1
    for s in sinks:
        s.close()
    return n
