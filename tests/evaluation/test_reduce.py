import numpy as np
import pytest
import torch

from ppd_lightning.evaluation.align import masked_median
from ppd_lightning.evaluation.reduce import sum_f64


@pytest.mark.parametrize("n", [1, 1023, 1024, 1025, 5 * 1024 + 7])
def test_sum_f64_matches_float64_sum(n):
    g = torch.Generator().manual_seed(n)
    x = torch.rand(3, n, generator=g) * 1e3 + 1e4  # large offset: naive float32 sums drift
    got = sum_f64(x)
    assert got.dtype == torch.float64 and got.shape == (3,)
    torch.testing.assert_close(got, x.double().sum(1), rtol=1e-7, atol=0)  # float32 within blocks


def test_sum_f64_counts_bools_exactly_and_reduces_trailing_dims():
    m = torch.zeros(2, 300, 700, dtype=torch.bool)
    m[0, :, :500] = True
    assert sum_f64(m).tolist() == [150000.0, 0.0]
    h = torch.full((1, 4, 4000), 0.5, dtype=torch.float16)
    assert sum_f64(h).item() == 8000.0
    d = torch.rand(2, 10, dtype=torch.float64)
    torch.testing.assert_close(sum_f64(d), d.sum(1))
    with pytest.raises(ValueError):
        sum_f64(torch.tensor(1.0))


def test_masked_median_even_counts_and_ties_match_numpy():
    g = torch.Generator().manual_seed(3)
    # ties: values on a coarse grid, so the two middle values are often equal
    x = torch.randint(0, 6, (64, 20), generator=g).float()
    m = torch.rand(64, 20, generator=g) > 0.3
    med = masked_median(x, m)
    for i in range(64):
        sel = x[i][m[i]].numpy()
        if sel.size:
            assert med[i].item() == float(np.median(sel)), i
        else:
            assert torch.isnan(med[i])
