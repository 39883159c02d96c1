"""Hyperparameter declarations and validation.

Every stepper, curvature estimator and schedule declares its hyperparameters as
``{name: HParam(default, valid=..., doc=...)}``. ``validate`` checks a value
against that declaration and raises a ``ValueError`` that names the owner, the
bad value and what would be valid.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HParam",
    "validate",
    "resolve",
    "closest",
    "unknown_name",
    "nonneg",
    "positive",
    "unit_interval",
    "choice",
    "positive_int",
    "optional",
    "PART_DEFAULT",
    "defaults_from",
    "given",
]


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, a predicate, and words for the valid range."""

    default: Any
    check: Callable[[Any], bool] | None = None
    valid: str = "any value"
    doc: str = ""


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def nonneg(default: float, doc: str = "") -> HParam:
    return HParam(default, lambda x: _is_real(x) and x >= 0, "a finite number >= 0", doc)


def positive(default: float, doc: str = "") -> HParam:
    return HParam(default, lambda x: _is_real(x) and x > 0, "a finite number > 0", doc)


def unit_interval(default: float, doc: str = "") -> HParam:
    """A value in [0, 1) -- momenta and EMA coefficients."""
    return HParam(default, lambda x: _is_real(x) and 0 <= x < 1, "a number in [0, 1)", doc)


def positive_int(default: int | None, doc: str = "") -> HParam:
    return HParam(default, lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1, "an integer >= 1", doc)


def choice(default: Any, options: tuple, doc: str = "") -> HParam:
    return HParam(default, lambda x: x in options, "one of " + ", ".join(map(repr, options)), doc)


def optional(spec: HParam) -> HParam:
    """``spec`` or ``None`` (meaning: derived automatically)."""
    return HParam(spec.default, lambda x: x is None or spec.check(x), spec.valid + " or None", spec.doc)


def closest(name: str, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the option closest to ``name`` (difflib ratio >= 0.5), else ``""``."""
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def unknown_name(
    what: str,
    name: Any,
    valid: Iterable[str],
    *,
    valid_label: str = "Valid",
    sort: bool = False,
    show_name: bool = True,
) -> str:
    """The one message for a name that is not among ``valid``::

        unknown <what> <name!r>. Did you mean 'x'? <valid_label>: a, b, c.

    ``show_name=False`` leaves the name out where the caller's prefix already shows it
    (``run.protocol.evaluation_seed: unknown key. Did you mean ...``); an empty ``valid`` reads ``(none)``.

    Callers raise it with their own exception type, e.g.
    ``raise ValueError(unknown_name("engine", name, ENGINES))``.
    """
    options = [str(o) for o in valid]
    listed = sorted(options) if sort else options
    shown = f" {name!r}" if show_name else ""
    return f"unknown {what}{shown}.{closest(str(name), options)} {valid_label}: {', '.join(listed) or '(none)'}."


def validate(owner: str, name: str, value: Any, spec: HParam) -> Any:
    if spec.check is not None and not spec.check(value):
        raise ValueError(f"{owner}: invalid {name}={value!r}; expected {spec.valid}.")
    return value


def resolve(owner: str, specs: Mapping[str, HParam], given: Mapping[str, Any]) -> dict:
    """Defaults of ``specs`` overridden by ``given``; unknown names and bad values raise."""
    unknown = [k for k in given if k not in specs]
    if unknown:
        raise TypeError(f"{owner}: " + unknown_name("hyperparameter", unknown[0], specs, sort=True))
    out = {}
    for k, spec in specs.items():
        out[k] = validate(owner, k, given.get(k, spec.default), spec)
    return out


class _PartDefault:
    """The default of a preset keyword that the preset leaves to the part declaring the name."""

    def __repr__(self) -> str:
        return "PART_DEFAULT"

    def __reduce__(self):
        return "PART_DEFAULT"


#: a preset keyword's default meaning "the default the part declares" (see :func:`defaults_from`):
#: the value is declared once, by the stepper or estimator that reads it
PART_DEFAULT = _PartDefault()


def defaults_from(*parts: tuple[str, str]) -> Callable:
    """Declare where a preset's ``PART_DEFAULT`` keywords take their defaults from::

        @defaults_from(("stepper", "diag_newton"), ("estimator", "hutchinson"))
        def my_preset(model, lr=0.1, tau=PART_DEFAULT, probes=PART_DEFAULT): ...

    ``(kind, registered name)`` pairs, searched in order for the first part that declares the
    name; :func:`optlab.api.optimizer_entry` resolves them (and reports a name no part declares).
    """

    def mark(fn: Callable) -> Callable:
        fn.defaults_from = tuple(parts)  # type: ignore[attr-defined]
        return fn

    return mark


def given(**values: Any) -> dict[str, Any]:
    """``values`` without the ``PART_DEFAULT`` ones: what a preset forwards to a part, which fills
    in its own declared defaults for the rest."""
    return {k: v for k, v in values.items() if v is not PART_DEFAULT}
