import json
import os

import numpy as np
import pytest

from ppd_lightning import atomic


def test_writes_round_trip_and_create_parents(tmp_path):
    p = atomic.write_json(tmp_path / "a" / "b" / "r.json", {"z": 1, "a": [1.5]}, sort_keys=True)
    assert json.loads(p.read_text()) == {"z": 1, "a": [1.5]}
    assert p.read_text().index('"a"') < p.read_text().index('"z"')
    x = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    q = atomic.write_npy(tmp_path / "x.npy", x)
    y = np.load(q, allow_pickle=False)
    assert y.dtype == np.float32 and np.allclose(y, x, rtol=1e-6)
    assert atomic.write_text(tmp_path / "t.txt", "ä\n").read_text(encoding="utf-8") == "ä\n"
    assert sorted(os.listdir(tmp_path)) == ["a", "t.txt", "x.npy"]  # no temporaries left behind
    assert os.listdir(tmp_path / "a" / "b") == ["r.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = atomic.write_text(tmp_path / "results.json", "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]


def test_files_get_the_umask_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic.write_bytes(tmp_path / "depth.png", b"x")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644


def test_unserialisable_json_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        atomic.write_json(tmp_path / "m.json", {"bad": object()})
    assert not any(tmp_path.iterdir())
