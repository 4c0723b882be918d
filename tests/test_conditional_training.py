"""Class-conditional training and a noise-conditional classifier through the Trainer, on
(x, y) datasets; sampling through the one loop with cond=; one loader for every checkpoint."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from scorekit import VP, ExactScore, GaussianMixture, ScoreModel, nets, sample, train
from scorekit.guidance import ClassifierFreeGuidance, ClassifierGuided
from scorekit.losses import ClassifierObjective, LabelDropout, make_objective
from scorekit.train.checkpoint import load_model

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_conditional"


@pytest.fixture(scope="module")
def setup():
    mix = GaussianMixture([0.3, 0.3, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], stds=0.4)
    g = torch.Generator().manual_seed(0)
    x = mix.sample(3000, generator=g, dtype=torch.float32)
    y = mix.responsibilities(x.double()).argmax(1)
    return mix, TensorDataset(x, y)


def _fit(model, objective, data, steps, out=None):
    cfg = train.TrainConfig(
        steps=steps,
        batch_size=128,
        lr=3e-3,
        warmup=20,
        ema_decay=0.99,
        progress=False,
        log_every=steps,
    )
    trainer = train.Trainer(model, objective, data, cfg, out, device="cpu")
    trainer.fit()
    return trainer


def _hit(mix, x, y):
    return float(mix.responsibilities(x.double()).gather(1, y[:, None]).mean())


def test_conditional_training_with_label_dropout_then_guidance(setup):
    mix, data = setup
    process = VP()
    torch.manual_seed(0)
    model = ScoreModel(nets.MLP(2, hidden=64, depth=2, num_classes=3), process, "eps", (2,))
    obj = LabelDropout(make_objective("dsm", process), 3, 0.2)
    ema = _fit(model, obj, data, 600).ema.module.eval()
    y = torch.arange(3).repeat(50)
    with torch.no_grad():
        hits = {
            s: _hit(
                mix,
                sample(
                    ClassifierFreeGuidance(ema, s),
                    150,
                    "heun",
                    20,
                    torch.Generator().manual_seed(1),
                    cond={"y": y},
                ).x,  # fmt: skip
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
    obj = ClassifierObjective(process, 3)
    clf = ScoreModel(nets.MLP(2, hidden=64, depth=2, out_dim=3), process)
    ema = _fit(clf, obj, data, 400).ema.module
    y = torch.arange(3).repeat(50)
    guided = ClassifierGuided(ExactScore(mix, process), ema.net, 1.0)
    with torch.no_grad():
        r = sample(guided, 150, "heun", 20, torch.Generator().manual_seed(1),
                   dtype=torch.float32, cond={"y": y})  # fmt: skip
    assert _hit(mix, r.x, y) > 0.9


def test_one_loader_for_conditional_checkpoints(setup, tmp_path):
    _, data = setup
    process = VP()
    torch.manual_seed(0)
    model = ScoreModel(nets.MLP(2, hidden=16, depth=1, num_classes=3), process, "eps")
    obj = LabelDropout(make_objective("dsm", process), 3, 0.2)
    trainer = _fit(model, obj, data, 5, tmp_path)
    loaded, _, meta = load_model(tmp_path)
    assert loaded.data_shape == (2,) and loaded.net.num_classes == 3
    x, t = torch.randn(6, 2), torch.full((6,), 0.4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y=y), trainer.ema.module(x, t, y=y))
    # labels outside the model's classes are refused once, when training starts
    bad = TensorDataset(data.tensors[0][:10], torch.full((10,), 3))
    with pytest.raises(ValueError, match=r"data labels must lie in \[0, 2\]"):
        train.Trainer(model, obj, bad, train.TrainConfig(steps=1, batch_size=2, progress=False))


def test_a_checkpoint_of_the_previous_layout_loads_and_samples_as_before(tmp_path):
    # written by scorekit 0.1 (ClassConditional wrapper): `scorekit train --data digits
    # --conditional --steps 30 --batch 32` with a tiny MLP, then `scorekit sample --label 3
    # [--guidance 2] --n 8 --steps 10 --seed 0`; samples.npz holds what that printed
    from scorekit.app.cli import main

    model, normalizer, meta = load_model(LEGACY)
    assert model.net.num_classes == 10 and model.data_shape == (1, 8, 8)
    want = np.load(LEGACY / "samples.npz")
    for guidance, key in ((None, "guidance1"), (2.0, "guidance2")):
        out = tmp_path / f"{key}.npy"
        argv = ["sample", str(LEGACY), "--label", "3", "--n", "8", "--steps", "10",
                "--seed", "0", "--out", str(out)]  # fmt: skip
        if guidance is not None:
            argv += ["--guidance", str(guidance)]
        assert main(argv) == 0
        np.testing.assert_allclose(np.load(out), want[key], rtol=1e-4, atol=1e-4)
    # training does not resume from it, and says what to do
    obj = LabelDropout(make_objective("dsm", model.process), 10)
    cfg = train.TrainConfig(steps=1, batch_size=2)
    trainer = train.Trainer(model, obj, torch.zeros(4, 1, 8, 8), cfg)
    with pytest.raises(ValueError, match="previous|0.1's layout.*start a new run"):
        trainer.resume(LEGACY / "checkpoint.safetensors")
