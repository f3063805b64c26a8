import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_benchmarks import build
from hydra import compose, initialize_config_dir

from ppd_lightning.evaluation.metrics import METRIC_NAMES
from ppd_lightning.evaluation.run import evaluate

REPO = Path(__file__).resolve().parents[2]


def _save_preds(pred_dir: Path, gts: dict, fn) -> None:
    for name, gt in gts.items():
        p = pred_dir / Path(name).with_suffix(".npy")
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, fn(gt).astype(np.float32))


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        # the fake benchmarks' file names are not those of the pinned split lists: scan the root
        return compose(
            "evaluate", overrides=["num_workers=0", "progress=false", "benchmark.split=null", *overrides]
        )


def test_contract_command_marigold_nyuv2(tmp_path):
    root = tmp_path / "nyu"
    gts = build("nyuv2", root)
    _save_preds(tmp_path / "pred", gts, lambda d: (d - 1.0) / 2.0)  # affine in depth: exact after LS
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(REPO / "evaluate.py"),
        "protocol=marigold",
        "benchmark=nyuv2",
        f"benchmark.root={root}",
        f"predictions={tmp_path / 'pred'}",
        f"hydra.run.dir={out}",
        "benchmark.split=null",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["nyuv2"]
    assert set(metrics["nyuv2"]) == {*METRIC_NAMES, "n_images", "split"}
    assert metrics["nyuv2"]["split"] is None  # scanned, recorded as such
    assert metrics["nyuv2"]["n_images"] == 2
    assert metrics["nyuv2"]["abs_rel"] < 1e-5 and metrics["nyuv2"]["delta05"] == 1.0
    rows = list(csv.DictReader((out / "nyuv2_per_image.csv").open()))
    assert [r["name"] for r in rows] == sorted(gts)
    assert int(rows[0]["n_valid"]) == 426 * 560  # the Eigen crop (pixel (0, 0) lies outside it)
    assert "abs_rel" in res.stdout and "nyuv2" in res.stdout  # the printed table
    assert "nyuv2 (marigold)" in res.stderr  # the progress bar


def test_hand_computed_constant_prediction(tmp_path):
    gts = build("scannet", tmp_path / "scannet")
    _save_preds(tmp_path / "pred", gts, lambda d: np.full_like(d, 7.0))
    cfg = _cfg(
        "benchmark=scannet",
        f"benchmark.root={tmp_path / 'scannet'}",
        f"predictions={tmp_path / 'pred'}",
        f"output_dir={tmp_path / 'out'}",
        "panels=1",
    )
    res = evaluate(cfg)["scannet"]
    # constant prediction: LS gives scale 0, shift = mean(gt). Valid pixels: 16 columns of 1.5 m and
    # 16 of 3 m, minus pixel (2, 3) (1.5 m): mean = (383 * 1.5 + 384 * 3) / 767
    mean = (383 * 1.5 + 384 * 3.0) / 767
    expect_abs_rel = (383 * abs(mean - 1.5) / 1.5 + 384 * abs(mean - 3.0) / 3.0) / 767
    assert res["abs_rel"] == pytest.approx(expect_abs_rel, rel=1e-5)
    assert res["delta1"] == pytest.approx(0.0)  # ratios 1.5 and 1.33
    assert res["delta2"] == pytest.approx(1.0)
    assert res["n_images"] == 2
    assert len(list((tmp_path / "out" / "scannet" / "panels").rglob("*.png"))) == 1


def test_ppd_protocol_all_benchmarks_in_one_go(tmp_path):
    data = tmp_path / "data"
    names = ["nyuv2", "kitti", "eth3d", "scannet", "diode", "hypersim"]
    for name in names:
        gts = build(name, data / name)
        # ppd predictions: affine in log(d + 1)
        _save_preds(tmp_path / "pred" / name, gts, lambda d: 0.5 * np.log1p(np.nan_to_num(d, posinf=0)) + 0.1)
    cfg = _cfg(
        "protocol=ppd",
        f"benchmarks=[{','.join(names)}]",
        *(f"+splits.{n}=null" for n in names),  # fake file names: scan every root
        f"data_root={data}",
        f"predictions={tmp_path / 'pred'}",
        f"output_dir={tmp_path / 'out'}",
        "+protocol.overrides.eth3d.resize=[8,6]",
    )
    res = evaluate(cfg)  # eth3d predictions are at the original 12x16: resized like the ground truth
    assert list(res) == names
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(saved) == names
    assert {k: v for k, v in saved["kitti"].items() if k != "split"} == pytest.approx(
        {k: v for k, v in res["kitti"].items() if k != "split"}
    )
    for name in names:
        assert res[name]["n_images"] == (1 if name == "kitti" else 2), name
        assert res[name]["abs_rel"] < 1e-3, name
        assert res[name]["delta1"] == 1.0, name
        assert (tmp_path / "out" / f"{name}_per_image.csv").is_file()
    assert res["hypersim"]["edge_chamfer"] < 1e-3 and res["hypersim"]["n_images_edge"] == 2
    assert "edge_chamfer" not in res["nyuv2"]


