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
