import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def mixture2d():
    from scorekit import GaussianMixture

    return GaussianMixture(
        [0.3, 0.7],
        [[-2.0, 0.0], [1.5, 1.0]],
        covs=[[[0.5, 0.2], [0.2, 0.3]], [[0.4, -0.1], [-0.1, 0.6]]],
    )
