"""On CUDA, the same seeds give the CPU's results: every sampler, every objective, the
likelihood, a short training run, and checkpoints across devices; and no training or
sampler step synchronises with the host (``torch.cuda.set_sync_debug_mode("error")``).

Marked ``cuda``: skipped where no CUDA device is present (``make test`` on CPU), run by
``make gpu-check`` (``scripts/gpu_check.py``) on a GPU machine.
"""

import os

import pytest
import torch

from scorekit import VP, EDMPrecond, ExactScore, GaussianMixture, RectifiedFlow, ScoreModel, nets
from scorekit.likelihood import log_prob
from scorekit.losses import OBJECTIVES, make_objective
from scorekit.samplers import SAMPLERS, sample
from scorekit.train import TrainConfig, Trainer

# SCOREKIT_TEST_GPU=cpu runs the same code paths on the CPU (a check of the tests themselves)
GPU = os.environ.get("SCOREKIT_TEST_GPU", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(GPU == "cuda" and not torch.cuda.is_available(), reason="needs CUDA"),
]
F64 = torch.float64
MIX = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.5]], stds=0.4)
OPTIONS = {"edm": {"s_churn": 5.0}, "ddim": {"eta": 0.5}, "mala": {"step_size": 0.01}}


def _on(device, process=None):
    # the exact target follows its inputs' device
    return ExactScore(MIX, VP() if process is None else process)


def _energy(process, device):
    def energy(x, t):
        a, s = process.marginal(t)
        return -MIX.noised_log_prob(x, a, s)

    return ScoreModel(energy, process, "energy", (2,))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_gives_the_cpu_result(name):
    process = VP()
    opts = {"steps_per_level": 2} if name == "annealed_langevin" else OPTIONS.get(name, {})
    out = {}
    for dev in ("cpu", GPU):
        model = _energy(process, dev) if name == "mala" else _on(dev, process)
        g = torch.Generator().manual_seed(0)  # a CPU generator, CUDA samples
        out[dev] = sample(model, 64, name, 12, g, dtype=F64, device=dev, **opts).x
    assert out[GPU].device.type == torch.device(GPU).type
    torch.testing.assert_close(out[GPU].cpu(), out["cpu"], rtol=1e-6, atol=1e-6)


def _net_model(name, device):
    torch.manual_seed(0)
    process = VP()
    if name == "edm":
        from scorekit import EDM

        process = EDM()
        net = EDMPrecond(nets.MLP(2, hidden=32, depth=2), process)
        return ScoreModel(net, process, "x0").to(device, F64)
    if name == "flow_matching":
        process = RectifiedFlow()
        return ScoreModel(nets.MLP(2, hidden=32, depth=2), process, "velocity").to(device, F64)
    return ScoreModel(nets.MLP(2, hidden=32, depth=2), process, "eps").to(device, F64)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_and_its_gradient_match_the_cpu(name):
    vals, grads = {}, {}
    for dev in ("cpu", GPU):
        model = _net_model(name, dev)
        obj = make_objective(name, model.process)
        x = MIX.sample(128, torch.Generator().manual_seed(1)).to(dev, F64)
        loss = obj(model, x, generator=torch.Generator().manual_seed(2)).mean()
        loss.backward()
        vals[dev] = loss.detach().cpu()
        grads[dev] = torch.cat([p.grad.flatten().cpu() for p in model.parameters()])
    torch.testing.assert_close(vals[GPU], vals["cpu"], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grads[GPU], grads["cpu"], rtol=1e-6, atol=1e-8)


def test_likelihood_matches_the_cpu_and_the_exact_density():
    out = {}
    for dev in ("cpu", GPU):
        model = _on(dev)
        x = MIX.sample(64, torch.Generator().manual_seed(3)).to(dev, F64)
        out[dev] = log_prob(model, x, rtol=1e-8, atol=1e-8).log_prob.cpu()
    torch.testing.assert_close(out[GPU], out["cpu"], rtol=1e-6, atol=1e-6)


def test_short_training_run_and_checkpoints_across_devices(tmp_path):
    from scorekit.train.checkpoint import load_model

    data = MIX.sample(2048, torch.Generator().manual_seed(4)).float()
    losses = {}
    for dev in ("cpu", GPU):
        torch.manual_seed(0)
        model = ScoreModel(nets.MLP(2, hidden=64, depth=2), VP(), "eps")
        cfg = TrainConfig(steps=50, batch_size=128, lr=1e-3, progress=False, log_every=10)
        out = tmp_path / dev
        tr = Trainer(model, make_objective("dsm", VP()), data, cfg, out, device=dev)
        losses[dev] = tr.fit()["loss"]
        tr.close()
    assert abs(losses[GPU] - losses["cpu"]) < 1e-3 * max(1.0, abs(losses["cpu"]))
    # written on CUDA, read on the CPU and back; the same samples either way
    m_cpu, _, _ = load_model(tmp_path / GPU, device="cpu")
    m_gpu, _, _ = load_model(tmp_path / GPU, device=GPU)
    a = sample(m_cpu, 32, "heun", 10, torch.Generator().manual_seed(5)).x
    b = sample(m_gpu, 32, "heun", 10, torch.Generator().manual_seed(5), device=GPU).x
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


class _no_syncs:
    """A synchronising CUDA call inside the block raises (on CUDA; nothing on the CPU)."""

    def __enter__(self):
        if GPU.startswith("cuda"):
            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        if GPU.startswith("cuda"):
            torch.cuda.set_sync_debug_mode("default")


def test_no_training_or_sampler_step_syncs_with_the_device():
    model = _net_model("dsm", GPU).float()
    obj = make_objective("dsm", model.process)
    x = MIX.sample(128, torch.Generator().manual_seed(6)).to(GPU, torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator(device=GPU).manual_seed(7)
    step = lambda: (opt.zero_grad(), obj(model, x, generator=g).mean().backward(), opt.step())  # noqa: E731
    step()  # one-time reads (cached constants) happen at the first call
    with _no_syncs():
        step()
    from scorekit.samplers import make_sampler

    smp, exact = make_sampler("dpmpp_2m"), _on(GPU)
    grid = smp.default_grid(exact.process, 8).to(GPU, F64)
    xs = torch.randn(64, 2, device=GPU, dtype=F64)
    smp(exact, xs, grid)  # warm: schedule constants
    with _no_syncs():
        smp(exact, xs, grid)
