"""The whole MoGe-2 model (``moge2.pt`` geometry): parity with the release on every ``moge2_model`` fixture
(sizes from the files), the loader's round trip and failure paths, the focal/shift recovery on a known
camera, and the encoder shared with the PPD-MoGe2 semantics."""

import json
import math

import numpy as np
import pytest
import torch
from model_helpers import moge2_checkpoint, randomize, reference_dir, tiny_dit
from moge_helpers import moge2_geometry_checkpoint, save_moge2_geometry
from safetensors.torch import load_file

from ppd_lightning.errors import CheckpointError
from ppd_lightning.models import PixelPerfectDepth
from ppd_lightning.models.moge import MoGe2, recover_focal_shift, view_plane_uv
from ppd_lightning.official import load_dit, load_semantic_encoder
from ppd_lightning.weights.moge2 import load_moge2, semantic_encoder_from

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions: one thread is 10x faster than two on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cases():
    root = reference_dir()
    found = []
    if root.is_dir():
        for p in sorted(root.glob("*.json")):
            if json.loads(p.read_text()).get("case") == "moge2_model":
                found.append(pytest.param(p, id=p.stem))
    return found or [pytest.param(None, marks=pytest.mark.skip(reason=f"no moge2_model fixture in {root}"))]


def _rel(a, b) -> float:
    """||a - b|| / ||b|| over the finite entries of b (the same entries must be finite in a)."""
    a, b = a.double(), b.double()
    fin = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), fin)
    return ((a[fin] - b[fin]).norm() / b[fin].norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", params=_cases())
def case(request, tmp_path_factory):
    meta = json.loads(request.param.read_text())
    tensors = load_file(str(request.param.with_suffix(".safetensors")))
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    path = tmp_path_factory.mktemp("moge2") / "moge2.pt"
    torch.save({"model_config": meta["model_config"], "model": model}, path)  # a real moge2.pt
    return meta, tensors, path, load_moge2(path)


def test_forward_and_infer_match_the_release(case):
    meta, t, _, moge = case
    image = t["input.image"]
    out = moge.forward(image, num_tokens=meta["num_tokens"])
    B, _, H, W = image.shape
    assert out["points"].shape == (B, H, W, 3) and out["mask"].shape == (B, H, W)
    assert out["metric_scale"].shape == (B,)
    for k in ("points", "normal", "mask", "metric_scale"):
        assert _rel(out[k], t[f"output.forward.{k}"]) < TOL, k
    for name, fov in (("infer", None), ("infer_fov", meta["fov_x"])):
        res = moge.infer(image, num_tokens=meta["num_tokens"], fov_x=fov)
        assert torch.equal(res["mask"], t[f"output.{name}.mask"]), name
        for k in ("points", "depth", "intrinsics", "normal"):
            assert _rel(res[k], t[f"output.{name}.{k}"]) < TOL, (name, k)
        depth = res["depth"]
        assert torch.isinf(depth[~res["mask"]]).all() and torch.isfinite(depth[res["mask"]]).all()


def test_sizes_come_from_the_file(case):
    meta, _, path, moge = case
    cfg = meta["model_config"]
    assert moge.origin == {"weights": str(path)}
    assert moge.encoder.dim_out == cfg["encoder"]["dim_out"]
    if "backbone" in meta:
        assert moge.encoder.embed_dim == meta["backbone"]["embed_dim"]
        assert len(moge.encoder.vit.blocks) == meta["backbone"]["depth"]
    assert [m.in_channels for m in moge.neck.input_blocks] == cfg["neck"]["dim_in"]
    assert moge.scale_head[0].in_features == cfg["scale_head"]["dims"][0]
    assert moge.num_tokens_range == tuple(cfg["num_tokens_range"])


def test_one_file_gives_semantics_and_geometry(case):
    """PPD-MoGe2: the geometry model's encoder is the semantics (the same module, read once), with the
    numbers ``load_semantic_encoder`` gives from the same file."""
    _, t, path, moge = case
    enc = semantic_encoder_from(moge)
    assert enc is moge.encoder and enc.kind == "moge2"
    image = t["input.image"][:1, :, :64, :96]
    torch.testing.assert_close(enc(image), load_semantic_encoder(path)(image), rtol=0, atol=0)
    dit = randomize(tiny_dit(semantic_dim=enc.dim_out))
    ppd = PixelPerfectDepth(load_dit(dit.state_dict()), enc)
    assert ppd.encoder.vit is moge.encoder.vit
    with pytest.raises(TypeError, match="MoGe2"):
        semantic_encoder_from(enc)


def test_tiny_file_round_trip(tmp_path):
    ckpt = moge2_geometry_checkpoint()
    path = tmp_path / "moge2.pt"
    torch.save(ckpt, path)
    moge = load_moge2(path)
    again = load_moge2(ckpt)  # the loaded content works too
    assert (
        isinstance(moge, MoGe2) and not moge.training and not any(p.requires_grad for p in moge.parameters())
    )
    own = {f"{k}": v for k, v in moge.state_dict().items()}
    assert len(own) == len(ckpt["model"]) - 3  # mask_token, image_mean, image_std are not parameters
    image = torch.rand(2, 3, 30, 44, generator=torch.Generator().manual_seed(0))
    res = moge.infer(image, num_tokens=24)
    torch.testing.assert_close(res["depth"], again.infer(image, num_tokens=24)["depth"])
    assert res["points"].shape == (2, 30, 44, 3) and res["mask"].dtype == torch.bool
    k = res["intrinsics"]
    assert (
        k.shape == (2, 3, 3)
        and torch.all(k[:, :2, 2] == 0.5)
        and torch.all(k[:, 2] == torch.tensor([0, 0, 1.0]))
    )
    m = res["mask"]
    assert m.any()
    # force_projection: on the mask, points = depth * K^-1 [u, v, 1] at pixel centres
    v, u = torch.meshgrid(torch.arange(30) + 0.5, torch.arange(44) + 0.5, indexing="ij")
    x = (u / 44 - 0.5) / k[:, 0, 0, None, None] * res["depth"]
    y = (v / 30 - 0.5) / k[:, 1, 1, None, None] * res["depth"]
    torch.testing.assert_close(res["points"][..., 0][m], x[m], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res["points"][..., 1][m], y[m], rtol=1e-5, atol=1e-6)
    assert torch.isinf(res["points"][~m]).all() and torch.all(res["normal"][~m] == 0)
    # one image without a batch dimension
    single = moge.infer(image[0], num_tokens=24)
    torch.testing.assert_close(single["depth"], res["depth"][0], rtol=1e-4, atol=1e-6)


def test_fov_x_sets_the_focal(tmp_path):
    moge = load_moge2(moge2_geometry_checkpoint(normal=False, seed=3))
    image = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    res = moge.infer(image, num_tokens=20, fov_x=70.0)
    assert "normal" not in res  # a model without a normal head
    assert res["intrinsics"][0, 0, 0].item() == pytest.approx(0.5 / math.tan(math.radians(35)), rel=1e-6)
    a = 40 / 24
    assert res["intrinsics"][0, 1, 1].item() == pytest.approx(res["intrinsics"][0, 0, 0].item() * a, rel=1e-6)
    per_image = moge.infer(image.expand(2, -1, -1, -1), num_tokens=20, fov_x=torch.tensor([70.0, 50.0]))
    assert per_image["intrinsics"][1, 0, 0].item() == pytest.approx(
        0.5 / math.tan(math.radians(25)), rel=1e-6
    )


def test_autocast_option_keeps_the_geometry_in_float32():
    moge = load_moge2(moge2_geometry_checkpoint(seed=5))
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    ref = moge.infer(image, num_tokens=16)
    low = moge.infer(image, num_tokens=16, autocast_dtype=torch.bfloat16)
    assert low["depth"].dtype == torch.float32 and low["intrinsics"].dtype == torch.float32
    both = ref["mask"] & low["mask"]
    assert both.float().mean() > 0.5
    assert _rel(low["depth"][both], ref["depth"][both]) < 0.1


def test_focal_and_shift_are_recovered_from_a_perspective_point_map():
    """An affine point map of a known camera (focal f relative to the half diagonal, depth shifted by
    -s): the recovery returns f and s (scipy's least squares, ftol 1e-3)."""
    H, W, f, s = 48, 64, 1.7, 0.8
    uv = view_plane_uv(W, H)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    z = 2.0 + xx + 0.5 * torch.sin(6 * yy)  # a wavy surface, not a plane
    xy = uv * z[..., None] / f
    points = torch.cat([xy, (z - s)[..., None]], -1)[None]
    mask = torch.ones(1, H, W, dtype=torch.bool)
    mask[0, :5] = False
    focal, shift = recover_focal_shift(points, mask)
    assert focal.item() == pytest.approx(f, rel=1e-3) and shift.item() == pytest.approx(s, abs=1e-3)
    _, shift_known = recover_focal_shift(points, mask, focal=torch.tensor([f]))
    assert shift_known.item() == pytest.approx(s, abs=1e-3)
    focal, shift = recover_focal_shift(points, torch.zeros_like(mask))  # no points: the release's 1, 0
    assert (focal.item(), shift.item()) == (1.0, 0.0)


def test_view_plane_uv_spans_the_half_diagonal():
    uv = view_plane_uv(4, 2)
    a = 2.0
    assert uv.shape == (2, 4, 2)
    assert uv[0, -1, 0].item() == pytest.approx(a / math.sqrt(1 + a * a) * 3 / 4)
    assert uv[-1, 0, 1].item() == pytest.approx(1 / math.sqrt(1 + a * a) / 2)
    assert np.allclose(uv[..., 0].numpy(), uv[..., 0].numpy()[:1])  # u varies along the columns only


def _mutated(mutate):
    ckpt = moge2_geometry_checkpoint()
    mutate(ckpt)
    return ckpt


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c["model"].pop("neck.input_blocks.0.weight"),
            r"\('neck.\*'\): missing keys: input_blocks.0.weight",
        ),
        (lambda c: c["model"].pop("scale_head.4.bias"), r"scale_head.*missing keys: 4.bias"),
        (
            lambda c: c["model"].update({"points_head.output_blocks.4.weight": torch.zeros(2, 8, 1, 1)}),
            "points_head.*shape mismatches",
        ),
        (lambda c: c["model_config"].pop("neck"), "needs the neck and the points head"),
        (
            lambda c: c["model_config"].pop("mask_head"),
            "'mask_head.\\*' weights but model_config has no 'mask_head'",
        ),
        (lambda c: c["model_config"]["neck"].pop("res_block_in_norm"), "norm 'layer_norm' is not supported"),
        (lambda c: c["model_config"]["neck"].update(resamplers=["pixel_shuffle"] * 4), "unknown resampler"),
        (lambda c: c["model_config"]["neck"].update(colour="red"), r"unknown settings \['colour'\]"),
        (
            lambda c: c["model_config"]["neck"].update(dim_res_blocks=[16, 8]),
            "dim_in has 5 entries for 2 levels",
        ),
        (lambda c: c["model_config"]["scale_head"].update(dims=[64]), "'dims'"),
        (lambda c: c["model_config"].update(remap_output="cube"), "remap_output"),
        (lambda c: c["model_config"].update(num_tokens_range=[10]), "num_tokens_range"),
        (lambda c: c["model"].update({"necklace.weight": torch.zeros(1)}), "unexpected keys.*necklace"),
        (lambda c: c["model"].pop("encoder.backbone.norm.bias"), "missing keys: norm.bias"),
        (lambda c: c.pop("model_config"), "not a MoGe-2 checkpoint"),
    ],
)
def test_bad_files_fail_with_one_clear_error_naming_them(tmp_path, mutate, message):
    path = tmp_path / "moge2.pt"
    torch.save(_mutated(mutate), path)
    with pytest.raises(CheckpointError, match=message) as e:
        load_moge2(path)
    assert str(path) in str(e.value)


def test_foreign_and_corrupt_files(tmp_path):
    dino = tmp_path / "dinov2.pth"
    torch.save({k[len("encoder.backbone.") :]: v for k, v in moge2_checkpoint()["model"].items()
                if k.startswith("encoder.backbone.")}, dino)  # fmt: skip
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    cut = tmp_path / "cut.pt"
    save_moge2_geometry(cut)
    cut.write_bytes(cut.read_bytes()[:1000])
    semantics_only = tmp_path / "semantics_moge2.pt"
    torch.save(moge2_checkpoint(), semantics_only)  # stub neck tensors, a config without heads
    for path, message in (
        (dino, "not a MoGe-2 checkpoint"),
        (text, "cannot read checkpoint"),
        (cut, "cannot read checkpoint"),
        (tmp_path / "missing.pt", "no such checkpoint file"),
        (semantics_only, "model_config"),
    ):
        with pytest.raises(CheckpointError, match=message) as e:
            load_moge2(path)
        assert str(path) in str(e.value)
