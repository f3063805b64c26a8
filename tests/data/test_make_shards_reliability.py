"""make_shards after a kill -9, a manifest that lost shards, raw files fixed after conversion, and
verify's flags for implausible depth and samples with no valid pixel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ppd_lightning.data.codec import encode_sample
from ppd_lightning.data.make_shards import main
from ppd_lightning.data.verify import verify_shards
from ppd_lightning.data.writer import write_shards
from ppd_lightning.data.shards import write_shard_atomic

REPO = Path(__file__).resolve().parents[2]


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # [state, ppid, ...] (the name may hold spaces)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and int(stat[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has exited


def _manifest_count(out: Path) -> int:
    manifest = json.loads((out / "manifest.json").read_text())
    return sum(s["samples"] for s in manifest["shards"].values())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_leaves_no_orphan_workers_and_the_rerun_manifest_matches_verify(tmp_path):
    out = tmp_path / "syn"
    n = 120
    cmd = [sys.executable, "-m", "ppd_lightning.data.make_shards", "synthetic", "--out", str(out)]
    cmd += ["--num-samples", str(n), "--height", "96", "--width", "128", "--samples-per-shard", "4"]
    cmd += ["--workers", "2", "--no-progress"]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while not list(out.glob("*.tar")) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            workers = _children(proc.pid)
            assert proc.poll() is None, "make_shards finished before it could be killed: make the run longer"
            assert len(workers) >= 2, workers
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [p for p in workers if _alive(p)]
    for p in orphans:  # do not leave them behind whatever the outcome
        os.kill(p, signal.SIGKILL)
    assert orphans == [], f"worker processes {orphans} outlived their killed parent"
    assert len(list(out.glob("*.tar"))) < n // 4  # it was killed mid-run
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    report = verify_shards(str(out), progress=False)
    assert report["bad"] == [] and report["samples"] == n
    assert _manifest_count(out) == report["samples"]
    assert not list(out.glob("*.tmp-*")) and not list(out.glob(".*.tmp"))


def test_manifest_is_rebuilt_from_the_shards_on_disk(tmp_path):
    out = tmp_path / "syn"
    opts = {"num_samples": 6, "height": 24, "width": 32, "seed": 0}
    kw = dict(options=opts, samples_per_shard=2, progress=False)
    write_shards("synthetic", out, **kw)
    manifest = json.loads((out / "manifest.json").read_text())
    lost = manifest["shards"].pop("synthetic-000001.tar")  # finished by a worker whose parent was killed
    (out / "manifest.json").write_text(json.dumps(manifest))
    mtime = (out / "synthetic-000001.tar").stat().st_mtime_ns
    (out / "synthetic-000002.tar").unlink()  # deleted by the user: written again
    manifest = write_shards("synthetic", out, **kw)
    assert sum(s["samples"] for s in manifest["shards"].values()) == 6 == _manifest_count(out)
    rebuilt = manifest["shards"]["synthetic-000001.tar"]
    assert rebuilt["rebuilt_from_disk"] and rebuilt["samples"] == lost["samples"] == 2
    assert rebuilt["depth_max"] == pytest.approx(lost["depth_max"], rel=1e-3)
    assert (out / "synthetic-000001.tar").stat().st_mtime_ns == mtime  # scanned, not rewritten
    # a truncated shard under a final name (e.g. copied in by hand) is converted again
    data = (out / "synthetic-000000.tar").read_bytes()
    (out / "synthetic-000000.tar").write_bytes(data[: len(data) // 2])
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shards"]["synthetic-000000.tar"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    write_shards("synthetic", out, **kw)
    assert verify_shards(str(out), progress=False)["samples"] == 6 == _manifest_count(out)


def test_fixed_or_added_raw_files_are_converted_again(tmp_path):
    seq = tmp_path / "raw/env/Easy/P000"
    (seq / "image_left").mkdir(parents=True)
    (seq / "depth_left").mkdir()
    for i in range(4):
        cv2.imwrite(str(seq / f"image_left/{i:06d}_left.png"), np.full((8, 8, 3), 50 * i, np.uint8))
        if i != 3:
            np.save(seq / f"depth_left/{i:06d}_left_depth.npy", np.full((8, 8), 1.0 + i, np.float32))
    out = tmp_path / "s"
    kw = dict(root=tmp_path / "raw", samples_per_shard=2, depth_dtype="float32", progress=False)
    write_shards("tartanair", out, **kw)
    assert _manifest_count(out) == 3  # 000003 has no depth file: skipped
    first = (out / "tartanair-000000.tar").stat().st_mtime_ns
    np.save(seq / "depth_left/000002_left_depth.npy", np.full((8, 8), 7.0, np.float32))  # a fixed raw file
    np.save(seq / "depth_left/000003_left_depth.npy", np.full((8, 8), 9.0, np.float32))  # the missing one
    manifest = write_shards("tartanair", out, **kw)
    assert (out / "tartanair-000000.tar").stat().st_mtime_ns == first  # unchanged sources: kept
    report = verify_shards(str(out), progress=False)
    assert report["samples"] == 4 == _manifest_count(out)
    assert report["depth_max"] == 9.0 and manifest["shards"]["tartanair-000001.tar"]["skipped"] == []


def _sample(key: str, depth: np.ndarray) -> dict:
    rgb = np.zeros((*depth.shape, 3), np.uint8)
    meta = {"dataset": "t", "fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0}
    return encode_sample(key, rgb, depth, meta, depth_dtype="float32")


def test_verify_flags_implausible_depth_and_samples_without_valid_pixels(tmp_path, capsys):
    good = np.full((4, 4), 5.0, np.float32)
    far = good.copy()
    far[0, 0] = 1e30
    empty = np.zeros((4, 4), np.float32)
    empty[1, 1] = np.nan
    write_shard_atomic(tmp_path / "s-000000.tar", [_sample("good", good), _sample("far", far)])
    write_shard_atomic(tmp_path / "s-000001.tar", [_sample("empty", empty)])
    report = verify_shards(str(tmp_path), progress=False)
    assert report["samples"] == 3 and report["bad"] == []
    assert len(report["flagged"]) == 2
    far_line = next(f for f in report["flagged"] if ": far:" in f)
    assert "s-000000.tar" in far_line and "1 valid pixels deeper than 1000 m" in far_line
    assert any(": empty: no valid depth pixel" in f for f in report["flagged"])
    assert main(["verify", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert printed.count("FLAG ") == 2 and "2 flagged" in printed
    # a higher limit accepts the far sample; the empty one stays flagged
    assert len(verify_shards(str(tmp_path), progress=False, max_depth=1e31)["flagged"]) == 1
    assert main(["verify", str(tmp_path / "s-000000.tar"), "--max-depth", "1e31"]) == 0
