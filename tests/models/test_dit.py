import pytest
import torch
from model_helpers import randomize, tiny_dit

from ppd_lightning.models.dit import Rope2D


def _inputs(B=2, H=32, W=48, sem_dim=24):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 1, H, W, generator=g)
    img = torch.rand(B, 3, H, W, generator=g)
    sem = torch.randn(B, (H // 16) * (W // 16), sem_dim, generator=g)
    t = torch.rand(B, generator=g)
    return x, img, sem, t


@pytest.mark.parametrize("variant", ["cascade", "sp_dit", "vanilla"])
def test_variants_shapes_and_identity_init(variant):
    dit = tiny_dit(variant)
    x, img, sem, t = _inputs()
    v = dit(x, img, sem if variant != "vanilla" else None, t)
    assert v.shape == x.shape
    # adaLN-Zero + zero output layer: the untrained network predicts exactly zero velocity.
    assert torch.count_nonzero(v) == 0
    for block in dit.blocks:
        h = torch.randn(2, 5, dit.hidden_size)
        assert torch.equal(block(h, torch.randn(2, dit.hidden_size), (1, 5)), h)


def test_variant_structure():
    cas, sp, van = tiny_dit("cascade"), tiny_dit("sp_dit"), tiny_dit("vanilla")
    assert cas.x_embedder.proj.kernel_size == (8, 8) and sp.x_embedder.proj.kernel_size == (4, 4)
    assert cas.proj_fusion[-1].out_features == 4 * 32 and sp.proj_fusion[-1].out_features == 32
    assert not hasattr(van, "proj_fusion")
    assert van.size_multiple == 4 and cas.size_multiple == 16


def test_batch_items_are_independent_and_semantics_matter():
    dit = randomize(tiny_dit("cascade"))
    x, img, sem, t = _inputs(B=3)
    v = dit(x, img, sem, t)
    v1 = dit(x[1:2], img[1:2], sem[1:2], t[1:2])
    torch.testing.assert_close(v[1:2], v1, rtol=1e-5, atol=1e-6)
    # Semantic tokens are L2-normalised: scaling them changes nothing; changing them does.
    torch.testing.assert_close(dit(x, img, sem * 7.0, t), v, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(dit(x, img, torch.randn_like(sem), t), v)


def test_sp_dit_resizes_semantics_to_token_grid():
    dit = randomize(tiny_dit("sp_dit"))
    x, img, sem, t = _inputs()
    v = dit(x, img, sem, t)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_coarse_depth_controls_where_fusion_happens():
    a = randomize(tiny_dit("cascade", coarse_depth=1), seed=3)
    b = tiny_dit("cascade", coarse_depth=3)
    b.load_state_dict(a.state_dict())
    x, img, sem, t = _inputs()
    assert not torch.allclose(a(x, img, sem, t), b(x, img, sem, t))
    with pytest.raises(ValueError, match="coarse_depth"):
        tiny_dit("cascade", coarse_depth=4)


def test_activation_checkpointing_gives_same_outputs_and_grads():
    ref = randomize(tiny_dit("cascade"))
    ckp = tiny_dit("cascade", grad_checkpointing=True)
    ckp.load_state_dict(ref.state_dict())
    ref.train(), ckp.train()
    x, img, sem, t = _inputs()
    outs = []
    for m in (ref, ckp):
        m.zero_grad()
        v = m(x, img, sem, t)
        v.square().mean().backward()
        outs.append((v.detach(), [p.grad.clone() for p in m.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for g0, g1 in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(g0, g1)


def test_bf16_autocast_runs_and_stays_close():
    dit = randomize(tiny_dit("cascade"), std=0.02)
    x, img, sem, t = _inputs()
    ref = dit(x, img, sem, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = dit(x, img, sem, t)
    assert v.shape == ref.shape and torch.isfinite(v).all()
    assert ((v.float() - ref).norm() / ref.norm()) < 0.05


def test_rope_tables_cached_and_rotation_is_relative():
    rope = Rope2D(100.0)
    a = rope.tables(3, 4, 16, torch.device("cpu"))
    assert rope.tables(3, 4, 16, torch.device("cpu"))[0] is a[0]
    # Relative positions: <R(p) q, R(p') k> depends only on p - p'.
    q, k = torch.randn(16), torch.randn(16)
    cos, sin = a
    rot = lambda v, i: v * cos[i] + Rope2D.rotate(v) * sin[i]  # noqa: E731
    # tokens (0,0)-(0,1) and (1,2)-(1,3) differ by the same column offset
    d1 = rot(q, 0) @ rot(k, 1)
    d2 = rot(q, 6) @ rot(k, 7)
    torch.testing.assert_close(d1, d2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        rope.tables(2, 2, 6, torch.device("cpu"))


@pytest.mark.parametrize(
    "case, match",
    [
        ("odd_size", "multiples of 16"),
        ("channels", "x_t must be"),
        ("image", "image must be"),
        ("no_semantics", "needs semantic tokens"),
        ("semantic_shape", "semantics must be"),
        ("t_shape", "t must be"),
    ],
)
def test_bad_inputs_give_one_clear_error(case, match):
    dit = tiny_dit("cascade")
    x, img, sem, t = _inputs()
    args = {
        "odd_size": (x[..., :24], img[..., :24], sem, t),
        "channels": (torch.cat([x, x], 1), img, sem, t),
        "image": (x, img[:, :2], sem, t),
        "no_semantics": (x, img, None, t),
        "semantic_shape": (x, img, sem[:, :-1], t),
        "t_shape": (x, img, sem, t[:, None]),
    }[case]
    with pytest.raises(ValueError, match=match):
        dit(*args)


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown DiT variant"):
        tiny_dit("unet")
