import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # The targets are stated for 2 threads on the 2-core reference machine.
    torch.set_num_threads(2)
    yield
