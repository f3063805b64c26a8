"""Synthetic videos written with PyAV, and a stand-in with the video model's streaming contract."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np


def synthetic_frame(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame ``i`` of a smooth brightening gradient (survives H.264 nearly intact)."""
    y, x = np.mgrid[0:height, 0:width]
    r = x * 150 // width + 3 * i
    g = y * 150 // height + 2 * i
    b = np.full_like(x, 60 + 3 * i)
    return np.stack([r, g, b], -1).astype(np.uint8)


def write_synthetic_video(
    path, frames: int = 40, width: int = 64, height: int = 48, fps=24, faststart: bool = True
) -> Path:
    """An H.264 mp4 of ``frames`` synthetic frames (``faststart``: the index before the data, as phones and
    web encoders write it, so a cut-off file still opens)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(synthetic_frame(i, width, height), format="rgb24"))
            )
        container.mux(stream.encode(None))
    return Path(path)


def packets(path) -> list[tuple[int, int, int]]:
    """(byte offset, size, display frame index) of every video packet, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        step = 1 / (stream.time_base * stream.average_rate)
        return [(p.pos, p.size, round(p.pts / step)) for p in container.demux(stream) if p.size]


def decode_all(path) -> tuple[np.ndarray, object]:
    """Every frame of a video as RGB (independently of the package), and the stream's average rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), stream.average_rate


class FakeVideoModel:
    """The streaming contract of ``PixelPerfectVideoDepth.iter_video``: frames are taken lazily, one window
    (16) then a stride (13) at a time, and each frame's depth is yielded after its window; the depth here
    is a fixed function of the frame alone. Records the most frames it ever took ahead of what it gave."""

    window, stride = 16, 13

    def __init__(self, fail_after: int | None = None, exc=KeyboardInterrupt):
        self.fail_after, self.exc = fail_after, exc
        self.max_ahead = 0

    @staticmethod
    def depth_of(frame: np.ndarray) -> np.ndarray:
        return frame.astype(np.float32).mean(-1) / 255.0 + 0.25

    def iter_video(self, frames, steps=4, noise=None, progress=None):
        it, need, taken, given = iter(frames), self.window, 0, 0
        while True:
            chunk = list(itertools.islice(it, need))
            taken += len(chunk)
            self.max_ahead = max(self.max_ahead, taken - given)
            for frame in chunk:
                if self.fail_after is not None and given >= self.fail_after:
                    raise self.exc("simulated interruption")
                yield self.depth_of(frame)
                given += 1
            if len(chunk) < need:
                return
            need = self.stride

    def infer_video(self, frames, steps=4, noise=None, progress=None):
        return np.stack(list(self.iter_video(frames, steps, noise, progress)))
