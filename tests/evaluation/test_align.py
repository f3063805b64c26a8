import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, RANSACRegressor

import ppd_lightning.evaluation.align as align_mod
from ppd_lightning.evaluation.align import (
    align_least_squares,
    align_log_ransac,
    fit_least_squares,
    fit_log_ransac,
    masked_median,
)


def _ab(pred, gt, mask, **kw):
    fit = fit_log_ransac(pred, gt, mask, **kw)
    return fit.a, fit.b


def _data(b=3, h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, h, w, generator=g) * 9 + 0.5
    mask = torch.rand(b, h, w, generator=g) > 0.25
    return gt, mask, g


def test_masked_median_matches_numpy():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 37, generator=g)
    m = torch.rand(4, 37, generator=g) > 0.4
    m[3] = False
    med = masked_median(x, m)
    for i in range(3):
        assert med[i].item() == pytest.approx(float(np.median(x[i][m[i]].numpy())), abs=1e-7)
    assert torch.isnan(med[3])


def test_least_squares_matches_sklearn_and_shapes():
    gt, mask, g = _data()
    pred = torch.rand(gt.shape, generator=g)
    s, t = fit_least_squares(pred, gt, mask)
    for i in range(gt.shape[0]):
        lr = LinearRegression().fit(
            pred[i][mask[i]].numpy()[:, None].astype(np.float64), gt[i][mask[i]].numpy()
        )
        assert s[i].item() == pytest.approx(lr.coef_[0], rel=1e-5)
        assert t[i].item() == pytest.approx(lr.intercept_, rel=1e-5)
    out = align_least_squares(pred, gt, mask)
    assert out.shape == pred.shape and out.dtype == pred.dtype
    out4 = align_least_squares(pred[:, None], gt[:, None], mask[:, None])
    assert out4.shape == (3, 1, 24, 32)
    torch.testing.assert_close(out4[:, 0], out)


def test_least_squares_exact_on_affine_prediction_and_empty_image():
    gt, mask, _ = _data()
    pred = (gt - 0.7) / 2.5
    mask[1] = False
    out = align_least_squares(pred, gt, mask)
    torch.testing.assert_close(out[0][mask[0]], gt[0][mask[0]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], pred[1])  # no valid pixel: unchanged


def test_log_ransac_exact_on_clean_data_equals_sklearn():
    gt, mask, g = _data()
    y = torch.log1p(gt)
    pred = (y - 0.3) / 1.7 + 0.001 * torch.randn(gt.shape, generator=g)  # tiny noise: all inliers
    a, b = _ab(pred, gt, mask, generator=torch.Generator().manual_seed(0))
    for i in range(gt.shape[0]):
        x_i = pred[i][mask[i]].numpy()[:, None]
        y_i = y[i][mask[i]].numpy()
        r = RANSACRegressor(max_trials=1000, random_state=0).fit(x_i, y_i)
        assert r.inlier_mask_.all()
        assert a[i].item() == pytest.approx(float(r.estimator_.coef_[0]), rel=1e-4)
        assert b[i].item() == pytest.approx(float(r.estimator_.intercept_), abs=1e-4)
    out = align_log_ransac(pred, gt, mask)
    assert out.shape == gt.shape
    assert ((out[mask] - gt[mask]).abs() / gt[mask]).max() < 0.01


def test_log_ransac_robust_to_outliers():
    gt, mask, g = _data(b=4, h=40, w=40, seed=3)
    y = torch.log1p(gt)
    clean = (y - 0.3) / 1.7 + 0.002 * torch.randn(gt.shape, generator=g)
    outl = torch.rand(gt.shape, generator=g) < 0.3
    # gross outliers (far from the line): recovered almost exactly
    far = torch.where(outl, clean + torch.rand(gt.shape, generator=g) * 2 + 1, clean)
    a, b = _ab(far, gt, mask, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, torch.full_like(a, 1.7), rtol=5e-3, atol=0)
    torch.testing.assert_close(b, torch.full_like(b, 0.3), rtol=0, atol=5e-3)
    # uniform outliers overlapping the data: the MAD threshold admits some, still close
    mixed = torch.where(outl, torch.rand(gt.shape, generator=g) * 5 - 2, clean)
    a, _ = _ab(mixed, gt, mask, generator=torch.Generator().manual_seed(1))
    assert (a - 1.7).abs().max() < 0.15
    # plain least squares is thrown off by the same outliers
    a_ls, _ = fit_least_squares(mixed, y, mask)
    assert (a_ls - 1.7).abs().min() > 1.0


