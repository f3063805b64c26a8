"""Peak memory and speed of video depth against the video's length: streaming vs holding every frame.

    python benchmarks/video_memory.py                       # 64, 256, 1024 frames of 256x192
    python benchmarks/video_memory.py --lengths 64 256 --size 128x96

For each length a synthetic H.264 video is written, then each mode runs in a fresh subprocess (so its
peak resident memory, ``VmHWM`` of ``/proc/self/status``, is its own):

- ``streaming``: ``ppd_lightning.video.run.predict_video``, everything it writes (npz, depth video,
  side-by-side), decoding and inferring window by window;
- ``in-memory``: what the release does: decode every frame into one array, ``infer_video`` on it,
  stack the depths, write the npz.

Both use the real PPVD pipeline (Pi3 semantics, the video DiT with its temporal and reference blocks,
the window schedule and stitching) with tiny random weights (16 wide, 24 blocks, 32x32 windows): the
model's own memory is small and constant, so what grows is what the pipeline holds per frame. Peak RSS
includes the interpreter, torch and PyAV (the baseline of an empty run is printed first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def write_video(path: Path, frames: int, width: int, height: int, fps: int = 24) -> None:
    from ppd_lightning.video.io import writing_video

    y, x = np.mgrid[0:height, 0:width]
    with writing_video(path, fps) as video:
        for i in range(frames):
            r = (x * 200 // width + i) % 256
            g = (y * 200 // height + 2 * i) % 256
            b = np.full_like(x, (40 + 3 * i) % 256)
            video.write(np.stack([r, g, b], -1).astype(np.uint8))


def tiny_ppvd(seed: int = 0):
    import torch

    from ppd_lightning.models.pi3 import Pi3Semantics
    from ppd_lightning.models.semantics import SemanticEncoder
    from ppd_lightning.models.video_dit import VideoDiT
    from ppd_lightning.video import PixelPerfectVideoDepth

    torch.manual_seed(seed)
    side = 32
    vit = SemanticEncoder(
        embed_dim=16, depth=1, num_heads=1, img_size=side // 16 * 14, kind="pi3", registers=4
    )
    semantics = Pi3Semantics(vit, decoder_depth=2, num_heads=1)
    dit = VideoDiT(hidden_size=16, depth=24, num_heads=1, semantic_dim=semantics.dim_out, input_size=side)
    with torch.no_grad():  # random weights everywhere (the zero init would make a constant model)
        for p in dit.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return PixelPerfectVideoDepth(dit, semantics).eval()


def child(mode: str, video: Path, out: Path, steps: int) -> dict:
    import torch

    from ppd_lightning.video import io
    from ppd_lightning.video.run import VideoOptions, predict_video

    torch.set_num_threads(2)
    if mode == "baseline":  # imports and the model only
        tiny_ppvd()
        return {"peak_rss_mib": peak_rss_mib()}
    model = tiny_ppvd()
    t0 = time.perf_counter()
    if mode == "streaming":
        predict_video(video, model, out, VideoOptions(steps=steps, progress=False))
        frames = io.VideoFrames(video).info.frames
    else:
        everything = np.stack(list(io.VideoFrames(video)))
        depths = model.infer_video(everything, steps=steps)
        np.savez(out / "depths.npz", depths=depths)
        frames = len(depths)
    seconds = time.perf_counter() - t0
    return {"peak_rss_mib": peak_rss_mib(), "frames": frames, "seconds": seconds}


def run_child(mode: str, video: Path, out: Path, steps: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--video",
        str(video),
        "--out",
        str(out),
        "--steps",
        str(steps),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{mode} on {video} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--size", default="256x192", help="frame size WxH (default 256x192)")
    ap.add_argument("--steps", type=int, default=1, help="Euler steps per window (default 1)")
    ap.add_argument(
        "--modes", nargs="+", default=["streaming", "in-memory"], choices=["streaming", "in-memory"]
    )
    ap.add_argument("--child", choices=["baseline", "streaming", "in-memory"], help=argparse.SUPPRESS)
    ap.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.video, args.out, args.steps)))
        return

    width, height = (int(v) for v in args.size.lower().split("x"))
    per_frame = width * height * (3 + 4) / 2**20  # an RGB frame and its float32 depth
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = run_child("baseline", tmp, tmp, args.steps)["peak_rss_mib"]
        print(
            f"frames {width}x{height} ({per_frame:.2f} MiB per frame + depth held), {args.steps} step(s)/window"
        )
        print(f"baseline (imports + tiny model): peak RSS {base:.0f} MiB")
        print(f"| frames | {' | '.join(f'{m} peak RSS | {m} frames/s' for m in args.modes)} |")
        print("|---" * (1 + 2 * len(args.modes)) + "|")
        for n in args.lengths:
            video = tmp / f"synthetic_{n}.mp4"
            write_video(video, n, width, height)
            cells = []
            for mode in args.modes:
                out = tmp / f"{mode}_{n}"
                out.mkdir()
                r = run_child(mode, video, out, args.steps)
                assert r["frames"] == n, r
                cells += [f"{r['peak_rss_mib']:.0f} MiB", f"{n / r['seconds']:.1f}"]
            print(f"| {n} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
