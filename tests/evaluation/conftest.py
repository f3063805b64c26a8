"""Fixtures for the evaluation tests; the fake archives come from fake_benchmarks.py."""

import pytest
from fake_benchmarks import build, to_tar


@pytest.fixture
def fake_benchmark(tmp_path):
    def make(name: str, as_tar: bool = False, prefix: str = ""):
        folder = tmp_path / f"{name}_src"
        gts = build(name, folder)
        if as_tar:
            return to_tar(folder, tmp_path / f"{name}.tar", prefix), gts
        return folder, gts

    return make
