"""Guided sampling and inpainting on sklearn's 8x8 digits.

A class-conditional MLP (eps prediction, VP, label dropout 0.1) and a noise-conditional
MLP classifier are trained with :class:`scorekit.train.trainer.Trainer` on the training split
(``train_test_split(test_size=0.3, random_state=0, stratify=y)``). Scores use a
logistic-regression classifier trained on the real training digits (accuracy on held-out
real digits reported as the reference):

* classifier-free guidance: for each class, ``n`` samples at guidance scale
  :math:`\\gamma`, share classified as the requested class (goal >= 0.8);
* classifier guidance of the unconditional part (:math:`\\gamma` on the noise-conditional
  classifier), same score;
* inpainting: held-out digits with the top half known; the bottom half sampled by
  replacement (PC and DDPM samplers) and by posterior guidance (Tweedie and isotropic
  covariances); the known half must be kept exactly
  and the completed digit classified as the original (chance 0.1; for reference, the known
  half completed by the mean training digit).

An image grid of guided samples (scale 2) is saved next to the JSON (``guidance_grid.png``).
The full run takes about 2.5 CPU-minutes.

``--quick`` trains for a few hundred steps (a smoke run; numbers mean little).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from scorekit import VP, ScoreModel, sample
from scorekit.guidance import ClassifierFreeGuidance, ClassifierGuided
from scorekit.inpaint import inpaint
from scorekit.losses import ClassifierObjective, LabelDropout, make_objective

SHAPE = (1, 8, 8)
HERE = Path(__file__).resolve().parent


class _Unconditional(ScoreModel):
    """A class-conditional model seen without labels: its null label's score."""

    num_classes = None

    def __init__(self, model):
        super().__init__(None, model.process, model.prediction, model.data_shape)
        self.model = model

    def raw(self, x, t):
        return self.model.raw(x, t)


def _train(model, objective, data, steps, lr, seed):
    from scorekit.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        steps=steps,
        batch_size=128,
        lr=lr,
        warmup=100,
        ema_decay=0.999,
        seed=seed,
        progress=False,
        log_every=max(steps, 1),
    )
    trainer = Trainer(model, objective, data, cfg, None, device="cpu")
    fit = trainer.fit()
    return trainer.ema.module.eval(), fit


def run(quick: bool = False) -> dict:
    # scorekit.train.data, .nets, .plots and .train arrive with the train branch
    from scorekit.app.plots import plot_image_grid, save_figure
    from scorekit.nets import MLP
    from scorekit.train.data import Normalizer

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    d = load_digits()
    X, y = d.data.astype(np.float64), d.target
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    norm = Normalizer(8.0, 8.0)
    xtr = norm.encode(torch.tensor(Xtr, dtype=torch.float32).reshape(-1, *SHAPE))
    data = TensorDataset(xtr, torch.tensor(ytr))
    judge = LogisticRegression(max_iter=5000).fit(Xtr / 16, ytr)
    real_acc = float(judge.score(Xte / 16, yte))

    def classify(x):
        img = norm.decode(x.double()).clamp(0, 16).reshape(len(x), 64).numpy()
        return judge.predict(img / 16)

    steps = 300 if quick else 6000
    clf_steps = 200 if quick else 3000
    n_per_class = 10 if quick else 50
    sampler_steps = 10 if quick else 50
    process = VP()

    torch.manual_seed(0)
    cond = ScoreModel(MLP(64, hidden=256, depth=3, num_classes=10), process, "eps", SHAPE)
    objective = LabelDropout(make_objective("dsm", process), 10, 0.1)
    cond_ema, fit = _train(cond, objective, data, steps, 2e-3, 0)
    torch.manual_seed(1)
    clf_obj = ClassifierObjective(process, 10)
    clf_net = ScoreModel(MLP(64, hidden=256, depth=3, out_dim=10), process)
    clf_ema, clf_fit = _train(clf_net, clf_obj, data, clf_steps, 2e-3, 1)
    noisy_clf = clf_ema.net
    train_s = time.perf_counter() - t0

    labels = torch.arange(10).repeat_interleave(n_per_class)
    out = {
        "suite": "guidance",
        "quick": quick,
        "train_steps": steps,
        "classifier_steps": clf_steps,
        "final_loss": fit["loss"],
        "classifier_final_loss": clf_fit["loss"],
        "train_seconds": train_s,
        "judge_accuracy_real": real_acc,
        "sampler": "ddim",
        "sampler_steps": sampler_steps,
        "n_per_class": n_per_class,
    }
    with torch.no_grad():
        for scale in (0.0, 1.0, 2.0, 4.0):
            g = torch.Generator().manual_seed(2)
            guided = ClassifierFreeGuidance(cond_ema, scale)
            r = sample(guided, len(labels), "ddim", sampler_steps, g, cond={"y": labels})
            acc = float((classify(r.x) == labels.numpy()).mean())
            out[f"cfg_accuracy_scale_{scale:g}"] = acc
            if scale == 2.0:
                first = torch.cat([r.x[labels == c][:10] for c in range(10)])
                fig = plot_image_grid(
                    first,
                    normalizer=norm,
                    nrow=10,
                    value_range=(0, 16),
                    title="Classifier-free guidance, scale 2 (one row a class)",
                )
                path = save_figure(fig, HERE / "results" / "guidance_grid.png")
                out["grid"] = str(path.relative_to(HERE.parent))
        for scale in (1.0, 4.0):
            g = torch.Generator().manual_seed(3)
            # the null label's (unconditional) score, guided by the noisy classifier
            guided = ClassifierGuided(_Unconditional(cond_ema), noisy_clf, scale)
            r = sample(guided, len(labels), "ddim", sampler_steps, g, cond={"y": labels})
            out[f"classifier_guidance_accuracy_scale_{scale:g}"] = float(
                (classify(r.x) == labels.numpy()).mean()
            )
    n_inp = 50 if quick else 300
    known = norm.encode(torch.tensor(Xte[:n_inp], dtype=torch.float32).reshape(-1, *SHAPE))
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[:, :4] = True  # top half known
    uncond = _Unconditional(cond_ema)
    for name, kw in [
        ("replacement_pc", dict(method="replacement", sampler="pc", steps=2 * sampler_steps)),
        ("replacement_ddpm", dict(method="replacement", sampler="ddpm", steps=2 * sampler_steps)),
        (
            "posterior_tweedie",
            dict(
                method="posterior",
                sampler="ddim",
                steps=sampler_steps,
                covariance="tweedie",
                noise_std=0.05,
            ),
        ),
        (
            "posterior_isotropic",
            dict(
                method="posterior",
                sampler="ddim",
                steps=sampler_steps,
                covariance="isotropic",
                data_var=0.3,
            ),
        ),
    ]:
        g = torch.Generator().manual_seed(4)
        r = inpaint(uncond, known, mask, generator=g, **kw)
        kept = float((r.x - known)[:, mask].abs().max())
        out[f"inpaint_{name}_known_max_abs_change"] = kept
        out[f"inpaint_{name}_accuracy"] = float((classify(r.x) == yte[:n_inp]).mean())
    # reference: the known half with the bottom half of the mean training digit
    mean_fill = torch.where(mask, known, xtr.mean(0, keepdim=True))
    out["inpaint_mean_fill_accuracy"] = float((classify(mean_fill) == yte[:n_inp]).mean())
    out["inpaint_chance"] = 0.1
    out["goal_cfg_accuracy"] = 0.8
    out["seconds"] = time.perf_counter() - t0
    return out
