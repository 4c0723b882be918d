"""Class-conditional training and a noise-conditional classifier through the Trainer."""

import pytest
import torch

from scorekit import VP, ExactScore, GaussianMixture, ScoreModel, nets, train
from scorekit.conditional import (
    ClassConditional,
    ClassifierObjective,
    ConditionalObjective,
    load_conditional,
    pack_labels,
)
from scorekit.guidance import ConditionalScoreModel, sample_conditional
from scorekit.losses import make_objective


@pytest.fixture(scope="module")
def setup():
    mix = GaussianMixture([0.3, 0.3, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], stds=0.4)
    g = torch.Generator().manual_seed(0)
    x = mix.sample(3000, generator=g, dtype=torch.float32)
    y = mix.responsibilities(x.double()).argmax(1)
    return mix, pack_labels(x, y)


def _fit(model, objective, data, steps):
    cfg = train.TrainConfig(
        steps=steps,
        batch_size=128,
        lr=3e-3,
        warmup=20,
        ema_decay=0.99,
        progress=False,
        log_every=steps,
    )
    trainer = train.Trainer(model, objective, data, cfg, None, device="cpu")
    trainer.fit()
    return trainer.ema.module.eval()


def _hit(mix, x, y):
    return float(mix.responsibilities(x.double()).gather(1, y[:, None]).mean())


def test_conditional_training_with_label_dropout_then_guidance(setup):
    mix, data = setup
    process = VP()
    torch.manual_seed(0)
    cond = ConditionalScoreModel(
        ClassConditional(nets.MLP(2, hidden=64, depth=2), 3), process, 3, "eps", data_shape=(2,)
    )
    obj = ConditionalObjective(make_objective("dsm", process), (2,), label_dropout=0.2)
    ema = _fit(obj.trainable(cond), obj, data, 600)
    y = torch.arange(3).repeat(50)
    with torch.no_grad():
        hits = {
            s: _hit(
                mix,
                sample_conditional(
                    ema.net.cond, y, "heun", 20, torch.Generator().manual_seed(1), scale=s
                ).x,
                y,
            )
            for s in (0.0, 1.0, 3.0)
        }
    assert hits[0.0] < 0.6  # the null label ignores the class
    assert hits[1.0] > 0.9 and hits[3.0] > 0.95


def test_noise_conditional_classifier_guides_the_exact_score(setup):
    mix, data = setup
    process = VP()
    torch.manual_seed(0)
    obj = ClassifierObjective(process, (2,), 3)
    ema = _fit(obj.trainable(nets.MLP(2, hidden=64, depth=2, out_dim=3)), obj, data, 400)
    y = torch.arange(3).repeat(50)
    with torch.no_grad():
        r = sample_conditional(
            ExactScore(mix, process),
            y,
            "heun",
            20,
            torch.Generator().manual_seed(1),
            scale=1.0,
            classifier=ema.net,
            dtype=torch.float32,
        )
    assert _hit(mix, r.x, y) > 0.9


def test_checkpoint_roundtrip(setup, tmp_path):
    _, data = setup
    process = VP()
    torch.manual_seed(0)
    cond = ConditionalScoreModel(
        ClassConditional(nets.MLP(2, hidden=16, depth=1), 3), process, 3, "eps", data_shape=(2,)
    )
    obj = ConditionalObjective(make_objective("dsm", process), (2,), label_dropout=0.2)
    cfg = train.TrainConfig(steps=5, batch_size=32, progress=False, log_every=5, ckpt_every=5)
    trainer = train.Trainer(obj.trainable(cond), obj, data, cfg, tmp_path, meta=obj.meta())
    trainer.fit()
    trainer.save()
    loaded, _, meta = load_conditional(tmp_path / "checkpoint.safetensors")
    assert loaded.data_shape == (2,) and loaded.num_classes == 3 and loaded.prediction == "eps"
    x, t = torch.randn(6, 2), torch.full((6,), 0.4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), trainer.ema.module.net.cond(x, t, y))
    with pytest.raises(ValueError, match="does not hold a ClassConditional"):
        plain = train.Trainer(
            ScoreModel(nets.MLP(2, hidden=8, depth=1), process),
            make_objective("dsm", process),
            data[:, :2],
            cfg,
            tmp_path / "plain",
        )
        plain.save()
        load_conditional(tmp_path / "plain" / "checkpoint.safetensors")
