"""Videos in and out: decoding (count, rate, size, options), a folder of frames, every error path naming
the file and the frame, the writers (video, npz, 16-bit PNG) and their atomicity."""

import json
import re
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from video_fakes import decode_all, packets, synthetic_frame, write_synthetic_video

from ppd_lightning.errors import InputError, MissingFileError
from ppd_lightning.video import io


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_synthetic_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=40, fps=24)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- decoding ---------------------------------------------------------------------------------------


def test_decodes_every_frame_with_its_rate_and_size(clip):
    frames = io.VideoFrames(clip)
    assert frames.info.fps == Fraction(24) and frames.info.source_fps == Fraction(24)
    assert (frames.info.width, frames.info.height, frames.info.frames) == (64, 48, 40)
    decoded = list(frames)
    assert len(decoded) == 40
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in decoded)
    for i in (0, 17, 37):  # H.264 is lossy, but each frame is nearest to its own original
        err = [np.abs(decoded[i].astype(int) - synthetic_frame(j)).mean() for j in (i, i + 2)]
        assert err[0] < 3 < err[1]
    again = list(frames)  # iterable twice, the same frames (the second pass of predict_video)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, again))
    np.testing.assert_array_equal(np.stack(decoded), decode_all(clip)[0])


def test_fps_max_frames_and_max_res(clip):
    half = io.VideoFrames(clip, fps=12)
    got = list(half)
    assert half.info.fps == Fraction(12) and len(got) == 20 == half.info.frames
    every = np.stack(list(io.VideoFrames(clip)))
    np.testing.assert_array_equal(np.stack(got), every[::2])  # the first frame at or after each tick

    faster = io.VideoFrames(clip, fps=100)  # never invents frames: the source rate is kept
    assert faster.info.fps == Fraction(24) and len(list(faster)) == 40

    short = io.VideoFrames(clip, max_frames=7)
    assert short.info.frames == 7 and len(list(short)) == 7

    small = io.VideoFrames(clip, max_res=32, fps=8, max_frames=5)
    frames = list(small)
    assert (small.info.width, small.info.height) == (32, 24)
    assert len(frames) == 5 and frames[0].shape == (24, 32, 3)
    np.testing.assert_array_equal(frames[1], cv2.resize(every[3], (32, 24), interpolation=cv2.INTER_AREA))


def test_non_integer_rates_are_kept_exactly(tmp_path):
    path = write_synthetic_video(tmp_path / "ntsc.mp4", frames=5, fps=Fraction(30000, 1001))
    assert io.VideoFrames(path).info.fps == Fraction(30000, 1001)


def test_scaled_size_rounds_down_to_even_sides():
    assert io.scaled_size(1920, 1080, 512) == (512, 288)
    assert io.scaled_size(1080, 1920, 513) == (288, 512)
    assert io.scaled_size(64, 48, None) == (64, 48) == io.scaled_size(64, 48, 100)
    assert io.scaled_size(101, 33, 35) == (34, 10)


def test_folder_of_frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):  # natural order: frame_2 before frame_10
        cv2.imwrite(str(folder / f"frame_{i}.png"), synthetic_frame(i)[..., ::-1])
    (folder / "notes.txt").write_text("not a frame")
    frames = io.open_frames(folder, folder=True)
    got = list(frames)
    assert frames.info.fps == Fraction(30) and frames.info.frames == 12
    np.testing.assert_array_equal(np.stack(got), np.stack([synthetic_frame(i) for i in range(12)]))
    small = io.open_frames(folder, folder=True, fps=10, max_frames=3, max_res=32)
    assert small.info.fps == Fraction(10) and [f.shape for f in small] == [(24, 32, 3)] * 3

    cv2.imwrite(str(folder / "frame_12.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match=r"frame_12\.png: frame 12 of .*10x10.*64x48"):
        list(io.FolderFrames(folder))
    (folder / "frame_12.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"frame_12\.png: frame 12 of .* not a readable image"):
        list(io.FolderFrames(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no frames"):
        io.FolderFrames(empty)
    with pytest.raises(MissingFileError, match="nowhere"):
        io.FolderFrames(tmp_path / "nowhere")


# --- errors: one InputError naming the file and the frame ---------------------------------------------


def test_video_that_ends_early(tmp_path, clip):
    data = clip.read_bytes()
    offset = packets(clip)[20][0]  # cut where packet 20 starts: the index still promises 40 frames
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:offset])
    frames = io.VideoFrames(cut)
    assert frames.info.frames == 40
    with pytest.raises(
        InputError, match=rf"{re.escape(str(cut))}: the video ends early, at frame (\d+); its header says 40"
    ):
        list(frames)
    with pytest.raises(InputError) as e:
        list(frames)
    assert 15 <= int(re.search(r"at frame (\d+)", str(e.value))[1]) <= 20
    assert len(list(io.VideoFrames(cut, max_frames=10))) == 10  # the frames before the cut are fine


def test_truncated_file_without_index(tmp_path):
    plain = write_synthetic_video(tmp_path / "plain.mp4", frames=10, faststart=False)  # index at the end
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"{re.escape(str(cut))}: not a readable video"):
        io.VideoFrames(cut)


def test_corrupt_frame_is_named(tmp_path, clip):
    data = bytearray(clip.read_bytes())
    pos, size, frame = next(p for p in packets(clip) if p[2] == 10)
    data[pos : pos + 4] = b"\xff\xff\xff\xff"  # an impossible NAL unit length in frame 10's packet
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{re.escape(str(bad))}: frame 10 cannot be decoded"):
        list(io.VideoFrames(bad))


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 500])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}: not a readable video"):
        io.VideoFrames(path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}: no video stream \(streams: audio\)"):
        io.VideoFrames(path)


