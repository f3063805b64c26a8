import pytest
import torch


@pytest.fixture
def one_thread(request):
    """Tiny tensors: one thread (on a shared CPU, synchronising threads costs more than they gain); the
    slow fixture checks keep the configured threads."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
