import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, RANSACRegressor

from ppd_lightning.evaluation.align import (
    align_least_squares,
    align_log_ransac,
    fit_least_squares,
    fit_log_ransac,
    masked_median,
)


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
    a, b = fit_log_ransac(pred, gt, mask, generator=torch.Generator().manual_seed(0))
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
    a, b = fit_log_ransac(far, gt, mask, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, torch.full_like(a, 1.7), rtol=5e-3, atol=0)
    torch.testing.assert_close(b, torch.full_like(b, 0.3), rtol=0, atol=5e-3)
    # uniform outliers overlapping the data: the MAD threshold admits some, still close
    mixed = torch.where(outl, torch.rand(gt.shape, generator=g) * 5 - 2, clean)
    a, _ = fit_log_ransac(mixed, gt, mask, generator=torch.Generator().manual_seed(1))
    assert (a - 1.7).abs().max() < 0.15
    # plain least squares is thrown off by the same outliers
    a_ls, _ = fit_least_squares(mixed, y, mask)
    assert (a_ls - 1.7).abs().min() > 1.0


def test_log_ransac_subsampled_scoring_same_as_full_on_clean_data():
    gt, mask, g = _data(b=2, h=64, w=64, seed=5)
    pred = (torch.log1p(gt) + 0.2) * 0.8
    kw = dict(generator=torch.Generator().manual_seed(0))
    a1, b1 = fit_log_ransac(pred, gt, mask, max_score_points=100, **kw)
    a2, b2 = fit_log_ransac(pred, gt, mask, max_score_points=None, **kw)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(b1, b2)


def test_log_ransac_fallback_and_clipping():
    gt, mask, _ = _data(b=2)
    # decreasing relation: slope <= 0 -> ratio of means, b = 0
    pred = -torch.log1p(gt)
    a, b = fit_log_ransac(pred, gt, mask, generator=torch.Generator().manual_seed(0))
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
    a1, _ = fit_log_ransac(pred, gt, mask, generator=torch.Generator().manual_seed(4))
    a2, _ = fit_log_ransac(pred, gt, mask, generator=torch.Generator().manual_seed(4))
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
        return fit_log_ransac(pred, gt, mask, max_trials=max_trials, **kw)[0]

    a8, a_full = fit(8), fit(1000)
    assert (a8 != a_full).any(), "the search stopped after the first 8 trials for every image"
    # clean images still stop at once: the same 8 trials, the same answer
    clean_fit = fit_log_ransac(
        clean, gt, mask, max_score_points=1000, max_trials=8, generator=torch.Generator().manual_seed(0)
    )[0]
    clean_full = fit_log_ransac(
        clean, gt, mask, max_score_points=1000, generator=torch.Generator().manual_seed(0)
    )[0]
    torch.testing.assert_close(clean_fit, clean_full)


