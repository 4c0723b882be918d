import math

import pytest
import torch

from scorekit import VE, ScoreModel
from scorekit.nets import MLP, NETS, EnergyMLP, NoiseEmbedding, UNet, build_net


@pytest.mark.parametrize(
    "config, shape",
    [
        ({"name": "mlp", "dim": 2, "hidden": 16, "depth": 2}, (5, 2)),
        ({"name": "mlp", "dim": 64, "hidden": 16, "depth": 1}, (5, 1, 8, 8)),
        ({"name": "unet", "channels": 1, "base": 8, "mults": [1, 2]}, (3, 1, 8, 8)),
        ({"name": "unet", "channels": 3, "base": 8, "mults": [1, 2, 2]}, (2, 3, 32, 32)),
        ({"name": "energy_mlp", "dim": 2, "hidden": 16, "depth": 1}, (5, 2)),
        (
            {"name": "mlp", "dim": 64, "hidden": 16, "depth": 1, "fourier_features": [8.5, 17]},
            (5, 1, 8, 8),
        ),  # fmt: skip
    ],
)
def test_build_net_roundtrip_rebuilds_the_same_function(config, shape):
    torch.manual_seed(0)
    net = build_net(config)
    for p in net.parameters():  # make the zero-initialised output layers non-trivial
        p.data.add_(0.1 * torch.randn_like(p))
    again = build_net(net.config())
    assert again.config() == net.config()
    again.load_state_dict(net.state_dict())
    x, t = torch.randn(shape), torch.rand(shape[0])
    y = net(x, t)
    assert y.shape == ((shape[0],) if config["name"] == "energy_mlp" else shape)
    assert torch.equal(y, again(x, t))


def test_build_net_errors_name_the_problem():
    with pytest.raises(ValueError, match="name"):
        build_net({"name": "resnet"})
    with pytest.raises(ValueError, match="unexpected"):
        build_net({"name": "mlp", "dim": 2, "width": 3})
    assert set(NETS) == {"mlp", "unet", "energy_mlp"}


def test_noise_embedding_features():
    emb = NoiseEmbedding(8, kind="sinusoidal", scale=100.0)
    assert torch.allclose(emb.freqs, torch.tensor([1.0, 100 ** (1 / 3), 100 ** (2 / 3), 100.0]))
    # the fixed random frequencies depend only on the seed
    assert torch.equal(NoiseEmbedding(16, seed=3).freqs, NoiseEmbedding(16, seed=3).freqs)
    assert not torch.equal(NoiseEmbedding(16, seed=3).freqs, NoiseEmbedding(16, seed=4).freqs)
    # log_t input: t and 10 t differ by a constant shift log(10) in the features' argument
    e = NoiseEmbedding(4, kind="sinusoidal", scale=1.0, input="log_t")
    e.mlp = torch.nn.Identity()
    t = torch.tensor([0.5, 5.0])
    f = e(t)
    assert torch.allclose(f[:, 0], torch.sin(2 * math.pi * torch.log(t)), atol=1e-6)
    with pytest.raises(ValueError, match="dim must be even"):
        NoiseEmbedding(5)
    with pytest.raises(ValueError, match="shape"):
        NoiseEmbedding(4)(torch.rand(3, 1))


def test_mlp_fourier_features_are_sin_and_cos_of_pi_f_x():
    net = MLP(3, hidden=8, depth=1, fourier_features=[2, 8.5]).double()
    x = torch.tensor([[0.1, -0.7, 1 / 17]], dtype=torch.float64)
    f = net.features(x)
    want = [*x[0], *[math.sin(math.pi * k * v) for v in x[0] for k in (2, 8.5)]]
    want += [math.cos(math.pi * k * v) for v in x[0] for k in (2, 8.5)]
    assert torch.allclose(f[0], torch.tensor(want, dtype=torch.float64), atol=1e-15)
    assert net.inp.in_features == 15
    # one period per bin: bins of width 2/17 all look the same to the f = 17 features
    g = MLP(1, hidden=4, depth=1, fourier_features=[17]).double()
    z = torch.tensor([[-1 + 0.03], [-1 + 2 / 17 + 0.03]], dtype=torch.float64)
    assert torch.allclose(g.features(z)[0, 1:], g.features(z)[1, 1:], atol=1e-12)
    assert "fourier_features" not in MLP(2, hidden=4, depth=1).config()
    assert "dropout" not in MLP(2, hidden=4, depth=1).config()
    for bad in ([0.0], [-1], "17", [float("nan")], [True]):
        with pytest.raises(ValueError, match="fourier_features"):
            MLP(2, hidden=4, depth=1, fourier_features=bad)


def test_mlp_dropout_acts_in_train_mode_only():
    torch.manual_seed(0)
    net = MLP(4, hidden=32, depth=2, dropout=0.5)
    for p in net.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    x, t = torch.randn(6, 4), torch.rand(6)
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    a, b = net(x, t), net(x, t)
    assert not torch.allclose(a, b)
    # with p = 0.5 the kept units are doubled: the mean over many masks is the eval output
    mean = torch.stack([net.blocks[0].drop(torch.ones(32)) for _ in range(4000)]).mean()
    assert abs(float(mean) - 1) < 0.02
    assert build_net(net.config()).config()["dropout"] == 0.5
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="dropout"):
            MLP(2, hidden=4, depth=1, dropout=bad)


def test_nets_depend_on_t_and_check_shapes():
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=1)
    x = torch.randn(4, 2)
    assert not torch.allclose(net(x, torch.zeros(4)), net(x, torch.ones(4)))
    with pytest.raises(ValueError, match="features"):
        net(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="t must have shape"):
        net(x, torch.zeros(3))
    unet = UNet(1, base=8, mults=(1, 2))
    assert torch.equal(unet(torch.randn(2, 1, 8, 8), torch.rand(2)), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        unet(torch.randn(2, 1, 7, 7), torch.rand(2))
    with pytest.raises(ValueError, match="shape"):
        unet(torch.randn(2, 3, 8, 8), torch.rand(2))


def test_unet_attention_is_permutation_equivariant_over_pixels():
    # self-attention alone commutes with a permutation of the spatial positions
    from scorekit.nets.unet import _Attention

    torch.manual_seed(0)
    att = _Attention(8).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    perm = torch.randperm(16)
    xp = x.flatten(2)[:, :, perm].reshape_as(x)
    assert torch.allclose(att(xp).flatten(2), att(x).flatten(2)[:, :, perm], atol=1e-12)


def test_energy_score_is_minus_gradient_and_conservative():
    torch.manual_seed(0)
    net = EnergyMLP(2, hidden=16, depth=2).double()
    model = ScoreModel(net, VE(), prediction="energy")
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    s = model(x, t)
    for i in range(3):
        g = torch.autograd.functional.jacobian(lambda z, i=i: net(z[None], t[i : i + 1])[0], x[i])
        assert torch.allclose(s[i], -g, atol=1e-12)
        # the Jacobian of a gradient field is symmetric (the Hessian of E)
        H = torch.autograd.functional.jacobian(lambda z, i=i: model(z[None], t[i : i + 1])[0], x[i])
        assert torch.allclose(H, H.T, atol=1e-10)
