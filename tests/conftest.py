import os

import pytest
import torch

# Keep tests single-threaded per worker (pytest-xdist runs one worker per core).
torch.set_num_threads(1)
os.environ.setdefault("OPTLAB_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------- fault tests (tests/fixtures_blocking)
@pytest.fixture(scope="session")
def blocking_site(tmp_path_factory):
    """``fixtures_blocking`` (task ``gated``) installed as a plugin for subprocesses: a folder for
    ``PYTHONPATH`` (``plugin_site.env``)."""
    import fixtures_blocking
    import plugin_site

    return plugin_site.install(tmp_path_factory.mktemp("blocking-site"), {"blocking_test": fixtures_blocking})


@pytest.fixture
def gate(tmp_path):
    """A gate folder for this test, with ``fixtures_blocking`` registered in this process too (spec
    expansion and in-process reruns resolve task ``gated``). Released at teardown, so a run this test
    stopped never waits for long after a failure."""
    import fixtures_blocking

    from optlab.plugin import registry

    registry.register_plugin(fixtures_blocking, "blocking_test")
    g = fixtures_blocking.Gate(tmp_path / "gate")
    g.path.mkdir()
    yield g
    g.release()
    registry.reset()
