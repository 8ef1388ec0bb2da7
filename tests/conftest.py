import os

import pytest
import torch

# Two cores and `pytest -n 2`: one thread per worker keeps them from fighting.
torch.set_num_threads(int(os.environ.get("HAX_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