def test_errors_are_clear(tmp_path):
    root = tmp_path / "nyu"
    gts = build("nyuv2", root)
    with pytest.raises(ValueError, match="exactly one prediction source"):
        evaluate(_cfg(f"benchmark.root={root}", f"output_dir={tmp_path / 'o'}"))
    (tmp_path / "pred").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no prediction for test/.*rgb_0000\.png: expected .*\.npy"):
        evaluate(
            _cfg(f"benchmark.root={root}", f"predictions={tmp_path / 'pred'}", f"output_dir={tmp_path / 'o'}")
        )
    with pytest.raises(FileNotFoundError, match="root .*missing does not exist"):
        evaluate(
            _cfg(
                f"benchmark.root={tmp_path / 'missing'}",
                f"predictions={tmp_path / 'pred'}",
                f"output_dir={tmp_path / 'o'}",
            )
        )
    assert gts


def _official_files(tmp_path):
    from safetensors.torch import save_file

    from ppd_lightning.models import CascadeSPDiT, SemanticEncoder

    dit = CascadeSPDiT(hidden_size=32, depth=2, num_heads=2, patch_size=4, semantic_dim=64, variant="cascade")
    enc = SemanticEncoder(embed_dim=64, depth=1, num_heads=1, img_size=56)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [*dit.parameters(), *enc.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    dit_path = tmp_path / "ppd.safetensors"
    save_file({f"dit.{k}": v.contiguous() for k, v in dit.state_dict().items()}, str(dit_path))
    enc_sd = {f"pretrained.{k}": v for k, v in enc.vit.state_dict().items()}
    enc_path = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(enc_sd, enc_path)
    return dit_path, enc_path


def test_official_weights_with_ensemble(tmp_path):
    gts = build("hypersim", tmp_path / "hypersim")
    dit_path, enc_path = _official_files(tmp_path)
    cfg = _cfg(
        "protocol=ppd",
        "benchmark=hypersim",
        f"benchmark.root={tmp_path / 'hypersim'}",
        f"official.dit={dit_path}",
        f"official.semantics={enc_path}",
        "steps=2",
        "ensemble=3",
        "infer_area=1024",
        "device=cpu",
        "save_predictions=true",
        f"output_dir={tmp_path / 'out'}",
    )
    res = evaluate(cfg)["hypersim"]
    assert res["n_images"] == 2 and np.isfinite(res["abs_rel"]) and "edge_chamfer" in res
    for name in gts:
        stem = Path(name).with_suffix("")
        pred = np.load(tmp_path / "out" / "hypersim" / "predictions" / f"{stem}.npy")
        spread = np.load(tmp_path / "out" / "hypersim" / "spread" / f"{stem}.npy")
        assert pred.shape == spread.shape == (48, 64) and (spread >= 0).all() and spread.max() > 0
        assert (tmp_path / "out" / "hypersim" / "spread" / f"{stem}.png").is_file()
    # the saved predictions score the same through the saved-predictions path
    cfg2 = _cfg(
        "protocol=ppd",
        "benchmark=hypersim",
        f"benchmark.root={tmp_path / 'hypersim'}",
        f"predictions={tmp_path / 'out' / 'hypersim' / 'predictions'}",
        f"output_dir={tmp_path / 'o2'}",
    )
    res2 = evaluate(cfg2)["hypersim"]
    for k in METRIC_NAMES:
        assert res2[k] == pytest.approx(res[k], rel=1e-6, abs=1e-9), k
