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

import contextlib
import contextvars
import importlib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from optlab.optim.hparams import unknown_name

from . import hookspecs
from .registration import PluginError, check_item

__all__ = [
    "KINDS",
    "SEP",
    "Entry",
    "RegistryError",
    "AmbiguousName",
    "get",
    "entry",
    "items",
    "entries",
    "names",
    "clashes",
    "owned_by",
    "qualify",
    "plugin_manager",
    "register_plugin",
    "reset",
    "load_errors",
    "rejected",
    "plugin_names",
]

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
#: separates a plugin's name from its item's name in a qualified name: ``builtins:sgd-ph``
SEP = ":"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    item: Any
    plugin: str

    @property
    def qualified(self) -> str:
        """``<plugin>:<item>``: the name that always resolves to this item."""
        return f"{self.plugin}{SEP}{self.name}"


_pm: pluggy.PluginManager | None = None
_items: dict[str, list[Entry]] | None = None
_extra: list[tuple[str, object]] = []
_errors: list[str] = []
#: (plugin, kind, name, message) of every plugin that failed to load (kind and name None) and every
#: item that failed validation, in the order met; :func:`rejected`
_rejected: list[tuple[str, str | None, str | None, str]] = []
#: the plugin whose code is running (a preset builder, a task or model function): its own items win
_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("optlab_registry_owner", default=None)


class RegistryError(ValueError):
    pass


class AmbiguousName(RegistryError):
    """A short name that several plugins provide; the message lists the qualified choices."""

    def __init__(self, what: str, name: str, choices: list[str]):
        self.name, self.choices = name, choices
        super().__init__(
            f"{what} {name!r} is ambiguous: {len(choices)} plugins provide it. Use a qualified name: "
            f"{', '.join(choices)} (`optlab plugins` lists every clash)."
        )


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
    _rejected.clear()
    if not _truthy("OPTLAB_DISABLE_ENTRYPOINTS"):
        for ep in entry_points(group="optlab"):
            if allow and ep.name not in allow and ep.value != BUILTINS:
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                pm.register(ep.load(), name=ep.name)
                _warn_if_unsupported(ep)
            except Exception as exc:  # a broken plugin must not take the CLI down
                msg = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                if strict:
                    raise RegistryError(msg) from exc
                _errors.append(msg)
                _rejected.append((ep.name, None, None, msg))
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


def _warn_if_unsupported(ep) -> None:
    """Warn when plugin ``ep``'s distribution declares an optlab version range (``optlab>=0.2,<0.3`` in
    its dependencies) that excludes the running optlab: it may use names this release changed."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        __version__ = version("optlab")
    except PackageNotFoundError:  # a source tree that is not installed: nothing to compare with
        return
    dist = getattr(ep, "dist", None)
    for text in (dist.requires or []) if dist is not None else []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.name.lower() == "optlab" and req.specifier and __version__ not in req.specifier:
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            warnings.warn(
                f"plugin {ep.name!r} ({dist.name} {dist.version}) declares {req}, but this is optlab "
                f"{__version__}: it may rely on names this release changed (see optlab's CHANGELOG.md); "
                f"`optlab plugins --check {ep.name}` shows whether its items still work",
                RuntimeWarning,
                stacklevel=3,
            )


def load_errors() -> list[str]:
    """Plugins that failed to load and items that failed validation (and were skipped)."""
    _collect()
    return list(_errors)


def rejected() -> list[tuple[str, str | None, str | None, str]]:
    """``(plugin, kind, name, message)`` of every plugin that failed to load (``kind`` and ``name``
    None) and every item that failed validation and was skipped."""
    _collect()
    return list(_rejected)


def plugin_names() -> list[str]:
    """The names of the loaded plugins (``builtins`` included), in registration order."""
    return [n for n, _ in plugin_manager().list_name_plugin()]


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


def _collect() -> dict[str, list[Entry]]:
    global _items
    if _items is not None:
        return _items
    pm = plugin_manager()
    trace = _truthy("OPTLAB_TRACE_HOOKS")
    strict = _truthy("OPTLAB_STRICT_PLUGINS")
    out: dict[str, list[Entry]] = {k: [] for k in KINDS}
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        seen: dict[str, Entry] = {}
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name
            if trace:
                sys.stderr.write(f"[optlab trace] {hook_name}(register) -> plugin {plugin!r}\n")

            def register(name: str, item: Any, _kind=kind, _plugin=plugin) -> None:
                if trace:
                    sys.stderr.write(f"[optlab trace]   {_plugin}: register {_kind} {name!r}\n")
                if not isinstance(name, str) or not name:
                    raise RegistryError(f"plugin {_plugin!r} registered a {_kind} with invalid name {name!r}")
                qualified = f"{_plugin}{SEP}{name}"
                if qualified in seen:  # one plugin, one name: a bug in that plugin (another plugin may reuse it)
                    raise RegistryError(
                        f"plugin {_plugin!r} registered {_kind} {name!r} twice; register each name once."
                    )
                try:
                    if SEP in name:
                        raise PluginError(
                            f"plugin {_plugin!r}: {_kind} {name!r} rejected: a name must not contain {SEP!r} "
                            f"(it separates the plugin from the item in qualified names such as "
                            f"'{_plugin}{SEP}{name.replace(SEP, '_')}')"
                        )
                    check_item(_kind, name, item, _plugin)
                except PluginError as exc:  # one bad item must not take every command down
                    if strict:
                        raise
                    _errors.append(str(exc))
                    _rejected.append((_plugin, _kind, name, str(exc)))
                    warnings.warn(
                        f"{exc} -- skipped (set OPTLAB_STRICT_PLUGINS=1 or pass --strict to make this fatal)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return
                seen[qualified] = Entry(_kind, name, item, _plugin)
                out[_kind].append(seen[qualified])

            impl.function(register)
    _items = out
    return out


def entries(kinds: str | Iterable[str]) -> list[Entry]:
    """Every registered item of ``kinds`` (one kind, or several searched together, e.g.
    ``("preset", "baseline")``), clashing short names included."""
    ks = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for k in ks:
        if k not in KINDS:
            raise ValueError(f"unknown registry kind {k!r}; valid: {', '.join(KINDS)}")
    reg = _collect()
    return [e for k in ks for e in reg[k]]


def _by_short(kinds: str | Iterable[str]) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for e in entries(kinds):
        out.setdefault(e.name, []).append(e)
    return out


def names(kinds: str | Iterable[str]) -> list[str]:
    """The names to use for ``kinds``, sorted: the short name where one plugin provides it, the
    qualified names where several do."""
    return sorted(
        group[0].name if len(group) == 1 else e.qualified for group in _by_short(kinds).values() for e in group
    )


def clashes(kinds: str | Iterable[str] | None = None) -> dict[tuple[str, str], list[str]]:
    """``{(kind, short name): [qualified names]}`` for every short name that several plugins provide
    (``kinds`` searched together; default: each kind on its own, plus presets with baselines)."""
    groups: list[str | Iterable[str]] = [*KINDS, ("preset", "baseline")] if kinds is None else [kinds]
    out: dict[tuple[str, str], list[str]] = {}
    for ks in groups:
        label = ks if isinstance(ks, str) else "/".join(ks)
        for short, group in _by_short(ks).items():
            if len({e.plugin for e in group}) < 2:
                continue
            if kinds is None and not isinstance(ks, str) and len({e.kind for e in group}) < 2:
                continue  # a clash within one kind is already listed under that kind
            out[(label, short)] = sorted(f"{e.qualified} ({e.kind})" if label != e.kind else e.qualified for e in group)
    return out


@contextlib.contextmanager
def owned_by(plugin: str | None) -> Iterator[None]:
    """Run plugin ``plugin``'s code: an ambiguous short name resolves to its own item when it has one."""
    token = _owner.set(plugin)
    try:
        yield
    finally:
        _owner.reset(token)


