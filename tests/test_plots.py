import json

import pytest
import torch

from scorekit import VE, ExactScore, GaussianMixture
from scorekit.app.plots import (
    plot_image_grid,
    plot_loss_per_sigma,
    plot_samples,
    plot_score_field,
    plot_trajectories,
    save_figure,
)
from scorekit.train.data import Normalizer


def _check_labelled(fig):
    assert fig._suptitle is not None or all(ax.get_title() for ax in fig.axes)
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


@pytest.fixture
def target():
    return GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.4)


def test_score_field_arrows_follow_the_exact_score(target, tmp_path):
    model = ExactScore(target, VE(0.01, 5.0))
    x = target.sample(500, generator=torch.Generator().manual_seed(0))
    norm = Normalizer(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5]))
    fig = plot_score_field(model, norm.encode(x), [0.2, 0.8], normalizer=norm, grid=9)
    _check_labelled(fig)
    q = [c for c in fig.axes[0].collections if hasattr(c, "U")][0]
    # arrows are unit directions of the score in data space: s_data = s_model / scale
    xy = torch.tensor(q.get_offsets(), dtype=torch.float64)
    s = model(norm.encode(xy), torch.full((len(xy),), 0.2, dtype=torch.float64)) / norm.scale
    s = s / s.norm(dim=1, keepdim=True)
    assert torch.allclose(torch.tensor(q.U), s[:, 0], atol=1e-6)
    assert torch.allclose(torch.tensor(q.V), s[:, 1], atol=1e-6)
    assert save_figure(fig, tmp_path / "f.png").stat().st_size > 5000


def test_samples_trajectories_grid_loss(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(300, 2, generator=g)
    figs = [
        plot_samples({"a": data + 1, "b": data}, data),
        plot_samples({"a": data}),
        plot_trajectories({"heun": torch.randn(11, 20, 2, generator=g).cumsum(0)}, data),
        plot_image_grid(torch.rand(10, 1, 8, 8, generator=g) * 2 - 1),
        plot_image_grid(torch.rand(4, 3, 8, 8, generator=g), nrow=2),
    ]
    recs = [
        {"step": s, "loss": 1.0 / s, "sigma_edges": [0.01, 0.1, 1.0],
         "bucket_loss": [2.0 / s, None if s == 2 else 0.5 / s], "bucket_count": [3, 0]}
        for s in (1, 2, 3)
    ]  # fmt: skip
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    figs.append(plot_loss_per_sigma(log))
    for i, fig in enumerate(figs):
        _check_labelled(fig)
        assert save_figure(fig, tmp_path / f"{i}.png").stat().st_size > 3000
    line = figs[-1].axes[0].get_lines()[0]
    assert list(line.get_ydata()) == [2.0, 1.0, 2.0 / 3]
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot_samples({"a": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="images must have shape"):
        plot_image_grid(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="not found"):
        plot_loss_per_sigma(tmp_path / "none.jsonl")