def test_log_ransac_subsampled_scoring_same_as_full_on_clean_data():
    gt, mask, g = _data(b=2, h=64, w=64, seed=5)
    pred = (torch.log1p(gt) + 0.2) * 0.8
    kw = dict(generator=torch.Generator().manual_seed(0))
    a1, b1 = _ab(pred, gt, mask, max_score_points=100, **kw)
    a2, b2 = _ab(pred, gt, mask, max_score_points=None, **kw)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(b1, b2)


def test_log_ransac_fallback_and_clipping():
    gt, mask, _ = _data(b=2)
    # decreasing relation: slope <= 0 -> ratio of means, b = 0
    pred = -torch.log1p(gt)
    a, b = _ab(pred, gt, mask, generator=torch.Generator().manual_seed(0))
    y = torch.log1p(gt)
    for i in range(2):
        expect = (y[i][mask[i]].double().mean() / pred[i][mask[i]].double().mean()).item()
        assert a[i].item() == pytest.approx(expect, rel=1e-5)
        assert b[i].item() == 0.0
    out = align_log_ransac(pred, gt, mask)
    for i in range(2):
        assert out[i].min() >= 1e-3 - 1e-9
        assert out[i].max() <= gt[i][mask[i]].max() + 1e-5


def test_log_ransac_generator_reproducible():
    gt, mask, g = _data(seed=7)
    pred = torch.rand(gt.shape, generator=g)
    a1, _ = _ab(pred, gt, mask, generator=torch.Generator().manual_seed(4))
    a2, _ = _ab(pred, gt, mask, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a1, a2)


