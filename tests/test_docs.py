"""The docs' code: every Python snippet of the plugin guide runs on its own (its imports
included), and the hook reference is generated from the hookspecs."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-a-plugin.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_the_guide_has_snippets():
    assert len(SNIPPETS) >= 8


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_every_plugin_guide_snippet_runs_standalone(i, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "plugins" / "optlab-fisher"))  # the worked example's package
    # each snippet imports the worked example afresh; the module (and the package attribute a fresh
    # import rebinds) is restored afterwards, so later tests keep the classes they imported
    monkeypatch.delitem(sys.modules, "optlab_fisher.plugin", raising=False)
    pkg = sys.modules.get("optlab_fisher")
    if pkg is not None and hasattr(pkg, "plugin"):
        monkeypatch.setattr(pkg, "plugin", pkg.plugin)
    namespace = {"__name__": f"snippet{i}"}
    exec(compile(SNIPPETS[i], f"{GUIDE.name}[snippet {i}]", "exec"), namespace)  # NameError = a missing import
    for name, fn in list(namespace.items()):  # test functions of the snippets run too
        if name.startswith("test_") and callable(fn):
            fn()
