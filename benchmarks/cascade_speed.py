"""Cascade vs plain DiT, measured in one run: forward time, FLOPs, and achieved FLOP/s as a fraction of a
matmul peak measured in the same run on the same device.

    python benchmarks/cascade_speed.py                         # CPU-sized default (base width, 256x384)
    python benchmarks/cascade_speed.py --hidden 1024 --depth 24 --heads 16 --height 768 --width 1024 --device cuda

The ideal cascade speed-up: with half of the blocks on 4x fewer tokens, block cost drops to
(1/2)(1/4) + (1/2) = 5/8 of the plain DiT's (-> 1.6x) before counting attention's quadratic term, which
makes the coarse half cheaper still (1.74x at the released size).
"""

from __future__ import annotations

import argparse

import torch
from timing import matmul_peak, measure

from ppd_lightning.flops import count_flops  # counts CPU attention too
from ppd_lightning.models import CascadeSPDiT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--depth", type=int, default=24)  # the released depth; width reduced for a CPU
    ap.add_argument("--heads", type=int, default=12)  # 64-dim heads, as released
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--semantic-dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    sizes = dict(
        hidden_size=args.hidden,
        depth=args.depth,
        num_heads=args.heads,
        patch_size=args.patch,
        semantic_dim=args.semantic_dim,
    )
    B, H, W = args.batch, args.height, args.width
    x = torch.randn(B, 1, H, W, device=device)
    img = torch.rand(B, 3, H, W, device=device)
    sem = torch.randn(B, (H // 16) * (W // 16), args.semantic_dim, device=device)
    t = torch.rand(B, device=device)

    peak = matmul_peak(device, dtype, 2048 if device.type == "cpu" else 8192, 2 * args.repeats)
    print(
        f"device {device} ({torch.get_num_threads()} threads), dtype {args.dtype}, input {B}x{H}x{W}, "
        f"fine tokens {(H // args.patch) * (W // args.patch)}"
    )
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s")
    rows = {}
    for variant in ("vanilla", "cascade"):
        model = CascadeSPDiT(variant=variant, **sizes).to(device).eval()
        sem_in = sem if model.uses_semantics else None

        def fwd(model=model, sem_in=sem_in):
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return model(x, img, sem_in, t)

        flops = count_flops(fwd)
        sec = measure(fwd, device, args.repeats)
        rows[variant] = (sec, flops)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{variant:8s} params {params / 1e6:7.1f}M  forward {sec * 1e3:8.1f} ms  {flops / 1e9:8.1f} GFLOP  "
            f"{flops / sec / 1e9:7.1f} GFLOP/s = {flops / sec / peak:5.1%} of matmul peak"
        )
    (tv, fv), (tc, fc) = rows["vanilla"], rows["cascade"]
    print(f"cascade speed-up: {tv / tc:.2f}x measured, {fv / fc:.2f}x by FLOPs")
    # The released size at 1024x768, counted on the meta device (no memory, no time).
    flops = {}
    with torch.device("meta"):
        xm, im, tm = torch.rand(1, 1, 768, 1024), torch.rand(1, 3, 768, 1024), torch.rand(1)
        sm = torch.rand(1, 48 * 64, 1024)
        for variant in ("vanilla", "cascade"):
            model = CascadeSPDiT(variant=variant)
            flops[variant] = count_flops(lambda m=model: m(xm, im, sm if m.uses_semantics else None, tm))
    print(
        f"released size (1024/24/16, p=8) at 1024x768: vanilla {flops['vanilla'] / 1e12:.2f} TFLOP, "
        f"cascade {flops['cascade'] / 1e12:.2f} TFLOP per forward: {flops['vanilla'] / flops['cascade']:.2f}x by FLOPs"
    )


if __name__ == "__main__":
    main()
