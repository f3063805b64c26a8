"""Depth shard loader throughput and format trade-offs, measured in one run.

    python benchmarks/loader_throughput.py                 # quick: 16 samples per size
    python benchmarks/loader_throughput.py --samples 48 --sizes 512x512 768x1024   # HxW

For each size HxW it renders synthetic samples at that size (the world is the content; the
renderer's own speed is also reported), then measures for each encoding (png/jpg x float16/float32):
bytes per sample and single-core decode time; and finally samples/s of one DataLoader worker
(``num_workers=0``: read + decode + random crop/scale/flip + collate, i.e. per core) through
``DepthShardDataModule`` with training transforms to the same size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ppd_lightning.data.codec import decode_sample, encode_sample
from ppd_lightning.data.datamodule import DepthShardDataModule
from ppd_lightning.data.raw.synthetic import render_scene
from ppd_lightning.data.shards import write_shard_atomic


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=16, help="samples rendered per size")
    ap.add_argument("--sizes", nargs="+", default=["512x512", "768x1024"], help="HxW list")
    ap.add_argument("--batches", type=int, default=6, help="loader batches timed (batch size 4)")
    args = ap.parse_args()
    print("CPU is shared with other jobs: treat the figures as lower bounds.")
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes:
            h, w = _size(text)
            t = time.perf_counter()
            scenes = [render_scene(0, i, h, w) for i in range(args.samples)]
            render = (time.perf_counter() - t) / args.samples
            print(f"\n== {h}x{w}: synthetic render {1000 * render:.0f} ms/sample ({1 / render:.1f}/s)")
            print(f"{'rgb':>4} {'depth':>8} {'KiB/sample':>11} {'decode ms':>10}")
            shards = {}
            for rgb_fmt in ("png", "jpg"):
                for dtype in ("float16", "float32"):
                    enc = [
                        encode_sample(f"k{i}", rgb, d, {**m, "dataset": "synthetic"}, sky=d <= 0,
                                      rgb_format=rgb_fmt, depth_dtype=dtype)
                        for i, (rgb, d, m) in enumerate(scenes)
                    ]  # fmt: skip
                    size = statistics.mean(sum(len(v) for k, v in s.items() if k != "__key__") for s in enc)
                    t = time.perf_counter()
                    for s in enc:
                        decode_sample(s)
                    dec = (time.perf_counter() - t) / len(enc)
                    print(f"{rgb_fmt:>4} {dtype:>8} {size / 1024:11.0f} {1000 * dec:10.1f}")
                    path = Path(tmp) / f"{h}x{w}-{rgb_fmt}-{dtype}-000000.tar"
                    write_shard_atomic(path, enc)
                    shards[(rgb_fmt, dtype)] = str(path)
            for (rgb_fmt, dtype), url in shards.items():
                if dtype != "float16":
                    continue
                dm = DepthShardDataModule(
                    train_sources=[{"urls": url}],
                    val_sources=None,
                    batch_size=4,
                    num_workers=0,
                    train_size=[h, w],
                    val_size=[h, w],
                    epoch_batches=args.batches + 1,
                    shuffle_buffer=0,
                )
                dm.setup("fit")
                it = iter(dm.train_dataloader())
                next(it)  # warm-up
                t = time.perf_counter()
                n = sum(b["image"].shape[0] for b in it)
                rate = n / (time.perf_counter() - t)
                print(f"loader, 1 worker, {rgb_fmt} + {dtype}, transforms to {h}x{w}: {rate:.1f} samples/s")


if __name__ == "__main__":
    main()
