"""``write_report(results, out)``: a self-contained HTML report (figures embedded, works offline), a
Markdown version with the figures beside it, and the CSV tables.

The package's rooms: :mod:`.build` reads the results once and lists the sections in order;
:mod:`.inputs` what every section reads (loaded once); :mod:`.verdict`, :mod:`.targets`,
:mod:`.sections` (measurements) and :mod:`.status` (what ran, where, what is missing) build one
section per function;
:mod:`.format` holds the section type and cell formatting; :mod:`.render` writes HTML, Markdown
and CSV.
"""

from __future__ import annotations

from .build import CSV_FILES, build_sections
from .format import Section
from .render import write_report
from .sections import AXES_ORDER
from .status import SELECTION_CSV, environment_note, environment_rows
from .verdict import VERDICT_COLUMNS, verdict_section, verdict_table

__all__ = [
    "write_report",
    "build_sections",
    "verdict_table",
    "verdict_section",
    "environment_rows",
    "environment_note",
    "Section",
    "CSV_FILES",
    "VERDICT_COLUMNS",
    "SELECTION_CSV",
    "AXES_ORDER",
]
