"""PixelPerfectVideoDepth: the release's window schedule, channel order and stitching, streaming in
bounded memory, parity with the official pipeline (slow), and the input errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import (
    pi3_checkpoint,
    reference_case,
    video_dit_checkpoint,
)

from ppd_lightning.errors import InputError
from ppd_lightning.flow import EulerSampler
from ppd_lightning.video import PixelPerfectVideoDepth
from ppd_lightning.weights.ppvd import load_pi3_semantics, load_video_dit

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed=0, **kw) -> PixelPerfectVideoDepth:
    dit = load_video_dit(video_dit_checkpoint(seed=seed), reference_from=3)
    semantics = load_pi3_semantics(pi3_checkpoint(decoder_dim=32, seed=seed))
    return PixelPerfectVideoDepth(dit, semantics, **kw)


def id_frames(T, H=6, W=8):
    """Frame i is constant: R = i, G = 100, B = 250 - i (so the ids and the channel order can be read)."""
    frames = np.zeros((T, H, W, 3), np.uint8)
    for i in range(T):
        frames[i] = (i, 100, 250 - i)
    return frames


def expected_windows(T):
    """The release's schedule, written out: pad with the last frame, windows every 13 frames, positions
    0, 1, 2 replaced by the previous window's positions 0, 8, 15."""
    ids = list(range(T))
    R = (T - 16) % 13
    if R:
        ids += [T - 1] * (13 - R)
    # The release stops here, which leaves T <= 3 frames short of one window (it returns nothing for
    # them); we pad the first window to 16 frames, as it does for every T from 4 to 15.
    ids += [T - 1] * (16 - len(ids))
    windows = []
    for start in range(0, len(ids) - 15, 13):
        w = ids[start : start + 16]
        if windows:
            prev = windows[-1]
            w = [prev[0], prev[8], prev[15]] + w[3:]
        windows.append(w)
    return windows


def true_depth(i):
    return 1.0 + 0.5 * i


class StubWindows:
    """Stands in for the sampler: reads the frame ids of each window, returns the true depth of each frame
    under a per-window affine distortion (which the stitching must undo)."""

    def __init__(self):
        self.windows, self.swapped = [], True

    def __call__(self, images, noise, steps=None):
        ids = (images[:, 2].mean(dim=(1, 2)) * 255).round().long().tolist()  # R went to channel 2
        blue = (images[:, 0].mean(dim=(1, 2)) * 255).round().long().tolist()
        self.swapped &= blue == [250 - i for i in ids]
        k = len(self.windows)
        self.windows.append(ids)
        d = torch.tensor([true_depth(i) for i in ids]).view(-1, 1, 1, 1).expand(-1, 1, *images.shape[-2:])
        return (d - 0.1 * k) / (1.0 + k)


@pytest.mark.parametrize("T", [1, 5, 16, 17, 28, 29, 30, 43])
def test_schedule_channel_order_and_stitching(T):
    model = tiny_model()
    stub = StubWindows()
    model.sample_window = stub
    depth = model.infer_video(id_frames(T))
    assert stub.windows == expected_windows(T)
    assert stub.swapped  # the weights see B, G, R
    assert depth.shape == (T, 6, 8) and depth.dtype == np.float32
    want = np.array([true_depth(i) for i in range(T)], np.float32)[:, None, None]
    np.testing.assert_allclose(depth, np.broadcast_to(want, depth.shape), rtol=1e-5, atol=1e-5)


def test_streaming_reads_at_most_one_window_ahead():
    model = tiny_model()
    model.sample_window = StubWindows()
    pulled = 0

    def frames():
        nonlocal pulled
        for f in id_frames(60):
            pulled += 1
            yield f

    ahead = []
    for j, _ in enumerate(model.iter_video(frames())):
        ahead.append(pulled - j)
    assert len(ahead) == 60
    assert max(ahead) <= model.window and ahead[0] == model.window
    assert ahead[16] == 13  # the second window needs 13 new frames


def test_progress_counts_frames():
    model = tiny_model()
    model.sample_window = StubWindows()
    counts = []
    model.infer_video(id_frames(30), progress=counts.append)
    assert counts == [16, 13, 1]


