"""Training-step cost, measured in one run: step time (forward + backward + AdamW), FLOPs
(``torch.utils.flop_counter``), achieved FLOP/s as a fraction of a matmul peak measured in the same run,
and peak memory; then the released size at 1024x768 batch 4 counted on the meta device (no memory, no
time) to estimate an H100 step and the share of the frozen encoder.

    python benchmarks/train_step.py
    python benchmarks/train_step.py --device cuda        # on a GPU machine (bf16 autocast)
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import warnings

import torch
from timing import matmul_peak, measure, sync

from ppd_lightning.flops import count_flops
from ppd_lightning.flow import LogitNormalTimesteps
from ppd_lightning.models import CascadeSPDiT, SemanticEncoder
from ppd_lightning.objective import training_loss

H100_BF16_DENSE = 989e12  # FLOP/s, spec sheet (SXM)

SIZES = {
    # name: (dit kwargs, encoder kwargs, batch, H, W); "tiny" is the CPU demo's size
    "tiny": (
        dict(hidden_size=128, depth=6, num_heads=4, patch_size=4, semantic_dim=64),
        dict(embed_dim=64, depth=2, num_heads=2),
        16,
        48,
        64,
    ),
    "mid": (
        dict(hidden_size=384, depth=12, num_heads=6, patch_size=8, semantic_dim=384),
        dict(embed_dim=384, depth=12, num_heads=6),
        2,
        256,
        384,
    ),
}


def make_step(dit, encoder, B, H, W, device, autocast_dtype):
    """The real training step: ``objective.training_loss`` (the release's target, velocity and gradient
    losses, the frozen encoder under no_grad) + backward + AdamW, as PPDLightningModule runs it."""
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-4, weight_decay=0.0)
    timesteps = LogitNormalTimesteps()
    image = torch.rand(B, 3, H, W, device=device)
    depth = torch.rand(B, 1, H, W, device=device) * 20 + 0.5
    batch = {"image": image, "depth": depth, "mask": torch.ones(B, 1, H, W, dtype=torch.bool, device=device)}
    enabled = autocast_dtype is not None

    def encode():
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=enabled):
            return encoder(image)

    def step(with_optimizer=True):
        noise = torch.randn(B, 1, H, W, device=device)
        t = timesteps(B, device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=enabled):
            out = training_loss(dit, encoder, batch, noise=noise, t=t, check_t_range=False)
        out["loss"].backward()
        if with_optimizer:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step, encode


def timed(fn, device, repeats):
    """Median of ``repeats`` calls after one warm-up (a training step's typical cost, not its best)."""
    return measure(fn, device, repeats, warmup=1, reduce=statistics.median)


def flops_of(fn):
    # ppd_lightning.flops: torch's counter has no formula for the CPU attention kernel
    return count_flops(fn)


def released_estimate():
    """Counted on the meta device: the released 500M Cas-DiT, 1024x768, batch 4, with its ViT-L encoder."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dit = CascadeSPDiT()
        enc = SemanticEncoder.from_size("vitl")
        B, H, W = 4, 768, 1024
        image = torch.rand(B, 3, H, W)
        x = torch.rand(B, 1, H, W)
        t = torch.rand(B)
        sem = torch.rand(B, (H // 16) * (W // 16), 1024)
        enc_flops = flops_of(lambda: enc(image))

        def fwd_bwd():
            dit(x, image, sem, t).square().mean().backward()

        dit_flops = flops_of(fwd_bwd)
    return dit_flops, enc_flops


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--compile", action="store_true", help="also time each size with dit.compile()")
    args = ap.parse_args()
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    peak = matmul_peak(device, autocast_dtype or torch.float32, 2048 if device.type == "cpu" else 8192)
    print(f"device {device} ({torch.get_num_threads()} threads); matmul peak {peak / 1e9:.1f} GFLOP/s")
    for name in args.sizes:
        dit_kw, enc_kw, B, H, W = SIZES[name]
        dit = CascadeSPDiT(**dit_kw).to(device).train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = SemanticEncoder(**enc_kw).to(device)
        step, encode = make_step(dit, enc, B, H, W, device, autocast_dtype)
        flops = flops_of(lambda step=step: step(with_optimizer=False))
        enc_flops = flops_of(encode)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = timed(step, device, args.repeats)
        enc_sec = timed(encode, device, args.repeats)
        mem = (
            torch.cuda.max_memory_allocated() / 2**20
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        mem_label = "peak GPU memory" if device.type == "cuda" else "process peak RSS"
        params = sum(p.numel() for p in dit.parameters())
        print(
            f"{name:16s} DiT {params / 1e6:5.1f}M, batch {B} at {H}x{W}: step {sec * 1e3:7.1f} ms, "
            f"{flops / 1e9:7.1f} GFLOP, {flops / sec / 1e9:6.1f} GFLOP/s = {flops / sec / peak:5.1%} of peak; "
            f"encoder {enc_sec / sec:4.1%} of step time ({enc_flops / flops:4.1%} of FLOPs); "
            f"{mem_label} {mem:.0f} MiB"
        )
        if args.compile:
            dit.compile()  # in place, as train.py's compile=true
            t0 = time.perf_counter()
            step()  # compiles forward and backward
            sync(device)
            compile_sec = time.perf_counter() - t0
            csec = timed(step, device, args.repeats)
            print(
                f"{'':16s} compiled: step {csec * 1e3:7.1f} ms ({sec / csec:.2f}x), "
                f"{flops / csec / peak:5.1%} of peak; compilation {compile_sec:.0f} s"
            )
    dit_flops, enc_flops = released_estimate()
    total = dit_flops + enc_flops
    print(
        f"released Cas-DiT, 1024x768, batch 4: {total / 1e12:.1f} TFLOP per step "
        f"(DiT fwd+bwd {dit_flops / 1e12:.1f}, frozen ViT-L forward {enc_flops / 1e12:.1f} = {enc_flops / total:.1%})"
    )
    for mfu in (0.35, 0.5):
        s = total / (H100_BF16_DENSE * mfu)
        print(f"  H100 at {mfu:.0%} MFU (bf16 dense 989 TFLOP/s): {s:.2f} s/step, {4 / s:.1f} samples/s")


if __name__ == "__main__":
    main()
