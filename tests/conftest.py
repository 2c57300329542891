import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny tensors: avoids OpenMP oversubscription on a shared 2-core machine);
    a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as t in another memory layout."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        assert t.dim() == 4
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":
        # A strided slice of a larger buffer: neither contiguous nor dense.
        big = torch.empty([s * 2 for s in t.shape], dtype=t.dtype)
        view = big[tuple(slice(None, None, 2) for _ in t.shape)]
        view.copy_(t)
        return view
    if layout == "transposed":
        # Dense but permuted (memory order differs from logical order).
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    raise ValueError(layout)