def _direct(model, frames, noise, steps):
    """The pipeline written out in numpy/float64 where it can be (one window at a time)."""
    windows = expected_windows(len(frames))
    S, (H, W) = model.dit.input_size, frames.shape[1:3]
    sampler = EulerSampler(steps)
    out, reference = {}, None
    for w in windows:
        x = torch.from_numpy(frames[w][..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
        tokens = model.semantics(x)
        with torch.no_grad():
            x0 = sampler.sample(
                lambda z, t, x=x, tokens=tokens: model.dit(torch.cat([z, x - 0.5], 1), tokens, t), noise
            )
        d = F.interpolate(x0 + 0.5, size=(H, W), mode="bilinear", align_corners=False)[:, 0].double().numpy()
        if reference is None:
            aligned = d
            first = d[0]
            new = dict(enumerate(w))
        else:
            A = np.stack([d[:3].ravel(), np.ones(d[:3].size)], 1)
            (s, t), *_ = np.linalg.lstsq(A, reference.ravel(), rcond=None)
            aligned = d * s + t
            new = {p: w[p] for p in range(3, 16)}
        for p, i in new.items():
            out.setdefault(i, aligned[p])
        reference = np.stack([first, aligned[8], aligned[15]])
    return np.stack([out[i] for i in range(len(frames))])


def test_tiny_models_match_the_pipeline_written_out():
    model = tiny_model(seed=1).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 12, 20, 3), dtype=np.uint8)
    noise = torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(2))
    depth = model.infer_video(frames, steps=2, noise=noise)
    assert depth.shape == (20, 12, 20) and np.isfinite(depth).all()
    np.testing.assert_allclose(depth, _direct(model, frames, noise, 2), rtol=1e-4, atol=1e-5)
    # one noise per video: the same noise gives the same depth; iter_video is infer_video frame by frame
    again = np.stack(list(model.iter_video(iter(list(frames)), steps=2, noise=noise)))
    np.testing.assert_array_equal(again, depth)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    np.testing.assert_array_equal(
        model.infer_video(frames[:3], steps=1, generator=g()),
        model.infer_video(frames[:3], steps=1, generator=g()),
    )


def test_input_errors():
    model = tiny_model()
    with pytest.raises(InputError, match="no frames"):
        model.infer_video(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match=r"frame 0: expected an \(H, W, 3\) uint8 RGB array, got float32"):
        model.infer_video(np.zeros((2, 8, 8, 3), np.float32))
    frames = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
    with pytest.raises(InputError, match=r"frame 1: size \(8, 10\) differs"):
        model.infer_video(frames)
    with pytest.raises(InputError, match="noise must be the initial latent"):
        model.infer_video(frames[:1], noise=torch.zeros(16, 1, 8, 8))
    with pytest.raises(ValueError, match="semantic width"):
        PixelPerfectVideoDepth(model.dit, load_pi3_semantics(pi3_checkpoint(embed_dim=64, decoder_dim=64)))
    with pytest.raises(ValueError, match="keyframes"):
        PixelPerfectVideoDepth(model.dit, model.semantics, keyframes=(0, 8))


@pytest.mark.slow  # 8 DiT forwards on 16 frames at 512x512: ~15-25 min on 2 CPU cores
def test_ppvd_pipeline_matches_the_official_code():
    tensors, meta = reference_case("ppvd_pipeline")
    sd = {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    dit = load_video_dit({k: v for k, v in sd.items() if k.startswith("dit_video.")})
    semantics = load_pi3_semantics({k: v for k, v in sd.items() if not k.startswith("dit_video.")})
    model = PixelPerfectVideoDepth(dit, semantics, steps=meta["sampling_steps"])
    assert model.sampler.timesteps().mul(1000).round().long().tolist() == meta["timesteps"]
    frames = tensors["input.frames"].numpy()
    assert list(frames.shape) == meta["frames_shape"]
    noise = torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(meta["noise_seed"]))
    windows = []
    sample = model.sample_window
    model.sample_window = lambda *a, **k: windows.append(sample(*a, **k)) or windows[-1]
    depth = model.infer_video(frames, noise=noise)
    assert len(windows) == meta["windows"]
    for k, w in enumerate(windows):
        ref = tensors[f"output.window_depth.{k}"]
        w = F.interpolate(w, size=ref.shape[-2:], mode="bilinear", align_corners=False)
        assert ((w - ref).norm() / ref.norm()).item() < 1e-5
    ref = tensors["output.depth"].numpy()
    assert depth.shape == ref.shape
    assert np.linalg.norm(depth - ref) / np.linalg.norm(ref) < 1e-5


def test_bf16_option_is_cuda_autocast_only():
    model = tiny_model(seed=1)
    frames = id_frames(4, 12, 12)
    noise = torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(0))
    want = model.infer_video(frames, steps=1, noise=noise)
    model.dtype = torch.bfloat16  # on the CPU the release's bf16 autocast does not apply: float32 results
    np.testing.assert_array_equal(model.infer_video(frames, steps=1, noise=noise), want)
    if torch.cuda.is_available():
        cuda = model.cuda()
        got = cuda.infer_video(frames, steps=1, noise=noise)
        assert np.abs(got - want).max() < 0.05 * (np.abs(want).max() + 1)