def test_shape_and_dtype_errors():
    x = torch.rand(1, 4, 4)
    with pytest.raises(ValueError):
        align_least_squares(x, torch.rand(1, 4, 5), torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(TypeError):
        align_log_ransac(x, x, torch.ones(1, 4, 4))


def test_log_ransac_sparse_ground_truth_keeps_searching():
    """Sparse ground truth (KITTI-like: fewer valid pixels than the scoring budget, more pixels
    than it): the inlier ratio must be counted on the valid pixels actually scored. Counted
    against the wrong total it exceeds 1 and the stopping rule ends every image after the first
    chunk of 8 trials, whatever scikit-learn's rule asks for."""
    g = torch.Generator().manual_seed(11)
    b, h, w = 64, 64, 64
    gt = torch.rand(b, h, w, generator=g) * 9 + 0.5
    mask = torch.rand(b, h, w, generator=g) < 0.1  # ~410 valid of 4,096 pixels, budget 1,000
    clean = (torch.log1p(gt) - 0.3) / 1.7
    # 40 % gross outliers: a clean pair has probability 0.36, the rule asks for 11 trials
    outl = torch.rand(b, h, w, generator=g) < 0.4
    pred = torch.where(outl, clean + torch.rand(b, h, w, generator=g) * 3 + 1, clean)

    def fit(max_trials):  # identical draws for the first 8 trials in both calls
        kw = dict(max_score_points=1000, generator=torch.Generator().manual_seed(0))
        return fit_log_ransac(pred, gt, mask, max_trials=max_trials, **kw).a

    a8, a_full = fit(8), fit(1000)
    assert (a8 != a_full).any(), "the search stopped after the first 8 trials for every image"
    # clean images still stop at once: the same 8 trials, the same answer
    clean_fit = fit_log_ransac(
        clean, gt, mask, max_score_points=1000, max_trials=8, generator=torch.Generator().manual_seed(0)
    ).a
    clean_full = fit_log_ransac(
        clean, gt, mask, max_score_points=1000, generator=torch.Generator().manual_seed(0)
    ).a
    torch.testing.assert_close(clean_fit, clean_full)


def test_log_ransac_half_precision_input_keeps_float32_accuracy():
    gt, mask, _ = _data()
    pred = ((torch.log1p(gt) - 0.3) / 1.7).half()
    out = align_log_ransac(pred, gt, mask, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float16
    ref = align_log_ransac(pred.float(), gt, mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.float(), ref.half().float())


def marigold_align(gt, pred, valid_mask, max_resolution):
    """Marigold's ``align_depth_least_square`` as its code does it, for one (H, W) numpy map: each map
    as a (1, H, W) tensor through ``torch.nn.Upsample(scale_factor=s, mode="nearest")``, then
    ``np.linalg.lstsq`` on the masked pixels, applied to the full-size prediction."""
    scale_factor = np.min(max_resolution / np.array(pred.shape[-2:]))
    gt_s, pred_s, mask_s = gt, pred, valid_mask
    if scale_factor < 1:
        down = torch.nn.Upsample(scale_factor=scale_factor, mode="nearest")
        gt_s = down(torch.as_tensor(gt).unsqueeze(0)).numpy()
        pred_s = down(torch.as_tensor(pred).unsqueeze(0)).numpy()
        mask_s = down(torch.as_tensor(valid_mask).unsqueeze(0).float()).bool().numpy()
    gt_m, pred_m = gt_s[mask_s].reshape((-1, 1)), pred_s[mask_s].reshape((-1, 1))
    a = np.concatenate([pred_m, np.ones_like(pred_m)], axis=-1)
    (scale, shift), *_ = np.linalg.lstsq(a, gt_m, rcond=None)
    return pred * scale + shift


def _eth3d_like(h, w, seed):
    """float32 depth with holes (0) and inf, a noisy prediction with 3 % gross outliers."""
    g = torch.Generator().manual_seed(seed)
    gt = 1.0 + 20.0 * torch.rand(h, w, generator=g)
    gt[torch.rand(h, w, generator=g) < 0.2] = 0.0
    gt[torch.rand(h, w, generator=g) < 0.05] = math.inf
    pred = torch.where(gt.isfinite(), gt, 5.0) / 3 + 0.5 + 0.3 * torch.randn(h, w, generator=g)
    bad = torch.rand(h, w, generator=g) < 0.03
    pred = torch.where(bad, 30 * torch.rand(h, w, generator=g), pred)
    return pred, gt, (gt > 1e-5) & (gt < math.inf)


@pytest.mark.parametrize("h, w, max_res", [(60, 90, 30), (90, 60, 30), (64, 40, 50), (60, 90, 200)])
def test_least_squares_max_resolution_is_marigolds_width_only_downscale(h, w, max_res):
    """Landscape, portrait, a factor that rounds, and no downscale at all: the scale and shift are
    the ones Marigold's own recipe fits, so the aligned maps agree to float32 rounding."""
    pred, gt, mask = _eth3d_like(h, w, seed=h + w)
    expect = marigold_align(gt.numpy(), pred.numpy(), mask.numpy(), max_res)
    out = align_least_squares(pred[None], gt[None], mask[None], max_resolution=max_res)[0]
    np.testing.assert_allclose(out.numpy(), expect, rtol=2e-6, atol=2e-6)
    if max_res < max(h, w):  # the fit is not the full-resolution one nor a 2-D nearest subsample
        assert (align_least_squares(pred[None], gt[None], mask[None])[0] - out).abs().max() > 1e-3
        factor = min(max_res / h, max_res / w)
        rows = (torch.arange(int(h * factor)) / factor).long()
        cols = (torch.arange(int(w * factor)) / factor).long()
        sub = (rows[:, None], cols[None, :])
        two_d = align_least_squares(pred[sub][None], gt[sub][None], mask[sub][None])
        scale_2d = (two_d[0, 0, 1] - two_d[0, 0, 0]) / (pred[sub][0, 1] - pred[sub][0, 0])
        scale = (out[0, 1] - out[0, 0]) / (pred[0, 1] - pred[0, 0])
        assert abs(float(scale_2d - scale)) > 1e-4


# --- scikit-learn's sequential RANSAC semantics (issue 12) ---------------------------------------

from ransac_data import A_TRUE, kitti_like, nyu_like, sequential_ransac, sklearn_pairs  # noqa: E402


def _search(pred, gt, mask, pairs, **kw):
    return fit_log_ransac(pred, gt, mask, samples=pairs, **kw)


@pytest.fixture(params=["host", "batch"])
def backend(request, monkeypatch):
    """Run a test with the CPU backend and again with the torch batch backend (the GPU one) on CPU."""
    if request.param == "batch":
        monkeypatch.setattr(align_mod, "_HostPoints", align_mod._BatchPoints)
    return request.param


def _xy(pred, gt, mask, i):
    return pred[i][mask[i]].double().numpy(), np.log(gt[i][mask[i]].double().numpy() + 1.0)


@pytest.mark.parametrize("seed", [1, 4])
def test_log_ransac_matches_sklearn_on_its_sample_sequence_with_outliers(seed, backend):
    """KITTI-like sparse map with gross outliers that a tilted line collects: seed 1 is one where
    scikit-learn's own first trials pick the wrong line, seed 4 one where the old chunked search
    (best of the first 8 trials, then the stopping rule) picked a wrong line scikit-learn does not."""
    pred, gt, mask = kitti_like(seed, h=176, w=608)
    x, y = _xy(pred, gt, mask, 0)
    pairs = sklearn_pairs(x.size, seed, 1000)
    r = RANSACRegressor(max_trials=1000, random_state=seed).fit(x[:, None], y)
    fit = _search(pred, gt, mask, torch.as_tensor(pairs)[None])
    assert fit.n_trials.item() == r.n_trials_
    assert fit.n_inliers.item() == int(r.inlier_mask_.sum())
    assert fit.a.item() == pytest.approx(float(r.estimator_.coef_[0]), rel=1e-9)
    assert fit.b.item() == pytest.approx(float(r.estimator_.intercept_), rel=1e-9, abs=1e-9)


def test_log_ransac_equals_plain_sequential_loop_on_noisy_batches(backend):
    """Same sample sequence -> the same winning trial, trial count and fit as the one-trial-at-a-time
    loop, for every image of a batch that stops at different trials (dense noisy maps with 60 %
    outliers: dozens of trials, several chunks, and the stop falls inside a chunk)."""
    pred, gt, mask = nyu_like(3, b=4, h=48, w=64, noise=0.08, outliers=0.6)
    n = mask.reshape(4, -1).sum(1)
    g = np.random.RandomState(0)
    pairs = np.stack(
        [np.stack([g.choice(int(n.min()), 2, replace=False) for _ in range(300)]) for _ in range(4)]
    )
    fit = _search(pred, gt, mask, torch.as_tensor(pairs), max_trials=300)
    trials = []
    for i in range(4):
        x, y = _xy(pred, gt, mask, i)
        a_ref, b_ref, k_ref, n_ref = sequential_ransac(x, y, pairs[i], max_trials=300)
        trials.append(k_ref)
        assert fit.n_trials[i] == k_ref
        assert fit.n_inliers[i] == n_ref
        assert fit.line_a[i] == pytest.approx(a_ref, rel=1e-12)
        assert fit.line_b[i] == pytest.approx(b_ref, rel=1e-12, abs=1e-12)
    assert len(set(trials)) > 1 and max(trials) > 8, trials  # not all stopping in the first chunk


def test_log_ransac_stop_inside_a_chunk_discards_later_better_trials(backend):
    """A trial after the stopping point with more inliers must not win (the old chunked search took
    the chunk's best). Trial 1 is a clean pair; trial 2 (after the stop at 2 trials) is a wrong line
    that collects more inliers; a plain loop and scikit-learn stop after trial 2 and keep trial 1."""
    pred, gt, mask = kitti_like(0, h=176, w=608)
    x, y = _xy(pred, gt, mask, 0)
    clean = np.flatnonzero(np.abs(y - (A_TRUE * x + 0.4)) < 1e-9)
    bad = np.flatnonzero(np.abs(y - (A_TRUE * x + 0.4)) > 0.5)
    # find a (clean, outlier) pair whose line beats the true line's inlier count
    thr = np.median(np.abs(y - np.median(y)))
    true_cnt = int((np.abs(y - (A_TRUE * x + 0.4)) <= thr).sum())
    wrong = None
    for j in bad[:200]:
        i = clean[np.argmin(np.abs(x[clean] - np.median(x)))]
        sl = (y[j] - y[i]) / (x[j] - x[i])
        if (np.abs(y - (sl * x + y[i] - sl * x[i])) <= thr).sum() > true_cnt:
            wrong = (i, j)
            break
    assert wrong is not None
    seq = np.array([[clean[0], clean[-1]], [clean[1], clean[-2]], list(wrong)] + [[clean[2], clean[3]]] * 5)
    fit = _search(pred, gt, mask, torch.as_tensor(seq)[None])
    a_ref, _, k_ref, _ = sequential_ransac(x, y, seq)
    assert k_ref == 2 and fit.n_trials.item() == 2
    assert fit.best_trial.item() in (0, 1)
    assert fit.line_a.item() == pytest.approx(A_TRUE, rel=1e-6)  # the winning line is the true one
    # more trials allowed by a stricter rule: the wrong line is reached and wins, as in the loop
    s3 = _search(pred, gt, mask, torch.as_tensor(seq)[None], stop_probability=0.999999)
    assert s3.best_trial.item() == 2 and abs(s3.a.item() - fit.a.item()) > 0.01
    assert sequential_ransac(x, y, seq, p=0.999999)[0] == pytest.approx(s3.line_a.item(), rel=1e-12)


def test_log_ransac_degenerate_pair_is_a_horizontal_line_not_a_skip(backend):
    """Two samples with the same prediction: scikit-learn's LinearRegression fits the horizontal
    line through their mean and the trial counts (it is not skipped)."""
    pred = torch.tensor([[[0.0, 0.0, 1.0, 2.0, 3.0, 4.0]]])
    gt = torch.expm1(torch.tensor([[[1.0, 1.2, 1.1, 1.05, 5.0, 9.0]]]))
    mask = torch.ones_like(pred, dtype=torch.bool)
    x, y = _xy(pred, gt, mask, 0)
    seq = np.array([[0, 1], [4, 5], [2, 3]])
    fit = _search(pred, gt, mask, torch.as_tensor(seq)[None], max_trials=3)
    a_ref, b_ref, k_ref, n_ref = sequential_ransac(x, y, seq, max_trials=3)
    assert fit.n_trials.item() == k_ref == 3
    assert (fit.line_a.item(), fit.n_inliers.item()) == (pytest.approx(a_ref), n_ref)
    assert fit.line_b.item() == pytest.approx(b_ref)


def test_log_ransac_samples_argument_is_checked():
    pred, gt, mask = nyu_like(0, b=2, h=8, w=8)
    with pytest.raises(ValueError, match="shape"):
        fit_log_ransac(pred, gt, mask, samples=torch.zeros(3, 4, 2, dtype=torch.long))
    bad = torch.zeros(2, 4, 2, dtype=torch.long)
    bad[:, :, 1] = 1
    bad[1, 2] = torch.tensor([3, 3])
    with pytest.raises(ValueError, match="image 1"):
        fit_log_ransac(pred, gt, mask, samples=bad)
    bad[1, 2] = torch.tensor([0, 10_000])
    with pytest.raises(ValueError, match="distinct indices"):
        fit_log_ransac(pred, gt, mask, samples=bad)
    with pytest.raises(TypeError, match="max_trail"):
        align_log_ransac(pred, gt, mask, max_trails=10)  # a misspelt option is not swallowed


def test_log_ransac_public_api_gives_sklearn_answer_on_noisy_dense_maps(monkeypatch, backend):
    """Through ``align_log_ransac``'s own sampler (replaying scikit-learn's sample sequence): a
    dense map with prediction noise and 5 % outliers, where every trial has a different inlier
    count, so keeping the best of a chunk of 8 before applying the stopping rule (old code) picks
    another trial than scikit-learn, which stops after 2. The output is the release's recipe."""
    pred, gt, mask = nyu_like(6, h=60, w=80, noise=0.05)
    x, y = _xy(pred, gt, mask, 0)
    r = RANSACRegressor(max_trials=1000, random_state=6).fit(x[:, None], y)
    pairs = torch.as_tensor(sklearn_pairs(x.size, 6, 1000))
    monkeypatch.setattr(align_mod, "_draw_pairs", lambda n, trials, generator: pairs[None, :trials])
    a, b = _ab(pred, gt, mask)
    assert r.n_trials_ < 8  # the stop falls inside the first chunk
    assert a.item() == pytest.approx(float(r.estimator_.coef_[0]), rel=1e-9)
    assert b.item() == pytest.approx(float(r.estimator_.intercept_), rel=1e-9, abs=1e-9)
    out = align_log_ransac(pred, gt, mask)
    a_r, b_r = float(r.estimator_.coef_[0]), float(r.estimator_.intercept_)
    expect = np.clip(np.exp(a_r * pred[0].double().numpy() + b_r) - 1, 1e-3, gt[0][mask[0]].max().item())
    np.testing.assert_allclose(out[0].numpy(), expect, rtol=1e-6, atol=1e-6)
    # one (H, W) map, as the point clouds call it
    torch.testing.assert_close(align_log_ransac(pred[0][None], gt[0][None], mask[0][None])[0], out[0])


def test_log_ransac_counts_no_trial_past_the_stop(monkeypatch, backend):
    """The search must not pay for trials past the stop: a clean image is scored on one trial
    (scikit-learn stops after it), images that have stopped are no longer scored, and on a noisy
    batch the trials scored are the trials run (CPU: one at a time) or within a chunk of them
    (batch backend: chunks 1, 1, 2, 4, ...)."""
    cls = align_mod._HostPoints
    scored = []
    real = cls.count

    def spy(self, rows, a, b):
        scored.append((len(rows), a.shape[1]))
        return real(self, rows, a, b)

    monkeypatch.setattr(cls, "count", spy)
    pred, gt, mask = nyu_like(1, b=2, h=30, w=40, noise=0.0, outliers=0.0)
    fit = _search(pred, gt, mask, None, generator=torch.Generator().manual_seed(0))
    assert fit.n_trials.tolist() == [1, 1] and scored == [(2, 1)]

    scored.clear()
    pred, gt, mask = nyu_like(3, b=4, h=48, w=64, noise=0.08, outliers=0.6)
    n = mask.reshape(4, -1).sum(1)
    g = np.random.RandomState(0)
    pairs = np.stack(
        [np.stack([g.choice(int(n.min()), 2, replace=False) for _ in range(300)]) for _ in range(4)]
    )
    fit = _search(pred, gt, mask, torch.as_tensor(pairs), max_trials=300)
    per_image, done_at, start = np.zeros(4, dtype=np.int64), fit.n_trials, 0
    for rows, t in scored:
        live = done_at > start  # images still searching when this chunk started
        assert rows == int(live.sum()), (rows, live)
        per_image += live * t
        start += t
    assert (per_image >= done_at).all()
    limit = done_at if backend == "host" else 2 * done_at  # geometric chunks: at most 2x
    assert (per_image <= limit).all(), (per_image, done_at)


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_float32_inlier_counts_are_the_float64_ones_near_the_threshold(scale):
    """Residuals within a few float32 roundings of the threshold (either side, and on it), where a
    float32 test alone gets some wrong: both backends give scikit-learn's float64 inlier set."""
    g = np.random.RandomState(0)
    n, thr = 5000, 0.05
    x = (g.rand(n) * scale).astype(np.float32)
    x64 = x.astype(np.float64)
    for a, b in [(0.7 / scale, 0.2), (-1.3 / scale, 2.0), (0.0, 0.5)]:
        off = g.choice([0.0, 1e-15, -1e-15, 1e-12, -1e-12, 1e-9, -1e-9, 0.3], n)
        off = np.where(g.rand(n) < 0.5, off, g.uniform(-5e-7, 5e-7, n))  # a few float32 roundings
        y = a * x64 + b + np.where(g.rand(n) < 0.5, -1.0, 1.0) * (thr + off)
        expect = np.abs(y - (x64 * a + b)) <= thr
        plain32 = np.abs(np.float32(a) * x + np.float32(b) - y.astype(np.float32)) <= np.float32(thr)
        assert (plain32 != expect).any() and 0 < expect.sum() < n  # the test has teeth
        host = align_mod._HostPoints([x], [y])
        host.thr = [thr]
        np.testing.assert_array_equal(host._inliers(0, a, b), expect)
        assert host.count([0], np.array([[a]]), np.array([[b]]))[0, 0] == expect.sum()
        f64 = dict(dtype=torch.float64)
        batch = align_mod._BatchPoints(
            torch.from_numpy(x)[None], torch.from_numpy(y)[None], torch.tensor([thr], **f64)
        )
        count = batch.count([0], torch.tensor([[a, a]], **f64), torch.tensor([[b, b]], **f64))
        assert count.tolist() == [[expect.sum()] * 2]


def test_inlier_counts_beyond_float32_range_and_subset_threshold():
    """A line too steep for float32 (two nearly equal predictions) is counted in float64, where
    the pixels at x = 0 are inliers; a scoring subset keeps the threshold of all the points."""
    x = np.array([0.0, 0.0, 1e-39, 2e-39, 1.0, 2.0], np.float32)
    y = np.array([0.5, 0.52, 1.0, 2.0, 0.4, 0.45])
    a, b = 1e39, 0.5
    expect = np.abs(y - (x.astype(np.float64) * a + b)) <= 0.05
    assert expect[:2].all()
    host = align_mod._HostPoints([x], [y], thr=[0.05])
    np.testing.assert_array_equal(host._inliers(0, a, b), expect)
    f64 = dict(dtype=torch.float64)
    batch = align_mod._BatchPoints(
        torch.from_numpy(x)[None], torch.from_numpy(y)[None], torch.tensor([0.05], **f64)
    )
    assert batch.count([0], torch.tensor([[a]], **f64), torch.tensor([[b]], **f64)).tolist() == [
        [expect.sum()]
    ]
    host = align_mod._HostPoints([x], [y])
    picks = torch.tensor([[4, 5, 4]])
    assert host.subset(picks).thr == host.thr and host.subset(picks).n == [3]
    batch = align_mod._BatchPoints.build(
        torch.from_numpy(x)[None], torch.from_numpy(np.expm1(y))[None], torch.ones(1, 6, dtype=torch.bool)
    )
    assert (
        batch.thr.item() == pytest.approx(host.thr[0]) and batch.subset(picks).thr.item() == batch.thr.item()
    )


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
def test_mad_threshold_is_numpys(n):
    """scikit-learn's threshold ``np.median(np.abs(y - np.median(y)))``, bit for bit, for odd and
    even counts and ties (the CPU path selects with ``np.partition`` in place)."""
    g = np.random.RandomState(n)
    for y in (g.rand(n), np.round(g.rand(n), 1)):  # distinct values, many ties
        scratch = np.empty(n + 3)
        assert align_mod._mad(y, scratch) == np.median(np.abs(y - np.median(y)))
    assert align_mod._mad(np.empty(0), scratch) == 0.0
