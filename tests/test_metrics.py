import pytest
import torch

from scorekit.metrics import sliced_wasserstein


def test_sliced_wasserstein_of_a_shift():
    # Shifting by c moves every projection by theta . c, so SW2^2 = E[(theta . c)^2] =
    # |c|^2 / d exactly in expectation; in 1-D it is |c| exactly.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 1, generator=g, dtype=torch.float64)
    assert abs(float(sliced_wasserstein(x, x + 0.7, 8, g)) - 0.7) < 1e-12
    x = torch.randn(1000, 4, generator=g, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5, 2.0], dtype=torch.float64)
    sw = float(sliced_wasserstein(x, x + c, 4000, g))
    assert abs(sw - float(c.norm()) / 2) < 0.03 * float(c.norm()) / 2


def test_sliced_wasserstein_basic_properties():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(800, 3, generator=g, dtype=torch.float64)
    assert float(sliced_wasserstein(x, x, 16, g)) == 0.0
    a = sliced_wasserstein(x, y, 64, torch.Generator().manual_seed(2))
    b = sliced_wasserstein(y, x, 64, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    # 1-D Gaussians: W2(N(0,1), N(0,s^2)) = |1 - s|, for every direction.
    big_x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    big_y = 1.5 * torch.randn(30000, 3, generator=g, dtype=torch.float64)
    assert abs(float(sliced_wasserstein(big_x, big_y, 32, g)) - 0.5) < 0.03


def test_sliced_wasserstein_bad_input():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="same number of features"):
        sliced_wasserstein(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, 0)
