import torch
import torch.nn.functional as F
from model_helpers import tiny_dit
from torch.utils.flop_counter import FlopCounterMode

from ppd_lightning.flops import count_flops


def test_cpu_attention_is_counted_like_on_the_meta_device():
    q = torch.rand(2, 3, 64, 16)
    expected = 2 * 3 * 64 * 64 * 16 * 2 * 2  # QK^T and PV, 2 FLOPs per multiply-add
    # torch's own counter sees nothing on the CPU kernel: the reason this module exists
    with FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, q, q)
    assert plain.get_total_flops() == 0
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == expected
    with torch.device("meta"):
        qm = torch.rand(2, 3, 64, 16)
        assert count_flops(lambda: F.scaled_dot_product_attention(qm, qm, qm)) == expected


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


def test_backward_attention_is_counted():
    q = torch.rand(1, 2, 32, 8, requires_grad=True)
    fwd = count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    both = count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    assert both > 2 * fwd  # the backward costs at least twice the forward
