"""DiT_Video (PPVD's DiT): parity with the official code, the position embedding, the window's
attention pattern (reference tokens, temporal blocks), the ppvd.pth loader and its failure paths."""

import pytest
import torch
from model_helpers import (
    fixture_state_dict,
    reference_case,
    released_dit_checkpoint,
    tiny_video_dit,
    video_dit_checkpoint,
)

from ppd_lightning.errors import CheckpointError
from ppd_lightning.models.video_dit import VideoDiT, sincos_pos_embed
from ppd_lightning.weights.ppvd import infer_video_dit_config, load_video_dit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sizes_inferred_from_the_fixture_and_its_sincos_embedding():
    tensors, meta = reference_case("video_dit")
    sd = {k[len("dit_video.") :]: v for k, v in fixture_state_dict(tensors).items()}
    cfg = infer_video_dit_config(sd)
    assert (cfg["hidden_size"], cfg["depth"], cfg["num_heads"], cfg["patch_size"]) == (
        meta["hidden"], meta["depth"], meta["num_heads"], meta["patch_size"],
    )  # fmt: skip
    assert cfg["semantic_dim"] == meta["semantic_dim"]
    assert cfg["input_size"] == tensors["output.velocity_frames"].shape[-1]
    assert cfg["temporal_depth"] == 3  # the release's three temporal blocks, counted in the file
    grid = cfg["input_size"] // (2 * cfg["patch_size"])
    torch.testing.assert_close(
        sd["pos_embed"][0], sincos_pos_embed(cfg["hidden_size"], grid), rtol=0, atol=1e-6
    )


@pytest.mark.slow  # one 16-frame 512x512 forward: ~85 s on 2 CPU cores
def test_video_dit_matches_the_official_code():
    tensors, meta = reference_case("video_dit")
    dit = load_video_dit(fixture_state_dict(tensors))
    S = dit.input_size
    g = torch.Generator().manual_seed(meta["input_seed"])
    x = torch.randn(16, dit.in_channels, S, S, generator=g)
    semantics = torch.randn(16, dit.grid * dit.grid, meta["semantic_dim"], generator=g)
    with torch.no_grad():
        v = dit(x, semantics, torch.tensor(meta["timestep"] / 1000))
    out, ref = v[meta["velocity_frames"]], tensors["output.velocity_frames"]
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


def _inputs(dit, frames=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = dit.input_size
    x = torch.randn(frames, dit.in_channels, S, S, generator=g)
    return x, torch.randn(frames, dit.grid * dit.grid, dit.semantic_dim, generator=g)


def test_timestep_is_one_for_the_window():
    dit = tiny_video_dit().eval()
    x, s = _inputs(dit)
    with torch.no_grad():
        a = dit(x, s, torch.tensor(0.75))
        b = dit(x, s, torch.full((16,), 0.75))
    assert a.shape == (16, 1, 32, 32)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="one timestep"):
        dit(x, s, torch.linspace(0, 1, 16))


def test_frames_see_each_other_only_as_designed():
    """Without temporal blocks and reference tokens every frame is independent; the reference tokens
    make frames 0-2 visible to all; a temporal block mixes every frame."""
    x, s = _inputs(tiny_video_dit())
    t = torch.tensor(0.5)

    def run(**kw):
        dit = tiny_video_dit(**kw).eval()
        with torch.no_grad():
            full = dit(x, s, t)
            x2 = x.clone()
            x2[10] += 1.0  # perturb a non-reference frame
            other = dit(x2, s, t)
            x3 = x.clone()
            x3[1] += 1.0  # perturb a reference frame
            ref = dit(x3, s, t)
        changed = lambda a: (a - full).flatten(1).abs().amax(1) > 1e-6  # noqa: E731
        return changed(other), changed(ref)

    other, ref = run(temporal_depth=0, reference_from=4)  # no window interaction at all
    assert other.tolist() == [i == 10 for i in range(16)] and ref.tolist() == [i == 1 for i in range(16)]
    other, ref = run(temporal_depth=0, reference_from=2)  # reference tokens only
    assert other.tolist() == [i == 10 for i in range(16)] and ref.all()
    other, _ = run(temporal_depth=1, reference_from=4)  # a temporal block
    assert other.all()


