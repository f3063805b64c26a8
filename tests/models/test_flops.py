"""Our FLOP counts equal the analytic count on CPU and meta, whether or not this torch counts CPU
attention itself (older releases count it as 0, 2.15 counts it): both cases are simulated by editing
torch's formula registry, so the test checks our behaviour, not one release's."""

import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_dit
from torch.utils import flop_counter as tfc

from ppd_lightning.flops import count_flops

B, HEADS, N, D = 2, 3, 64, 16
FORWARD = B * HEADS * N * N * D * 2 * 2  # QK^T and PV, 2 FLOPs per multiply-add
BACKWARD = 2 * FORWARD + FORWARD // 2  # dV, dP, dQ, dK (4 matmuls) + the recomputed QK^T


def _cpu_ops():
    aten = torch.ops.aten
    return [
        getattr(aten, name)
        for name in (
            "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_flash_attention_for_cpu_backward",
        )
        if hasattr(aten, name)
    ]


@pytest.fixture(params=["torch_blind", "torch_counts"])
def torch_registry(request, monkeypatch):
    """Simulate a torch without CPU-attention formulas, and one with its own (returning the true count)."""
    registry = dict(tfc.flop_registry)
    for op in _cpu_ops():
        registry.pop(op, None)
    if request.param == "torch_counts":
        # registry formulas take shapes (torch wraps them the same way)
        registry[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = tfc.shape_wrapper(
            lambda q, k, v, *a, out_shape=None, **kw: tfc.sdpa_flop_count(q, k, v)
        )
        registry[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward] = tfc.shape_wrapper(
            lambda g, q, k, v, *a, out_shape=None, **kw: tfc.sdpa_backward_flop_count(g, q, k, v)
        )
    monkeypatch.setattr(tfc, "flop_registry", registry)
    monkeypatch.setattr("ppd_lightning.flops.flop_registry", registry)
    return request.param


def test_cpu_and_meta_attention_equal_the_analytic_count(torch_registry):
    q = torch.rand(B, HEADS, N, D)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == FORWARD
    with torch.device("meta"):
        qm = torch.rand(B, HEADS, N, D)
        assert count_flops(lambda: F.scaled_dot_product_attention(qm, qm, qm)) == FORWARD


def test_backward_attention_counted_once(torch_registry):
    q = torch.rand(B, HEADS, N, D, requires_grad=True)
    both = count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    assert both == FORWARD + BACKWARD


def test_installed_torch_counts_attention_once():
    """Whatever this torch registers itself, the total is the analytic count, never twice it."""
    q = torch.rand(B, HEADS, N, D)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == FORWARD
    qg = q.clone().requires_grad_()
    assert (
        count_flops(lambda: F.scaled_dot_product_attention(qg, qg, qg).sum().backward()) == FORWARD + BACKWARD
    )


def test_model_forward_flops_agree_between_cpu_and_meta():
    dit = tiny_dit().eval()
    H, W = 32, 48
    x, img, t = torch.randn(1, 1, H, W), torch.rand(1, 3, H, W), torch.rand(1)
    sem = torch.randn(1, (H // 16) * (W // 16), dit.semantic_dim)
    with torch.no_grad():
        cpu = count_flops(lambda: dit(x, img, sem, t))
    meta_dit = tiny_dit().to("meta")
    with torch.device("meta"):
        meta = count_flops(lambda: meta_dit(x.to("meta"), img.to("meta"), sem.to("meta"), t.to("meta")))
    assert cpu == meta > 0
