"""The plugin registry: a pluggy ``PluginManager`` over the ``optlab`` entry points.

Built-ins are loaded through the same entry-point group a third-party package
uses. Environment switches:

* ``OPTLAB_DISABLE_ENTRYPOINTS=1`` -- do not autoload entry points; only the
  built-ins (registered directly) and plugins added with :func:`register_plugin`.
* ``OPTLAB_PLUGINS=a,b`` -- load only the entry points with these names
  (``builtins`` is always loaded).
* ``OPTLAB_TRACE_HOOKS=1`` -- print every hook call to stderr.
* ``OPTLAB_STRICT_PLUGINS=1`` (or ``optlab --strict``) -- a plugin that fails to
  import, or an item that fails validation, is fatal (otherwise it is reported
  as a warning, listed by :func:`load_errors`, and skipped).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from optlab.optim.hparams import unknown_name

from . import hookspecs
from .registration import PluginError, validate_item

__all__ = ["KINDS", "Entry", "get", "items", "plugin_manager", "register_plugin", "reset", "load_errors"]

#: kind -> hook name
KINDS = {
    "selector": "optlab_register_selectors",
    "estimator": "optlab_register_estimators",
    "stepper": "optlab_register_steppers",
    "preset": "optlab_register_presets",
    "task": "optlab_register_tasks",
    "model": "optlab_register_models",
    "baseline": "optlab_register_baselines",
    "executor": "optlab_register_executors",
    "sink": "optlab_register_sinks",
}
BUILTINS = "optlab.builtins"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    item: Any
    plugin: str


_pm: pluggy.PluginManager | None = None
_items: dict[str, dict[str, Entry]] | None = None
_extra: list[tuple[str, object]] = []
_errors: list[str] = []


class RegistryError(ValueError):
    pass


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("optlab")
    pm.add_hookspecs(hookspecs)
    strict = _truthy("OPTLAB_STRICT_PLUGINS")
    allow = {s.strip() for s in os.environ.get("OPTLAB_PLUGINS", "").split(",") if s.strip()}
    _errors.clear()
    if not _truthy("OPTLAB_DISABLE_ENTRYPOINTS"):
        for ep in entry_points(group="optlab"):
            if allow and ep.name not in allow and ep.value != BUILTINS:
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not take the CLI down
                msg = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                if strict:
                    raise RegistryError(msg) from exc
                _errors.append(msg)
                warnings.warn(
                    msg + " -- skipped (set OPTLAB_STRICT_PLUGINS=1 to make this fatal)", RuntimeWarning, stacklevel=2
                )
    if pm.get_plugin("builtins") is None:
        pm.register(importlib.import_module(BUILTINS), name="builtins")
    for name, plugin in _extra:
        if pm.get_plugin(name) is None:
            pm.register(plugin, name=name)
    _pm = pm
    return pm


def load_errors() -> list[str]:
    """Plugins that failed to load and items that failed validation (and were skipped)."""
    _collect()
    return list(_errors)


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object in-process (tests, notebooks)."""
    _extra.append((name, plugin))
    reset(keep_extra=True)


def reset(keep_extra: bool = False) -> None:
    """Forget loaded plugins (re-read entry points and environment on next use)."""
    global _pm, _items
    _pm, _items = None, None
    if not keep_extra:
        _extra.clear()


def _collect() -> dict[str, dict[str, Entry]]:
    global _items
    if _items is not None:
        return _items
    pm = plugin_manager()
    trace = _truthy("OPTLAB_TRACE_HOOKS")
    strict = _truthy("OPTLAB_STRICT_PLUGINS")
    out: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name
            if trace:
                sys.stderr.write(f"[optlab trace] {hook_name}(register) -> plugin {plugin!r}\n")

            def register(name: str, item: Any, _kind=kind, _plugin=plugin) -> None:
                if trace:
                    sys.stderr.write(f"[optlab trace]   {_plugin}: register {_kind} {name!r}\n")
                if not isinstance(name, str) or not name:
                    raise RegistryError(f"plugin {_plugin!r} registered a {_kind} with invalid name {name!r}")
                if name in out[_kind]:
                    other = out[_kind][name].plugin
                    raise RegistryError(
                        f"{_kind} {name!r} is registered by two plugins: {other!r} and {_plugin!r}; rename one of them."
                    )
                try:
                    validate_item(_kind, name, item, _plugin)
                except PluginError as exc:  # one bad item must not take every command down
                    if strict:
                        raise
                    _errors.append(str(exc))
                    warnings.warn(
                        f"{exc} -- skipped (set OPTLAB_STRICT_PLUGINS=1 or pass --strict to make this fatal)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return
                out[_kind][name] = Entry(_kind, name, item, _plugin)

            impl.function(register)
    _items = out
    return out


def items(kind: str) -> dict[str, Entry]:
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; valid: {', '.join(KINDS)}")
    return dict(_collect()[kind])


def get(kind: str, name: str) -> Any:
    """The registered item ``name`` of ``kind``; unknown names list the valid ones."""
    reg = items(kind)
    if name not in reg:
        raise RegistryError(unknown_name(kind, name, reg, valid_label=f"Valid {kind}s", sort=True))
    return reg[name].item