def test_reference_tokens_are_pooled_fine_tokens_of_frames_0_to_2():
    dit = tiny_video_dit(input_size=64, reference_from=2).eval()  # fine grid 8x8 -> 2x2 per frame
    seen = {}
    block = dit.blocks[2]
    hook = block.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].clone()))
    x, s = _inputs(dit)
    with torch.no_grad():
        dit(x, s, torch.tensor(0.3))
    hook.remove()
    h = seen["x"]
    assert h.shape == (16, 64 + 3 * 4, dit.hidden_size)
    fine = h[:3, :64].reshape(3, 8, 8, -1)
    pooled = fine.reshape(3, 2, 4, 2, 4, -1).mean(dim=(2, 4)).reshape(1, 12, -1)
    torch.testing.assert_close(h[:, 64:], pooled.expand(16, -1, -1))


def test_input_checks():
    dit = tiny_video_dit().eval()
    x, s = _inputs(dit)
    with pytest.raises(ValueError, match=r"x must be \(frames, 4, 32, 32\)"):
        dit(x[..., :16, :16], s, torch.tensor(0.5))
    with pytest.raises(ValueError, match="semantics must be"):
        dit(x, s[:, :2], torch.tensor(0.5))
    with pytest.raises(ValueError, match="reference_from"):
        VideoDiT(
            hidden_size=32,
            depth=4,
            num_heads=2,
            input_size=32,
            semantic_dim=8,
            temporal_depth=1,
            reference_from=1,
        )
    with pytest.raises(ValueError, match="temporal_depth"):
        VideoDiT(hidden_size=32, depth=4, num_heads=2, input_size=32, semantic_dim=8, temporal_depth=3)


def test_tiny_ppvd_file_loads_and_computes_the_same(tmp_path):
    from ppd_lightning.official import load_video_dit as public

    sd = video_dit_checkpoint(seed=3)
    path = tmp_path / "ppvd.pth"
    torch.save(sd, path)
    dit = public(path, reference_from=3)
    assert not dit.training
    assert dit.config() | {} == tiny_video_dit().config()
    reference = tiny_video_dit(seed=3)
    reference.load_state_dict({k[len("dit_video.") :]: v for k, v in sd.items()})
    x, s = _inputs(dit)
    with torch.no_grad():
        torch.testing.assert_close(dit(x, s, torch.tensor(0.25)), reference.eval()(x, s, torch.tensor(0.25)))
    # without the prefix, as a state dict
    plain = {k[len("dit_video.") :]: v for k, v in sd.items()}
    assert load_video_dit(plain, reference_from=3).config() == dit.config()


def test_image_dit_and_foreign_files_are_one_clear_error(tmp_path):
    image = tmp_path / "ppd.pth"
    torch.save(released_dit_checkpoint(), image)
    with pytest.raises(CheckpointError, match=r"ppd\.pth: not a Pixel-Perfect Video Depth DiT.*load_dit"):
        load_video_dit(image)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.pth"):
        load_video_dit(text)
    sd = video_dit_checkpoint()
    sd["pi3.encoder.cls_token"] = torch.zeros(1)
    extra = tmp_path / "extra.pth"
    torch.save(sd, extra)
    with pytest.raises(CheckpointError, match=r"extra\.pth: unexpected keys outside 'dit_video\.\*'"):
        load_video_dit(extra)


@pytest.mark.parametrize(
    "key, shape, match",
    [
        ("dit_video.blocks.1.attn.qkv.weight", (96, 16), r"shape mismatches: blocks\.1\.attn\.qkv\.weight"),
        ("dit_video.pos_embed", (1, 5, 32), "inconsistent video DiT shapes"),
        ("dit_video.temporal_blocks.0.mlp.fc1.weight", (64, 32), "shape mismatches"),
    ],
)
def test_wrong_shapes_are_one_clear_error(tmp_path, key, shape, match):
    sd = video_dit_checkpoint()
    sd[key] = torch.zeros(shape)
    path = tmp_path / "ppvd.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"ppvd\.pth: " + match):
        load_video_dit(path, reference_from=3)