def test_log_ransac_half_precision_input_keeps_float32_accuracy():
    gt, mask, _ = _data()
    pred = ((torch.log1p(gt) - 0.3) / 1.7).half()
    out = align_log_ransac(pred, gt, mask, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float16
    ref = align_log_ransac(pred.float(), gt, mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.float(), ref.half().float())


def test_least_squares_max_resolution_fits_on_nearest_downsampled_maps():
    g = torch.Generator().manual_seed(21)
    h, w = 60, 90
    gt = torch.rand(2, h, w, generator=g) * 5 + 1
    mask = torch.rand(2, h, w, generator=g) > 0.2
    pred = gt * 0.5 + 0.3 + 0.3 * torch.randn(2, h, w, generator=g)  # noisy: the fit depends on the pixels
    out = align_least_squares(pred, gt, mask, max_resolution=30)
    # expected: Marigold's recipe, by hand: factor min(30/60, 30/90) = 1/3, nearest source index
    # floor(i / factor), least squares on those pixels, applied to the full-size prediction
    factor = min(30 / h, 30 / w)
    rows = torch.floor(torch.arange(int(h * factor)) / factor).long()
    cols = torch.floor(torch.arange(int(w * factor)) / factor).long()
    for i in range(2):
        sub = (rows[:, None], cols[None, :])
        p_s, g_s, m_s = pred[i][sub], gt[i][sub], mask[i][sub]
        a = np.stack([p_s[m_s].double().numpy(), np.ones(int(m_s.sum()))], 1)
        (s, t), *_ = np.linalg.lstsq(a, g_s[m_s].double().numpy(), rcond=None)
        torch.testing.assert_close(out[i], (pred[i] * s + t).float(), rtol=1e-5, atol=1e-5)
    # the full-resolution fit is different on this noisy data, and small maps are untouched
    full = align_least_squares(pred, gt, mask)
    assert (full - out).abs().max() > 1e-3
    torch.testing.assert_close(align_least_squares(pred, gt, mask, max_resolution=90), full)


# --- scikit-learn's sequential RANSAC semantics (issue 12) ---------------------------------------

from ransac_data import A_TRUE, kitti_like, nyu_like, sequential_ransac, sklearn_pairs  # noqa: E402


def _search(pred, gt, mask, pairs, **kw):
    from ppd_lightning.evaluation.align import _fit_log_ransac  # the fit plus its search record

    opts = dict(max_trials=1000, generator=None, stop_probability=0.99, max_score_points=None)
    opts.update(kw)
    return _fit_log_ransac(
        pred,
        gt,
        mask,
        opts["max_trials"],
        opts["generator"],
        opts["stop_probability"],
        opts["max_score_points"],
        64,
        1 << 24,
        pairs,
    )


def _xy(pred, gt, mask, i):
    return pred[i][mask[i]].double().numpy(), np.log(gt[i][mask[i]].double().numpy() + 1.0)


@pytest.mark.parametrize("seed", [1, 4])
def test_log_ransac_matches_sklearn_on_its_sample_sequence_with_outliers(seed):
    """KITTI-like sparse map with gross outliers that a tilted line collects: seed 1 is one where
    scikit-learn's own first trials pick the wrong line, seed 4 one where the old chunked search
    (best of the first 8 trials, then the stopping rule) picked a wrong line scikit-learn does not."""
    pred, gt, mask = kitti_like(seed, h=176, w=608)
    x, y = _xy(pred, gt, mask, 0)
    pairs = sklearn_pairs(x.size, seed, 1000)
    r = RANSACRegressor(max_trials=1000, random_state=seed).fit(x[:, None], y)
    a, b, search = _search(pred, gt, mask, torch.as_tensor(pairs)[None])
    assert search.n_trials.item() == r.n_trials_
    assert search.n_inliers.item() == int(r.inlier_mask_.sum())
    assert a.item() == pytest.approx(float(r.estimator_.coef_[0]), rel=1e-9)
    assert b.item() == pytest.approx(float(r.estimator_.intercept_), rel=1e-9, abs=1e-9)


def test_log_ransac_equals_plain_sequential_loop_on_noisy_batches():
    """Same sample sequence -> the same winning trial, trial count and fit as the one-trial-at-a-time
    loop, for every image of a batch that stops at different trials (dense noisy maps with 60 %
    outliers: dozens of trials, several chunks, and the stop falls inside a chunk)."""
    pred, gt, mask = nyu_like(3, b=4, h=48, w=64, noise=0.08, outliers=0.6)
    n = mask.reshape(4, -1).sum(1)
    g = np.random.RandomState(0)
    pairs = np.stack(
        [np.stack([g.choice(int(n.min()), 2, replace=False) for _ in range(300)]) for _ in range(4)]
    )
    a, b, search = _search(pred, gt, mask, torch.as_tensor(pairs), max_trials=300)
    trials = []
    for i in range(4):
        x, y = _xy(pred, gt, mask, i)
        a_ref, b_ref, k_ref, n_ref = sequential_ransac(x, y, pairs[i], max_trials=300)
        trials.append(k_ref)
        assert search.n_trials[i].item() == k_ref
        assert search.n_inliers[i].item() == n_ref
        assert search.a[i].item() == pytest.approx(a_ref, rel=1e-12)
        assert search.b[i].item() == pytest.approx(b_ref, rel=1e-12, abs=1e-12)
    assert len(set(trials)) > 1 and max(trials) > 8, trials  # not all stopping in the first chunk


def test_log_ransac_stop_inside_a_chunk_discards_later_better_trials():
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
    a, b, search = _search(pred, gt, mask, torch.as_tensor(seq)[None])
    a_ref, _, k_ref, _ = sequential_ransac(x, y, seq)
    assert k_ref == 2 and search.n_trials.item() == 2
    assert search.best_trial.item() in (0, 1)
    assert search.a.item() == pytest.approx(A_TRUE, rel=1e-6)  # the winning line is the true one
    # more trials allowed by a stricter rule: the wrong line is reached and wins, as in the loop
    a3, _, s3 = _search(pred, gt, mask, torch.as_tensor(seq)[None], stop_probability=0.999999)
    assert s3.best_trial.item() == 2 and abs(a3.item() - a.item()) > 0.01
    assert sequential_ransac(x, y, seq, p=0.999999)[0] == pytest.approx(s3.a.item(), rel=1e-12)


def test_log_ransac_degenerate_pair_is_a_horizontal_line_not_a_skip():
    """Two samples with the same prediction: scikit-learn's LinearRegression fits the horizontal
    line through their mean and the trial counts (it is not skipped)."""
    pred = torch.tensor([[[0.0, 0.0, 1.0, 2.0, 3.0, 4.0]]])
    gt = torch.expm1(torch.tensor([[[1.0, 1.2, 1.1, 1.05, 5.0, 9.0]]]))
    mask = torch.ones_like(pred, dtype=torch.bool)
    x, y = _xy(pred, gt, mask, 0)
    seq = np.array([[0, 1], [4, 5], [2, 3]])
    _, _, search = _search(pred, gt, mask, torch.as_tensor(seq)[None], max_trials=3)
    a_ref, b_ref, k_ref, n_ref = sequential_ransac(x, y, seq, max_trials=3)
    assert search.n_trials.item() == k_ref == 3
    assert (search.a.item(), search.n_inliers.item()) == (pytest.approx(a_ref), n_ref)
    assert search.b.item() == pytest.approx(b_ref)


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


def test_log_ransac_public_api_gives_sklearn_answer_on_noisy_dense_maps(monkeypatch):
    """Through ``align_log_ransac``'s own sampler (replaying scikit-learn's sample sequence): a
    dense map with prediction noise and 5 % outliers, where every trial has a different inlier
    count, so keeping the best of a chunk of 8 before applying the stopping rule (old code) picks
    another trial than scikit-learn, which stops after 2."""
    import ppd_lightning.evaluation.align as align_mod

    pred, gt, mask = nyu_like(6, h=60, w=80, noise=0.05)
    x, y = _xy(pred, gt, mask, 0)
    r = RANSACRegressor(max_trials=1000, random_state=6).fit(x[:, None], y)
    pairs = torch.as_tensor(sklearn_pairs(x.size, 6, 1000))
    state = {"k": 0, "i1": None}

    def replay(n, shape, generator, device):  # i1 then i2 (shifted past i1) of the next trials
        t, k = shape[0], state["k"]
        if state["i1"] is None:
            state["i1"] = pairs[k : k + t, 0][None]
            return state["i1"]
        i1, i2 = state["i1"], pairs[k : k + t, 1][None]
        state["i1"], state["k"] = None, k + t
        return i2 - (i2 > i1).long()

    monkeypatch.setattr(align_mod, "_randint_below", replay)
    a, b = fit_log_ransac(pred, gt, mask)
    assert r.n_trials_ < 8  # the stop falls inside the first chunk
    assert a.item() == pytest.approx(float(r.estimator_.coef_[0]), rel=1e-9)
    assert b.item() == pytest.approx(float(r.estimator_.intercept_), rel=1e-9, abs=1e-9)
    out = align_log_ransac(pred, gt, mask)
    assert out.shape == pred.shape


def test_log_ransac_evaluates_few_trials_past_the_stop(monkeypatch):
    """The batched search must not pay for trials past the stop: a clean image is scored on one
    trial (scikit-learn stops after it), images that have stopped are no longer scored, and on a
    noisy batch the trials scored stay within a chunk of the trials scikit-learn runs."""
    import ppd_lightning.evaluation.align as align_mod

    scored = []
    real = align_mod._count_inliers

    def spy(pts, rows, a, b):
        scored.append((a.shape[0], a.shape[1]))
        return real(pts, rows, a, b)

    monkeypatch.setattr(align_mod, "_count_inliers", spy)
    pred, gt, mask = nyu_like(1, b=2, h=30, w=40, noise=0.0, outliers=0.0)
    _, _, search = _search(pred, gt, mask, None, generator=torch.Generator().manual_seed(0))
    assert search.n_trials.tolist() == [1, 1] and scored == [(2, 1)]

    scored.clear()
    pred, gt, mask = nyu_like(3, b=4, h=48, w=64, noise=0.08, outliers=0.6)
    n = mask.reshape(4, -1).sum(1)
    g = np.random.RandomState(0)
    pairs = np.stack(
        [np.stack([g.choice(int(n.min()), 2, replace=False) for _ in range(300)]) for _ in range(4)]
    )
    _, _, search = _search(pred, gt, mask, torch.as_tensor(pairs), max_trials=300)
    per_image = torch.zeros(4, dtype=torch.long)
    done_at = search.n_trials
    start = 0
    for rows, t in scored:
        live = done_at > start  # images still searching when this chunk started
        assert rows == int(live.sum()), (rows, live)
        per_image += live.long() * t
        start += t
    assert (per_image >= done_at).all()
    assert (per_image <= 2 * done_at).all(), (per_image, done_at)  # geometric chunks: at most 2x
