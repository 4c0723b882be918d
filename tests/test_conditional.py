"""Training pieces for conditional models: label dropout, packing, objectives."""

import math

import pytest
import torch
from torch import nn

from scorekit import VP, GaussianMixture
from scorekit.conditional import (
    ClassConditional,
    ClassifierObjective,
    ConditionalObjective,
    drop_labels,
    labels_from_column,
    pack_labels,
    unpack_labels,
)
from scorekit.guidance import ConditionalScoreModel, ExactClassifier, ExactConditional
from scorekit.losses import DSMObjective

CLASSES = [0, 1, 2]


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture([0.3, 0.3, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], stds=0.4)


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(1, 8), nn.SiLU(), nn.Linear(8, 8))
        self.out = nn.Linear(2 + 8, 2)

    def forward(self, x, t):
        return self.out(torch.cat([x, self.embed(t[:, None])], 1))


def test_drop_labels_rate_and_identity():
    y = torch.randint(0, 5, (20000,), generator=torch.Generator().manual_seed(0))
    d = drop_labels(y, 0.2, 5, torch.Generator().manual_seed(1))
    null = d == 5
    assert abs(float(null.float().mean()) - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20000)
    assert torch.equal(d[~null], y[~null])
    assert torch.equal(drop_labels(y, 0.0, 5), y)
    with pytest.raises(ValueError, match="label_dropout"):
        drop_labels(y, 1.5, 5)


def test_pack_roundtrip_and_errors():
    x = torch.randn(7, 1, 4, 4)
    y = torch.arange(7)
    p = pack_labels(x, y)
    assert p.shape == (7, 17)
    x2, y2 = unpack_labels(p, (1, 4, 4))
    assert torch.equal(x2, x) and torch.equal(y2, y)
    with pytest.raises(ValueError, match=r"packed must have shape \(B, 10\)"):
        unpack_labels(p, (3, 3))
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\) = \(7,\)"):
        pack_labels(x, y[:3])


def test_class_conditional_embeds_the_label():
    torch.manual_seed(0)
    net = ClassConditional(ToyNet(), 3)
    x, t = torch.randn(4, 2), torch.rand(4)
    a = net(x, t, torch.tensor([0, 0, 0, 0]))
    b = net(x, t, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1:], b[1:])
    # without a label the wrapped embedding refuses to run
    with pytest.raises(RuntimeError, match="without labels"):
        net.net(x, t)
    with pytest.raises(ValueError, match="noise embedding submodule 'embed'"):
        ClassConditional(nn.Linear(2, 2), 3)
    cfg = ConditionalObjective.trainable(ConditionalScoreModel(net, VP(), 3)).net.config()
    assert cfg == {
        "name": "conditional",
        "num_classes": 3,
        "null_label": True,
        "net": {"name": "class_conditional", "num_classes": 3, "net": "ToyNet"},
    }
    # gradients reach the label table
    net(x, t, torch.tensor([0, 1, 2, 3])).sum().backward()
    assert net._embedding.table.weight.grad[:4].abs().sum() > 0


def test_conditional_objective_uses_dropped_labels(mix):
    proc = VP()
    cond = ExactConditional(mix, CLASSES, proc)
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(64, generator=g)
    y = mix.responsibilities(x0).argmax(1)
    packed = pack_labels(x0, y).double()
    base = DSMObjective(proc)
    t = torch.full((64,), 0.3, dtype=torch.float64)
    for p, labels in [(0.0, y), (1.0, torch.full_like(y, 3))]:
        obj = ConditionalObjective(base, (2,), label_dropout=p)
        got = obj(obj.trainable(cond), packed, t=t, generator=torch.Generator().manual_seed(5))
        g5 = torch.Generator().manual_seed(5)
        if p > 0:
            torch.rand(64, generator=g5)  # the dropout draw comes first
        want = base(cond.bind(labels), x0, t=t, generator=g5)
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="ConditionalScoreModel"):
        ConditionalObjective.trainable(nn.Linear(2, 2))
    no_null = ConditionalScoreModel(lambda x, t, y: x, proc, 3, null_label=False)
    obj = ConditionalObjective(base, (2,), label_dropout=0.1)
    with pytest.raises(ValueError, match="null_label=True"):
        obj(no_null.bind(y[:2]), packed[:2])


def test_classifier_objective_is_smallest_for_the_bayes_classifier(mix):
    proc = VP()
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(4000, generator=g)
    y = torch.multinomial(mix.responsibilities(x0), 1, generator=g)[:, 0]
    packed = pack_labels(x0, y).double()
    obj = ClassifierObjective(proc, (2,), 3)
    exact = ExactClassifier(mix, CLASSES, proc)

    def ce(clf):
        return obj(obj.trainable(clf), packed, generator=torch.Generator().manual_seed(1)).mean()

    best = ce(exact)
    assert best < ce(lambda x, t: 0.7 * exact(x, t)) and best < ce(lambda x, t: 1.4 * exact(x, t))
    assert best < math.log(3) - 0.3
    with pytest.raises(ValueError, match=r"logits of shape \(B, 3\)"):
        ce(lambda x, t: x)


def test_labels_from_column():
    table = torch.tensor([[0.5, 3.0, 1.0], [1.5, 7.0, 2.0], [2.5, 3.0, 3.0]])
    x, y, classes = labels_from_column(table, 1)
    assert torch.equal(x, table[:, [0, 2]]) and torch.equal(y, torch.tensor([0, 1, 0]))
    assert torch.equal(classes[y], table[:, 1])
    x, y, _ = labels_from_column(table, -1)
    assert torch.equal(x, table[:, :2]) and torch.equal(y, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"column must be an integer in \[-3, 2\], got 3"):
        labels_from_column(table, 3)
