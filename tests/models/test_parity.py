"""Parity with the official Pixel-Perfect Depth code, against every fixture in $PPD_REFERENCE_DIR.

Everything (sizes, head counts, steps, timesteps, input sizes) is derived from the fixture files, so the
same test runs unchanged on other fixtures of the same format. The weights go through the real loaders,
from real .pth and .safetensors files.
"""

import json
import re

import pytest
import torch
from model_helpers import reference_dir
from safetensors.torch import load_file, save_file

from ppd_lightning.flow import official_timesteps
from ppd_lightning.models import PixelPerfectDepth
from ppd_lightning.official import load_dit, load_semantic_encoder

TOL = 1e-5


def _cases(kind):
    root = reference_dir()
    if not root.is_dir():
        pytest.fail(f"reference fixtures not found at {root}: set PPD_REFERENCE_DIR")
    cases = []
    for meta_path in sorted(root.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("case") == kind or (kind == "dit" and meta.get("case", "").startswith("dit")):
            cases.append(pytest.param(meta_path, id=meta_path.stem))
    return cases


def _load(meta_path):
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(meta_path.with_suffix(".safetensors")))
    state = {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    return meta, tensors, state


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _via_file(state, tmp_path, fmt, name):
    """Write a state dict in a real file format and hand back its path."""
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _encoder_overrides(meta):
    # Weights cannot tell the head count of a ViT; the fixture states it.
    return {"num_heads": meta["encoder_config"]["num_heads"]}


def _dit_overrides(meta, dit):
    cfg = meta["official_config"]
    assert dit.hidden_size == cfg["hidden_size"] and dit.depth == cfg["depth"]
    assert dit.num_heads == cfg["num_heads"] and dit.patch_size == cfg["patch_size"]
    assert dit.semantic_dim == cfg["semantic_dim"] and dit.mlp_ratio == cfg["mlp_ratio"]


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("meta_path", _cases("dit"))
def test_dit_velocity_matches_official(meta_path, fmt, tmp_path):
    meta, t, state = _load(meta_path)
    dit = load_dit(_via_file(state, tmp_path, fmt, "ppd"))
    _dit_overrides(meta, dit)
    x = t["input.x"]
    assert x.shape[0] == meta["batch"] and list(x.shape[-2:]) == meta["input_hw"]
    noisy, image = x[:, :1], x[:, 1:] + 0.5  # the fixture stores cat(noisy depth, image - 0.5)
    with torch.no_grad():
        v = dit(noisy, image, t["input.semantics"], t["input.timestep"].float() / 1000)
    assert v.shape == t["output.velocity"].shape
    assert _rel(v, t["output.velocity"]) < TOL


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("meta_path", _cases("semantics"))
def test_semantic_encoder_matches_official(meta_path, fmt, tmp_path):
    meta, t, state = _load(meta_path)
    enc = load_semantic_encoder(
        _via_file(state, tmp_path, fmt, "depth_anything_v2"), **_encoder_overrides(meta)
    )
    cfg = meta["encoder_config"]
    assert enc.embed_dim == cfg["embed_dim"] and len(enc.vit.blocks) == cfg["depth"]
    assert enc.patch_size == cfg["patch_size"]
    out = enc(t["input.image"])
    assert out.shape == t["output.semantics"].shape
    assert _rel(out, t["output.semantics"]) < TOL


@pytest.mark.parametrize("meta_path", _cases("pipeline"))
def test_pipeline_depth_matches_official(meta_path, tmp_path):
    meta, t, state = _load(meta_path)
    steps = meta["sampling_steps"]
    assert official_timesteps(steps).tolist() == meta["timesteps"]
    dit_sd = {k: v for k, v in state.items() if k.startswith("dit.")}
    enc_sd = {k: v for k, v in state.items() if k.startswith("pretrained.")}
    assert len(dit_sd) + len(enc_sd) == len(state)
    dit = load_dit(_via_file(dit_sd, tmp_path, "pth", "ppd"))
    _dit_overrides(meta, dit)
    enc = load_semantic_encoder(_via_file(enc_sd, tmp_path, "safetensors", "sem"), **_encoder_overrides(meta))
    model = PixelPerfectDepth(dit, enc)
    depth = model.sample(t["input.image"], steps=steps, noise=t["input.noise"])
    assert depth.shape == t["output.depth"].shape
    assert _rel(depth, t["output.depth"]) < TOL


def _released_shapes():
    path = reference_dir() / "official_checkpoint_keys.txt"
    if not path.is_file():
        pytest.fail(f"{path} not found: set PPD_REFERENCE_DIR")
    shapes, totals = {}, {}
    for line in path.read_text().splitlines():
        m = re.match(r"# total (DiT|encoder) parameters: (\d+)", line)
        if m:
            totals[m.group(1)] = int(m.group(2))
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shapes[key] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return shapes, totals


def test_full_size_models_have_the_released_keys_and_sizes():
    """The default CascadeSPDiT and the ViT-L encoder have exactly the released keys and shapes."""
    from ppd_lightning.models import CascadeSPDiT, SemanticEncoder

    shapes, totals = _released_shapes()
    with torch.device("meta"):
        dit = CascadeSPDiT()
        enc = SemanticEncoder.from_size("vitl")
    ours = {f"dit.{k}": tuple(v.shape) for k, v in dit.state_dict().items()}
    released_dit = {k: v for k, v in shapes.items() if k.startswith("dit.")}
    assert ours == released_dit
    assert sum(p.numel() for p in dit.parameters()) == totals["DiT"]
    released_enc = {k[len("pretrained.") :]: v for k, v in shapes.items() if k.startswith("pretrained.")}
    released_enc.pop("mask_token")  # DINOv2's masked-modelling token: unused at inference
    assert {k: tuple(v.shape) for k, v in enc.vit.state_dict().items()} == released_enc
    n_enc = sum(p.numel() for p in enc.vit.parameters())
    assert n_enc in (totals["encoder"], totals["encoder"] - 1024)  # with or without mask_token


# --- PPD-MoGe2: MoGe-2 semantics (moge2_semantics*.json, moge2_pipeline*.json) -------------------------


def _moge2_cases(prefix):
    root = reference_dir()
    if not root.is_dir():
        pytest.fail(f"reference fixtures not found at {root}: set PPD_REFERENCE_DIR")
    return [pytest.param(p, id=p.stem) for p in sorted(root.glob(f"{prefix}*.json"))]


def _moge2_file(meta, tensors, tmp_path):
    """The fixture's 'model.*' tensors and model_config, written as a real moge2.pt."""
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    path = tmp_path / "moge2.pt"
    torch.save({"model_config": meta["model_config"], "model": model}, path)
    return path


def _check_moge2_sizes(meta, enc):
    enc_cfg = meta["model_config"]["encoder"]
    assert enc.kind == "moge2" and enc.dim_out == enc_cfg["dim_out"]
    backbone = meta.get("backbone")
    if backbone:
        assert enc.embed_dim == backbone["embed_dim"] and len(enc.vit.blocks) == backbone["depth"]
        assert enc.patch_size == backbone["patch_size"]
        assert enc.vit.blocks[0].attn.num_heads == backbone["num_heads"]


@pytest.mark.parametrize("meta_path", _moge2_cases("moge2_semantics"))
def test_moge2_semantics_match_official(meta_path, tmp_path):
    meta = json.loads(meta_path.read_text())
    t = load_file(str(meta_path.with_suffix(".safetensors")))
    enc = load_semantic_encoder(_moge2_file(meta, t, tmp_path))  # sizes and heads from the weights
    _check_moge2_sizes(meta, enc)
    image = t["input.image"]
    if "input_hw" in meta:
        assert list(image.shape[-2:]) == meta["input_hw"]
    out = enc(image)
    assert out.shape == t["output.semantics"].shape
    assert _rel(out, t["output.semantics"]) < TOL


@pytest.mark.parametrize("meta_path", _moge2_cases("moge2_pipeline"))
def test_moge2_pipeline_depth_matches_official(meta_path, tmp_path):
    meta, t, state = _load(meta_path)
    steps = meta["sampling_steps"]
    if "timesteps" in meta:
        assert official_timesteps(steps).tolist() == meta["timesteps"]
    dit = load_dit(_via_file(state, tmp_path, "pth", "ppd_moge"))
    enc = load_semantic_encoder(_moge2_file(meta, t, tmp_path))
    _check_moge2_sizes(meta, enc)
    assert dit.semantic_dim == enc.dim_out
    depth = PixelPerfectDepth(dit, enc).sample(t["input.image"], steps=steps, noise=t["input.noise"])
    assert depth.shape == t["output.depth"].shape
    assert _rel(depth, t["output.depth"]) < TOL
