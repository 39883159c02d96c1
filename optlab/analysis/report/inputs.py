"""What every section reads, loaded once from the results directory (:func:`read_inputs`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from optlab.store import Store, StoreError

from ..data import hparam_columns, load
from ..plots import metric_label
from ..plots import save as save_figure
from .format import Section

__all__ = ["ReportInputs", "read_inputs", "stored_spec", "search_domains_of"]


@dataclass
class ReportInputs:
    """What every section reads: the results directory and store, the valid records and the files
    that did not validate, the tidy frames, tuned axes, the stored spec and its search domains, the
    selection and report metrics, and ``figure(section, fig, name, caption)`` that saves a figure."""

    results: Path
    store: Store
    records: list[dict]
    invalid: list
    epochs: pd.DataFrame
    trials: pd.DataFrame
    axes: list[str]
    spec: object
    domains: dict | None
    select: str
    metric: str
    figure: Callable[[Section, object, str, str], None]

    @property
    def select_label(self) -> str:
        return metric_label(self.select)


def stored_spec(results: Path):
    """The grid spec stored with the results (``spec.toml``), or None (absent, or not loadable here)."""
    path = results / "spec.toml"
    if not path.exists():
        return None
    try:
        from optlab.grid import load_spec

        return load_spec(path)
    except Exception:  # a spec this optlab cannot read (a plugin is missing): no spec-derived extras
        return None


def search_domains_of(spec) -> dict | None:
    """The tuned axes' domains of ``spec`` (for edges), or None without a (readable) spec."""
    if spec is None:
        return None
    from optlab.grid import search_domains

    try:
        return search_domains(spec)
    except Exception:
        return None


def read_inputs(results: Path, fig_dir: Path, select: str, metric: str) -> ReportInputs:
    """Load the results directory once: valid records (files that do not validate are listed, never
    read: :func:`optlab.store.record_problem`), tidy frames, tuned axes, the stored spec and its domains."""
    store = Store(results)
    if not store.trials.is_dir():
        next(store.iter_results(), None)  # raises the "does not exist" / "not a results directory" error
    good, invalid = store.scan()
    records = list(good.values())
    if not records:
        raise StoreError(f"{results}: no completed trials to report on (trials/ is empty)")
    epochs, trials = load(records)
    spec = stored_spec(results)

    def figure(sec: Section, fig, name: str, caption: str) -> None:
        png, svg = save_figure(fig, fig_dir / name)
        plt.close(fig)
        sec.figures.append((caption, str(png), str(svg)))

    return ReportInputs(
        results=results,
        store=store,
        records=records,
        invalid=invalid,
        epochs=epochs,
        trials=trials,
        axes=hparam_columns(trials),
        spec=spec,
        domains=search_domains_of(spec),
        select=select,
        metric=metric,
        figure=figure,
    )
