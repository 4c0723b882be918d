"""Adapters: k-diffusion denoisers and diffusers U-Nets as scorekit models."""

import pytest
import torch

from scorekit import EDM, VE, VP, ExactScore, GaussianMixture, Process
from scorekit.adapters import DiscreteVP, diffusers_grid, from_denoiser, from_diffusers_unet
from scorekit.likelihood import log_prob
from scorekit.samplers import DDIM, sample


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.5, -0.5]], stds=[0.3, 0.5])


@pytest.mark.parametrize("process", [VE(0.01, 20.0), EDM(), VP()])
def test_from_denoiser_gives_the_exact_score(mix, process):
    def D(x, sigma):  # E[x0 | x0 + sigma eps = x], k-diffusion's convention
        return mix.posterior_mean(x, torch.ones_like(sigma), sigma)

    m = from_denoiser(D, process)
    exact = ExactScore(mix, process)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = process.t_min + (process.t_max - process.t_min) * torch.rand(
        32, generator=g, dtype=torch.float64
    )
    torch.testing.assert_close(m(x, t), exact(x, t))
    torch.testing.assert_close(m.x0(x, t), exact.posterior_mean(x, t))


def _cumprod(n=50):
    betas = torch.linspace(1e-3, 0.2, n, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def test_discrete_vp_matches_its_schedule_and_derivatives():
    ac = _cumprod()
    p = DiscreteVP(ac)
    tau = torch.arange(50, dtype=torch.float64)
    t = (tau + 1) / 50
    torch.testing.assert_close(p.alpha(t) ** 2, ac)
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones(50, dtype=t.dtype))
    torch.testing.assert_close(p.timestep(t), tau)
    # derivatives inside segments by central differences
    tm = (torch.arange(1, 49, dtype=torch.float64) + 0.37) / 50
    h = 1e-7
    torch.testing.assert_close(p.d_alpha(tm), (p.alpha(tm + h) - p.alpha(tm - h)) / (2 * h))
    torch.testing.assert_close(p.d_sigma(tm), (p.sigma(tm + h) - p.sigma(tm - h)) / (2 * h))
    betas_eff = -torch.log(ac[1:] / ac[:-1]) * 50  # g^2 = -d log(alpha-bar)/dt per segment
    torch.testing.assert_close(p.g2(tm), betas_eff[:48])  # segment i holds tau = i - 1 -> i
    torch.testing.assert_close(p.g2(tm), Process.g2(p, tm))  # the generic formula agrees
    s = p.sigma(tm)
    torch.testing.assert_close(p.t_of_sigma(s), tm)
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteVP(torch.tensor([0.5, 0.9]))


def test_discrete_vp_sampling_of_an_exact_target(mix):
    """DDIM on the discrete process with the exact score reaches the target's moments."""
    p = DiscreteVP(_cumprod(200))
    exact = ExactScore(mix, p)
    g = torch.Generator().manual_seed(0)
    r = sample(exact, 4000, "heun", steps=40, generator=g, dtype=torch.float64)
    torch.testing.assert_close(r.x.mean(0), mix.mean(), atol=0.05, rtol=0)


def _tiny_unet(pred):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=100, clip_sample=False, prediction_type=pred, set_alpha_to_one=True
    )
    return unet, sched


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ddim_matches_diffusers_scheduler(pred, dtype):
    unet, sched = _tiny_unet(pred)
    unet = unet.to(dtype)
    # diffusers holds alpha-bar in float32; in float64 compare at float64 precision
    sched.alphas_cumprod = sched.alphas_cumprod.to(dtype)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=dtype)
    ref = x.clone()
    with torch.no_grad():
        for tau in sched.timesteps:
            out = unet(ref, tau).sample
            ref = sched.step(out, tau, ref, eta=0.0).prev_sample
    model = from_diffusers_unet(unet, sched)
    grid = diffusers_grid(sched)
    assert grid.shape == (11,) and float(grid[-1]) == 0.0
    ours = DDIM(0.0)(model, x, grid)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(ours.x, ref, atol=tol, rtol=tol)
    assert ours.nfe == 10


def test_diffusers_unet_runs_samplers_and_likelihood():
    unet, sched = _tiny_unet("epsilon")
    unet = unet.double()
    model = from_diffusers_unet(unet, sched, timestep="nearest")
    assert model.process.N == 100 and model.net.data_shape == (1, 8, 8)
    g = torch.Generator().manual_seed(0)
    r = sample(model, 2, "dpmpp_2m", steps=4, generator=g, dtype=torch.float64)
    assert r.x.shape == (2, 1, 8, 8) and torch.isfinite(r.x).all()
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    # "nearest" sends a time between two timesteps to the closer one
    t = torch.full((2,), (41 + 0.3) / 100, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, t), unet(x, torch.tensor(40.0)).sample)
        lp = log_prob(model, x, method="euler", steps=3, divergence="hutchinson", generator=g)
    assert torch.isfinite(lp.log_prob).all()


def test_adapter_bad_input():
    unet, sched = _tiny_unet("epsilon")
    with pytest.raises(ValueError, match="timestep"):
        from_diffusers_unet(unet, sched, timestep="linear")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        from_diffusers_unet(unet, object())
    with pytest.raises(ValueError, match="set_timesteps"):
        diffusers_grid(type("S", (), {"timesteps": [], "alphas_cumprod": [0.5]})())
    with pytest.raises(ValueError, match="denoiser must be callable"):
        from_denoiser(3, VE())
