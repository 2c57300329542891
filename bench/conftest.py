import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # The targets are stated for 2 threads on the 2-core reference machine; PYQ_BENCH_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("PYQ_BENCH_THREADS", "2")))
    yield
