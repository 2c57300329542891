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


def int8_kernel_available(kernel: str) -> bool:
    """Whether this CPU runs the int8 GEMM path ``kernel`` ("amx", "vnni", "avx2", ...): the op refuses a path
    the CPU lacks with a ValueError saying so."""
    from pyquant import ops

    w = ops.pack_int8_weight(torch.ones(1, 1, dtype=torch.int8), 1.0)
    try:
        ops.int8_linear(torch.ones(1, 1, dtype=torch.uint8), 1.0, 0, w, _kernel=kernel)
    except ValueError as e:
        assert "lacks" in str(e)
        return False
    return True


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