def test_missing_file_and_bad_options(tmp_path, clip):
    with pytest.raises(MissingFileError, match="missing.mp4"):
        io.VideoFrames(tmp_path / "missing.mp4")
    for kw in ({"fps": 0}, {"max_frames": 0}, {"max_res": 1}):
        with pytest.raises(InputError):
            io.VideoFrames(clip, **kw)


# --- writing ----------------------------------------------------------------------------------------


def test_written_video_decodes_with_its_rate(tmp_path):
    assert io.video_codec() in ("libx264", "mpeg4")
    out = tmp_path / "out.mp4"
    frames = [synthetic_frame(i, 31, 17) for i in range(9)]  # odd sizes: padded to even
    with io.writing_video(out, Fraction(30000, 1001)) as video:
        for f in frames:
            video.write(f)
    decoded, rate = decode_all(out)
    assert rate == Fraction(30000, 1001) and decoded.shape == (9, 18, 32, 3)
    assert np.abs(decoded[:, :17, :31].astype(int) - np.stack(frames)).mean() < 6
    with (
        pytest.raises(ValueError, match="frame 1 is 8x8"),
        io.writing_video(tmp_path / "mixed.mp4", 24) as video,
    ):
        video.write(frames[0])
        video.write(np.zeros((8, 8, 3), np.uint8))
    assert not (tmp_path / "mixed.mp4").exists()


def test_interrupted_video_leaves_nothing(tmp_path):
    out = tmp_path / "depth.mp4"
    with pytest.raises(KeyboardInterrupt), io.writing_video(out, 24) as video:
        for i in range(5):
            video.write(synthetic_frame(i))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"previous")  # an earlier result stays as it was
    with pytest.raises(RuntimeError), io.writing_video(out, 24) as video:
        video.write(synthetic_frame(0))
        raise RuntimeError("disk on fire")
    assert out.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def _store(tmp_path, depths):
    store = io.DepthStore(tmp_path)
    for d in depths:
        store.append(d)
    return store


def test_depth_store_npz_and_png16(tmp_path):
    rng = np.random.default_rng(0)
    depths = rng.uniform(0.2, 3.0, size=(6, 12, 10)).astype(np.float32)
    with _store(tmp_path, depths) as store:
        assert len(store) == 6 and store.shape == (12, 10)
        assert store.range() == (float(depths.min()), float(depths.max()))
        np.testing.assert_array_equal(np.stack(list(store)), depths)
        with pytest.raises(ValueError, match="depth frame 6 has shape"):
            store.append(np.zeros((3, 3), np.float32))

        npz = io.write_npz(tmp_path / "d.npz", store, fps=24.0)
        with np.load(npz) as z:
            np.testing.assert_array_equal(z["depths"], depths)
            assert z["depths"].dtype == np.float32 and float(z["fps"]) == 24.0
        half = io.write_npz(tmp_path / "h.npz", store, np.float16)
        with np.load(half) as z:
            assert z["depths"].dtype == np.float16
            np.testing.assert_array_equal(z["depths"], depths.astype(np.float16))

        lo, hi = store.range()
        folder = io.write_png16(tmp_path / "png16", store, lo, hi)
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f"{i:06d}.png" for i in range(6)] + ["range.json"]
        meta = json.loads((folder / "range.json").read_text())
        png = cv2.imread(str(folder / "000003.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == (12, 10)
        back = meta["min"] + png / 65535 * (meta["max"] - meta["min"])
        np.testing.assert_allclose(back, depths[3], atol=(hi - lo) / 65535)
    assert _leftovers(tmp_path) == []


class _FailingStore(io.DepthStore):
    """A store whose read-back is interrupted (Ctrl-C) after its first frame."""

    def __iter__(self):
        yield from list(super().__iter__())[:1]
        raise KeyboardInterrupt


def test_interrupted_folder_and_npz_leave_nothing(tmp_path):
    store = _FailingStore(tmp_path)
    for _ in range(3):
        store.append(np.ones((4, 4), np.float32))
    with store:  # (the store itself is an anonymous file: never visible in the folder)
        with pytest.raises(KeyboardInterrupt):
            io.write_png16(tmp_path / "png16", store, 0.0, 2.0)
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(KeyboardInterrupt):
            io.write_npz(tmp_path / "d.npz", store)
        assert list(tmp_path.iterdir()) == []


def test_replacing_dir_replaces_a_previous_folder(tmp_path):
    target = tmp_path / "frames"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with io.replacing_dir(target) as tmp:
        (tmp / "new.png").write_bytes(b"new")
        assert (target / "old.png").exists()  # the old one stays until the new one is complete
    assert [p.name for p in target.iterdir()] == ["new.png"] and _leftovers(tmp_path) == []
