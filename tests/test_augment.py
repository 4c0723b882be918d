"""Non-leaky augmentation: the transforms, their parameters, their frequencies, the
objective wrapper, the network's conditioning and the CLI's --augment."""

from __future__ import annotations

import json
import math

import pytest
import torch

import scorekit as sk
from scorekit.losses import AUGMENT_DIM, Augmented, augment_images


def _images(n=7, side=5, seed=0):
    return torch.randn(n, 2, side, side, generator=torch.Generator().manual_seed(seed))


def _expected(x, a, m):
    """Each image transformed as its parameters say: flip, then rotate, then shift."""
    out = []
    for xi, ai in zip(x, a, strict=True):
        y = xi.flip(-1) if ai[0] == 1 else xi
        c, s = int(round(float(ai[1]))) + 1, int(round(float(ai[2])))
        k = {(1, 0): 0, (0, 1): 1, (-1, 0): 2, (0, -1): 3}[(c, s)]
        y = torch.rot90(y, k, (-2, -1))
        dx, dy = int(round(float(ai[3]) * m)), int(round(float(ai[4]) * m))
        out.append(torch.roll(y, (dy, dx), (-2, -1)))
    return torch.stack(out)


def test_nothing_applied_at_p_zero():
    x = _images()
    y, a = augment_images(x, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(y, x) and torch.equal(a, torch.zeros(len(x), AUGMENT_DIM))


@pytest.mark.parametrize("m", [1, 2])
def test_each_image_is_transformed_as_its_parameters_say(m):
    x = _images(64)
    y, a = augment_images(x, 0.6, torch.Generator().manual_seed(2), max_shift=m)
    assert torch.equal(y, _expected(x, a, m))
    # zero parameters exactly where the image was left as it was
    same = (y == x).flatten(1).all(1)
    assert torch.equal(same, (a == 0).all(1))
    assert (a == 0).all(1).any() and not (a == 0).all(1).all()


def test_transform_frequencies():
    n, p, m = 40_000, 0.3, 2
    _, a = augment_images(torch.zeros(n, 1, 4, 4), p, torch.Generator().manual_seed(3), max_shift=m)
    se = math.sqrt(p * (1 - p) / n)
    assert abs(float(a[:, 0].mean()) - p) < 4 * se  # flipped
    rotated = (a[:, 1:3] != 0).any(1)
    assert abs(float(rotated.double().mean()) - p) < 4 * se
    k = torch.atan2(a[rotated, 2], a[rotated, 1] + 1).div(math.pi / 2).round().remainder(4)
    shares = torch.bincount(k.long(), minlength=4).double() / rotated.sum()
    assert shares[0] == 0 and torch.allclose(
        shares[1:], torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02
    )
    d = (a[:, 3:5] * m).round().long()
    assert set(d.flatten().tolist()) == set(range(-m, m + 1))
    # among translated images each shift is uniform on [-m, m] (zero included)
    share0 = float((d == 0).double().mean())
    assert abs(share0 - ((1 - p) + p / (2 * m + 1))) < 0.01


def test_only_the_chosen_kinds():
    x = _images(200)
    y, a = augment_images(x, 1.0, torch.Generator().manual_seed(4), kinds=["translate"])
    assert (a[:, :3] == 0).all() and torch.equal(y, _expected(x, a, 1))
    y, a = augment_images(x, 1.0, torch.Generator().manual_seed(4), kinds=("xflip",))
    assert torch.equal(y, x.flip(-1)) and (a[:, 0] == 1).all() and (a[:, 1:] == 0).all()


def test_same_generator_same_draws():
    x = _images()
    r1 = augment_images(x, 0.5, torch.Generator().manual_seed(5))
    r2 = augment_images(x, 0.5, torch.Generator().manual_seed(5))
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"p": 1.5}, "p must be a probability"),
        ({"p": -0.1}, "p must be a probability"),
        ({"p": 0.1, "kinds": ["shear"]}, "kinds must be distinct names"),
        ({"p": 0.1, "kinds": []}, "kinds must be distinct names"),
        ({"p": 0.1, "kinds": ["xflip", "xflip"]}, "kinds must be distinct names"),
        ({"p": 0.1, "max_shift": 0}, "max_shift"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        augment_images(_images(), **kw)


def test_rotation_needs_square_images_and_images_at_all():
    with pytest.raises(ValueError, match="rot90 needs square images"):
        augment_images(torch.zeros(2, 1, 4, 6), 0.5)
    y, _ = augment_images(torch.zeros(2, 1, 4, 6), 0.5, kinds=["xflip", "translate"])
    assert y.shape == (2, 1, 4, 6)
    with pytest.raises(ValueError, match=r"x must be images \(B, C, H, W\)"):
        augment_images(torch.zeros(3, 16), 0.5)


def _model(augment_dim=AUGMENT_DIM):
    torch.manual_seed(0)
    net = sk.UNet(1, base=8, mults=(1, 2), attention=False, augment_dim=augment_dim)
    return sk.ScoreModel(net.double(), sk.VP(), "eps")


def test_network_reads_the_parameters_and_zero_is_none():
    model = _model()
    x, t = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    with torch.no_grad():
        for w in model.net.parameters():  # as after training (the output layer starts at 0)
            w.normal_(0, 0.2)
        none = model.net(x, t)
        zero = model.net(x, t, aug=torch.zeros(4, AUGMENT_DIM, dtype=torch.float64))
        some = model.net(x, t, aug=torch.eye(4, AUGMENT_DIM, dtype=torch.float64))
    assert torch.equal(none, zero) and not torch.allclose(none, some)
    with pytest.raises(ValueError, match=r"aug must have shape \(B, augment_dim\) = \(4, 5\)"):
        model.net(x, t, aug=torch.zeros(4, 3, dtype=torch.float64))
    plain = _model(None)
    with pytest.raises(ValueError, match="aug: this network takes no augmentation"):
        plain.net(x, t, aug=torch.zeros(4, AUGMENT_DIM, dtype=torch.float64))
    rebuilt = sk.build_net(sk.model_config(model)["net"])
    assert rebuilt.embed.augment_dim == AUGMENT_DIM


def test_objective_is_the_wrapped_one_on_the_transformed_images():
    model = _model()
    base = sk.make_objective("dsm", sk.VP())
    obj = Augmented(base, p=0.5)
    x0 = torch.randn(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = obj(model, x0, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x, a = augment_images(x0, 0.5, g)
    assert not torch.equal(x, x0)
    assert torch.equal(got, base(model, x, generator=g, aug=a))
    assert torch.equal(
        obj.sample_t(5, torch.Generator().manual_seed(1), torch.float64),
        base.sample_t(5, torch.Generator().manual_seed(1), torch.float64),
    )
    with pytest.raises(ValueError, match="aug: Augmented draws the augmentation itself"):
        obj(model, x0, aug=a)
    with pytest.raises(ValueError, match="objective must be a scorekit objective"):
        Augmented(lambda m, x: x)


def test_trainer_validates_without_augmentation(tmp_path):
    model = _model().float()
    base = sk.make_objective("dsm", sk.VP())
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = sk.TrainConfig(steps=3, batch_size=8, val_every=3, seed=0)
    trainer = sk.Trainer(model, Augmented(base, p=0.5), x, cfg, tmp_path, val_data=x[:16])
    trainer.fit()
    plain = sk.Trainer(trainer.model, base, x, cfg, val_data=x[:16])
    plain.ema.module.load_state_dict(trainer.ema.module.state_dict())
    assert trainer.validation_loss() == plain.validation_loss()


def test_cli_augment(tmp_path, capsys):
    from scorekit.app.cli import main

    net = tmp_path / "net.json"
    net.write_text(json.dumps({"net": {"base": 8}}))
    run = tmp_path / "run"
    base = ["train", "--data", "digits", "--batch", "8", "--config", str(net), "--out", str(run)]
    assert main([*base, "--steps", "2", "--augment", "0.2"]) == 0
    assert "augmented (p 0.2)" in capsys.readouterr().out
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["cli"]["augment"] == 0.2 and meta["cli"]["net"]["augment_dim"] == AUGMENT_DIM
    assert (
        main(["sample", str(run), "--n", "3", "--steps", "2", "--out", str(tmp_path / "s.npy")])
        == 0
    )
    capsys.readouterr()
    assert main([*base, "--steps", "4", "--resume", "--augment", "0"]) == 1
    err = capsys.readouterr().err
    assert "--augment 0.0: the run in" in err and "was trained with --augment 0.2" in err
    assert main([*base, "--steps", "4", "--resume"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 4
    capsys.readouterr()
    assert main([*base, "--steps", "2", "--augment", "1.5", "--out", str(tmp_path / "b")]) == 1
    assert "--augment must be a probability in [0, 1], got 1.5" in capsys.readouterr().err
    bad = ["train", "--data", "moons", "--n", "100", "--steps", "2", "--augment", "0.1"]
    assert main([*bad, "--out", str(tmp_path / "m")]) == 1
    assert "--augment 0.1: augmentation needs images and the U-Net" in capsys.readouterr().err


def test_cli_augment_needs_square_images(tmp_path, capsys):
    import numpy as np

    from scorekit.app.cli import main

    x = np.random.default_rng(0).random((20, 1, 8, 12)).astype(np.float32)
    np.save(tmp_path / "wide.npy", x)
    argv = ["train", "--data", str(tmp_path / "wide.npy"), "--steps", "1", "--augment", "0.1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    assert "--augment 0.1: its quarter turns need square images, got 8x12" in (
        capsys.readouterr().err
    )
