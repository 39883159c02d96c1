"""Old module paths (before the subpackages of issue 22) keep importing, with a DeprecationWarning.

``import optlab.hparams`` (or ``from optlab.hparams import HParam``) finds a module that
forwards every attribute to the module's new home (``optlab.optim.hparams``) and warns once,
naming that home. This is an import hook, not a file per old path, so nothing of the old layout
stays in the tree. Library code imports only the new paths (the import-graph test checks it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: old module path -> new home(s); the first holds the module, later ones names split off it
MOVED: dict[str, tuple[str, ...]] = {
    "optlab.hparams": ("optlab.optim.hparams",),
    "optlab.selectors": ("optlab.optim.selectors",),
    "optlab.rules": ("optlab.optim.rules",),
    "optlab.hvp": ("optlab.optim.hvp",),
    "optlab.closures": ("optlab.optim.closures",),
    "optlab.compiled": ("optlab.optim.compiled",),
    "optlab.modeltools": ("optlab.optim.modeltools",),
    "optlab.optimizer": ("optlab.optim.optimizer",),
    "optlab.distributed": ("optlab.optim.ddp", "optlab.training.ranks"),
    "optlab.hookspecs": ("optlab.plugin.hookspecs",),
    "optlab.registry": ("optlab.plugin.registry",),
    "optlab.validation": ("optlab.plugin.registration",),
    "optlab.problems": ("optlab.plugin.kit_problems",),
    "optlab.hookdocs": ("optlab.plugin.hookdocs",),
    "optlab.plugins": ("optlab.builtins",),
    "optlab.plugins.builtins": ("optlab.builtins",),
    "optlab.plugins.baselines": ("optlab.builtins.baselines",),
    "optlab.plugins.estimators": ("optlab.builtins.estimators",),
    "optlab.plugins.models": ("optlab.builtins.models",),
    "optlab.plugins.presets": ("optlab.builtins.presets",),
    "optlab.plugins.selectors": ("optlab.builtins.selectors",),
    "optlab.plugins.steppers": ("optlab.builtins.steppers",),
    "optlab.plugins.tasks": ("optlab.builtins.tasks",),
    "optlab.train": ("optlab.training.loop", "optlab.training.config", "optlab.training.checkpoint"),
    "optlab.launch": ("optlab.training.launch",),
    "optlab.ddp_worker": ("optlab.training.ddp_worker",),
    "optlab.tasks": ("optlab.training.tasks",),
    "optlab.trial": ("optlab.grid.trial",),
    "optlab.search": ("optlab.grid.search",),
    "optlab.sinks": ("optlab.grid.sinks",),
    "optlab.executors": ("optlab.grid.executors", "optlab.grid.executors.base"),
    "optlab.results_cache": ("optlab.analysis.cache",),
}


class MovedModule(types.ModuleType):
    """An old module path: attribute reads go to the new home(s), in order."""

    _homes: tuple[str, ...] = ()

    def __getattr__(self, name: str):
        for home in self._homes:
            mod = importlib.import_module(home)
            if hasattr(mod, name):
                return getattr(mod, name)
        raise AttributeError(f"module {self.__name__!r} (moved to {self._homes[0]}) has no attribute {name!r}")

    def __dir__(self):
        return sorted({n for h in self._homes for n in dir(importlib.import_module(h))})

    def __call__(self, *args, **kwargs):
        # ``optlab.optimizer`` is also the package's factory function; importing the old module path
        # ``optlab.optimizer`` binds this module over it, so the module stays callable as the function
        if self.__name__ == "optlab.optimizer":
            from optlab.api import optimizer

            return optimizer(*args, **kwargs)
        raise TypeError(f"'module' object {self.__name__!r} is not callable")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        mod = MovedModule(spec.name)
        mod._homes = MOVED[spec.name]
        return mod

    def exec_module(self, module) -> None:
        new = module._homes[0]
        importlib.import_module(new)
        homes = " and ".join(module._homes)
        if module.__name__ == "optlab.plugins":
            module.__path__ = []  # a package, so ``optlab.plugins.<name>`` resolves through this hook
        warnings.warn(
            f"{module.__name__} is deprecated: it moved to {homes}; import from there "
            "(the old path will be removed in a future release)",
            DeprecationWarning,
            stacklevel=_caller_level(),
        )


def _caller_level() -> int:
    """Stack level of the first frame outside the import machinery (the ``import`` statement)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename.startswith("<frozen importlib") or frame.f_code.co_filename == __file__
    ):
        frame, level = frame.f_back, level + 1
    return level


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=fullname == "optlab.plugins")


_FINDER = _Finder()


def install() -> None:
    """Put the old-path finder first on ``sys.meta_path`` (once)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def old_attribute(name: str):
    """``optlab.<name>`` for an old module path that is not a real attribute (``optlab.hparams``)."""
    full = f"optlab.{name}"
    if full in MOVED:
        return importlib.import_module(full)
    raise AttributeError(f"module 'optlab' has no attribute {name!r}")


install()
