import pytest
import torch

# make test runs two xdist workers on two cores: one intra-op thread each avoids
# oversubscription (small ops on shared cores ran ~4x slower with torch's default).
torch.set_num_threads(1)


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