def entry(kinds: str | Iterable[str], name: str, *, what: str | None = None) -> Entry:
    """The entry ``name`` (short or ``<plugin>:<item>``) of ``kinds``.

    Unknown names list the valid ones; an ambiguous short name raises :class:`AmbiguousName`
    listing the qualified choices (unless the running plugin, :func:`owned_by`, provides one).
    """
    ks = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    what = what or "/".join(ks)
    if not isinstance(name, str):
        raise RegistryError(f"invalid {what} name {name!r}; expected a string")
    found = entries(ks)
    if SEP in name:
        plugin, _, short = name.rpartition(SEP)
        for e in found:
            if e.plugin == plugin and e.name == short:
                return e
        providers = sorted(e.qualified for e in found if e.name == short)
        loaded = plugin_manager().get_plugin(plugin) is not None
        if providers:
            where = f"plugin {plugin!r} provides no" if loaded else f"no plugin {plugin!r} is loaded, so no"
            raise RegistryError(f"{where} {what} {short!r}; provided by: {', '.join(providers)}.")
        plugins = sorted({e.plugin for e in found})
        if plugin not in plugins:
            raise RegistryError(
                f"unknown plugin {plugin!r} in {what} name {name!r}. Plugins with {what}s: "
                f"{', '.join(plugins) or '(none)'} (`optlab plugins` lists them)."
            )
        own = sorted(e.name for e in found if e.plugin == plugin)
        raise RegistryError(unknown_name(f"{what} of plugin {plugin!r}:", short, own, show_name=True))
    group = [e for e in found if e.name == name]
    if len(group) == 1:
        return group[0]
    if not group:
        raise RegistryError(unknown_name(what, name, names(ks), valid_label=f"Valid {what}s", sort=True))
    owner = _owner.get()
    mine = [e for e in group if e.plugin == owner]
    if len(mine) == 1:
        return mine[0]
    raise AmbiguousName(what, name, sorted(e.qualified for e in group))


def qualify(kinds: str | Iterable[str], name: str) -> str:
    """The qualified name ``<plugin>:<item>`` that ``name`` resolves to now."""
    return entry(kinds, name).qualified


def items(kind: str) -> dict[str, Entry]:
    """``{name: Entry}`` of ``kind`` under the names to use (:func:`names`): short where unique,
    qualified where several plugins provide the short name. Look a user's name up with
    :func:`entry` or :func:`get` (they also accept qualified names of unique items)."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; valid: {', '.join(KINDS)}")
    by_short = _by_short(kind)
    return {(e.name if len(by_short[e.name]) == 1 else e.qualified): e for e in entries(kind)}


def get(kind: str, name: str) -> Any:
    """The registered item ``name`` (short or qualified) of ``kind``; unknown names list the valid
    ones, an ambiguous short name lists the qualified choices."""
    return entry(kind, name, what=kind).item
