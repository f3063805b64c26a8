"""Depth from the working size to the full image size: bilinear (the release), nearest, edge-aware (ours).

    python benchmarks/edge_upsampling.py [--scenes 6] [--world 0] [--large 1] [--threads 1] [--repeats 7]
                                         [--blur 0] [--noise 0]

Renders ``--scenes`` scenes of the embedded procedural world (``data/raw/synthetic.py``, world seed
``--world``) at 2048x1536 and ``--large`` of them at 4032x3024. The "prediction" is the ground truth at
the working size (``fit_to_area(H, W, 1024*768, 16)``, the released model's area and size multiple),
rendered there, i.e. a perfect prediction at the working size; it is brought to full size by each method
and compared with the full-size ground truth. ``--blur`` (Gaussian, in full-size pixels) and ``--noise``
(Gaussian, per channel in [0, 1]) degrade the full-size image, as a camera's optics and sensor would: the
world renders point-sampled, noise-free edges (sensor noise 0.008), the easiest case for a guide. Sky (depth 0 in the world) is filled with 81 m in both,
the release's training convention for sky (``max_depth + 1``); metrics are taken on non-sky pixels.

Metrics (per image, then averaged over the scenes of one size):

- **edge AbsRel / edge δ1**: mean ``|p - g| / g`` and share of ``max(p/g, g/p) < 1.25`` on the edge
  region of ``evaluation.edges.edge_region`` (Canny on log depth, dilated by 3 px);
- **AbsRel (all)**: the same AbsRel on every non-sky pixel (smooth surfaces should stay as bilinear);
- **edge Chamfer**: ``evaluation.edges.edge_chamfer`` in metres, with the scene's intrinsics;
- **flying %**: the share of non-sky pixels whose depth is more than 5 % (relative) away from *every*
  ground-truth depth in its 3x3 neighbourhood at full size (``|p - g_q| > 0.05 g_q`` for all 9 ``q``,
  border replicated): a point between the near and the far surface, on neither;
- **ms**: best of ``--repeats`` calls on ``--threads`` CPU threads (default 1), from the working-size depth
  to the full-size float32 depth. "edge" gets the full-size uint8 RGB image (numpy, as ``predict`` reads it)
  and resizes the guide itself; "edge, guide given" gets the float image and the working-size image the
  depth was predicted from, as ``PixelPerfectDepth.infer`` calls it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import measure  # noqa: E402

from ppd_lightning.data.raw.synthetic import MAX_DEPTH, render_scene  # noqa: E402
from ppd_lightning.evaluation.edges import edge_chamfer, edge_region  # noqa: E402
from ppd_lightning.geometry import intrinsics_matrix  # noqa: E402
from ppd_lightning.models.ppd import TRAIN_AREA, fit_to_area  # noqa: E402
from ppd_lightning.upsampling import RTOL, SIGMA, edge_aware_upsample, resize_depth  # noqa: E402

SKY_DEPTH = MAX_DEPTH + 1.0
FLYING_RTOL = 0.05
MULTIPLE = 16  # the released PPD's size multiple (patch 8 and the 16-pixel semantic grid)


def flying(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Bool map: ``pred`` more than 5 % away from every ground-truth depth in the 3x3 neighbourhood."""
    H, W = gt.shape
    padded = np.pad(gt, 1, mode="edge")
    fly = np.ones(gt.shape, bool)
    for dy in range(3):
        for dx in range(3):
            g = padded[dy : dy + H, dx : dx + W]
            fly &= np.abs(pred - g) > FLYING_RTOL * g
    return fly


def scores(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, edges: np.ndarray, K: np.ndarray) -> dict:
    rel = np.abs(pred - gt) / gt
    ratio = np.maximum(pred / gt, gt / pred)
    has_edges = bool(edges.any())  # a scene without depth edges counts in the other columns only
    return {
        "edge AbsRel": float(rel[edges].mean()) if has_edges else np.nan,
        "edge δ1": float((ratio[edges] < 1.25).mean()) if has_edges else np.nan,
        "AbsRel (all)": float(rel[valid].mean()),
        "edge Chamfer (m)": edge_chamfer(pred, gt, valid, K),
        "flying %": 100.0 * float(flying(pred, gt)[valid].mean()),
    }


def scene(world: int, index: int, H: int, W: int):
    rgb, depth, meta = render_scene(world, index, H, W)
    h, w = fit_to_area(H, W, TRAIN_AREA, MULTIPLE)
    rgb_low, depth_low, _ = render_scene(world, index, h, w)
    fill = lambda d: np.where(d > 0, d, SKY_DEPTH).astype(np.float32)  # noqa: E731
    K = intrinsics_matrix(meta["fx"], meta["fy"], meta["cx"], meta["cy"])
    return rgb, fill(depth), depth > 0, fill(depth_low), K


