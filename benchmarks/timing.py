"""Timing helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, which puts
this folder on the import path)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers what it claims to."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    warmup: int = 2,
    reduce: Callable[[list[float]], float] = min,
) -> float:
    """Seconds per call of ``fn``: ``reduce`` (best-of by default: on a shared machine the minimum is the
    least disturbed measurement) over ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return reduce(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of the best of ``repeats`` n x n matmuls: the peak is what the machine can do, not what it
    usually does; the other figures of a run are reported as a share of it."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / measure(lambda: a @ b, device, repeats)