def degrade(rgb: np.ndarray, blur: float, noise: float, seed: int) -> np.ndarray:
    x = rgb.astype(np.float32) / 255.0
    if blur > 0:
        x = cv2.GaussianBlur(x, (0, 0), blur)
    if noise > 0:
        x = x + np.random.default_rng(seed).normal(0.0, noise, x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def run_scene(args, index: int, H: int, W: int) -> dict[str, dict]:
    rgb, gt, valid, low, K = scene(args.world, index, H, W)
    if args.blur > 0 or args.noise > 0:
        rgb = degrade(rgb, args.blur, args.noise, index)
    h, w = low.shape
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).contiguous()
    image_low = F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)
    low_t = torch.from_numpy(low)[None, None]
    edge_kw = dict(rtol=args.rtol, sigma=args.sigma)
    calls = {
        "bilinear (release)": lambda: resize_depth(low_t, (H, W), "bilinear"),
        "nearest (before)": lambda: resize_depth(low_t, (H, W), "nearest"),
        "edge (ours)": lambda: edge_aware_upsample(low, rgb, **edge_kw),
        "edge, guide given": lambda: edge_aware_upsample(low_t, image, guide_low=image_low, **edge_kw),
    }
    edges = edge_region(gt, valid)
    results = {}
    for name, call in calls.items():
        out = call()
        pred = out if isinstance(out, np.ndarray) else out[0, 0].numpy()
        row = scores(pred, gt, valid, edges, K) if name != "edge, guide given" else {}
        row["ms"] = 1e3 * measure(call, torch.device("cpu"), args.repeats, warmup=1)
        results[name] = row
    return results


def table(title: str, per_scene: list[dict[str, dict]]) -> str:
    methods = list(per_scene[0])
    cols = ["edge AbsRel", "edge δ1", "AbsRel (all)", "edge Chamfer (m)", "flying %", "ms"]
    lines = [f"### {title}", "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    fmt = {"edge δ1": "{:.4f}", "flying %": "{:.4f}", "ms": "{:.1f}", "edge Chamfer (m)": "{:.4f}"}
    for m in methods:
        cells = []
        for c in cols:
            vals = [s[m][c] for s in per_scene if c in s[m] and np.isfinite(s[m][c])]
            cells.append(fmt.get(c, "{:.4f}").format(float(np.mean(vals))) if vals else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    mean = lambda m, c: float(np.nanmean([s[m][c] for s in per_scene]))  # noqa: E731
    with_edges = sum(np.isfinite(s[methods[0]]["edge AbsRel"]) for s in per_scene)
    fly_ratio = mean("edge (ours)", "flying %") / max(mean("bilinear (release)", "flying %"), 1e-12)
    lines += [
        "",
        f"edge columns: the {with_edges} scene(s) with depth edges; flying %: share of non-sky pixels.",
        f"flying pixels, ours / bilinear: {fly_ratio:.3f} (target <= 0.1); "
        f"edge AbsRel, ours / nearest: {mean('edge (ours)', 'edge AbsRel') / mean('nearest (before)', 'edge AbsRel'):.3f}"
        f" (target < 1); ours {mean('edge (ours)', 'ms'):.1f} ms per image (target <= 100 ms at 2048x1536)",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=6, help="scenes at 2048x1536")
    ap.add_argument("--large", type=int, default=1, help="scenes at 4032x3024")
    ap.add_argument("--world", type=int, default=0, help="world seed of the procedural scenes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--blur", type=float, default=0.0, help="Gaussian blur of the image, full-size pixels")
    ap.add_argument("--noise", type=float, default=0.0, help="Gaussian noise added to the image (0-1 scale)")
    ap.add_argument("--rtol", type=float, default=RTOL, help="edge_aware_upsample's rtol")
    ap.add_argument("--sigma", type=float, default=SIGMA, help="edge_aware_upsample's sigma")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    for count, (H, W) in ((args.scenes, (1536, 2048)), (args.large, (3024, 4032))):
        if count < 1:
            continue
        h, w = fit_to_area(H, W, TRAIN_AREA, MULTIPLE)
        per_scene = [run_scene(args, i, H, W) for i in range(count)]
        degraded = (
            f", image blur {args.blur} px, noise {args.noise}" if args.blur > 0 or args.noise > 0 else ""
        )
        title = f"{W}x{H} from {w}x{h}, {count} scene(s) of world {args.world}{degraded}"
        print(table(title, per_scene), flush=True)
        print()
    print(f"({time.perf_counter() - t0:.0f} s in all, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
