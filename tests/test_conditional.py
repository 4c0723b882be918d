"""Conditioning as an input: class labels through the nets, label dropout, the classifier
objective, and classifier-free guidance as a model wrapper."""

import math

import pytest
import torch

from scorekit import VP, GaussianMixture, ScoreModel, nets
from scorekit.guidance import ClassifierFreeGuidance, ExactClassifier, ExactConditional
from scorekit.losses import ClassifierObjective, DSMObjective, LabelDropout

CLASSES = [0, 1, 2]


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture([0.3, 0.3, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], stds=0.4)


@pytest.mark.parametrize(
    "build",
    [
        lambda: nets.MLP(2, hidden=16, depth=1, num_classes=3),
        lambda: nets.EnergyMLP(2, hidden=16, depth=1, num_classes=3),
    ],
)
def test_nets_embed_the_label_and_the_null_label(build):
    torch.manual_seed(0)
    net = build()
    x, t = torch.randn(4, 2), torch.rand(4)
    a = net(x, t, y=torch.tensor([0, 0, 0, 0]))
    b = net(x, t, y=torch.tensor([0, 1, 2, 3]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1:], b[1:])
    # no label is the null label K
    torch.testing.assert_close(net(x, t), net(x, t, y=torch.full((4,), 3)))
    # gradients reach the label table, and the config rebuilds the same network
    b.sum().backward()
    table = net.embed.labels if hasattr(net, "embed") else net.mlp.embed.labels
    assert table.weight.grad[:4].abs().sum() > 0
    assert nets.build_net(net.config()).config() == net.config()
    with pytest.raises(ValueError, match="y must have shape"):
        net(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="takes no class labels"):
        nets.MLP(2, hidden=8, depth=1)(x, t, y=torch.zeros(4, dtype=torch.long))


def test_unet_takes_labels():
    torch.manual_seed(0)
    net = nets.UNet(1, base=8, mults=(1, 2), num_classes=10)
    nn_out = net.out
    torch.nn.init.normal_(nn_out.weight)  # the output starts at zero: make it see the labels
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert not torch.allclose(net(x, t, y=torch.tensor([1, 1])), net(x, t, y=torch.tensor([1, 2])))


def test_label_dropout_drops_at_its_rate_and_passes_the_rest(mix):
    proc = VP()
    model = ExactConditional(mix, CLASSES, proc)
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(64, generator=g)
    y = mix.responsibilities(x0).argmax(1)
    base = DSMObjective(proc)
    t = torch.full((64,), 0.3, dtype=torch.float64)
    for p, labels in [(0.0, y), (1.0, torch.full_like(y, 3))]:
        obj = LabelDropout(base, 3, p)
        got = obj(model, x0, t=t, generator=torch.Generator().manual_seed(5), y=y)
        g5 = torch.Generator().manual_seed(5)
        if p > 0:
            torch.rand(64, generator=g5, dtype=torch.float64)  # the dropout draw comes first
        want = base(model, x0, t=t, generator=g5, y=labels)
        torch.testing.assert_close(got, want)
    # the rate: a binomial within 4 standard errors
    seen = []

    class Spy:
        process = proc

        def sample_t(self, *a, **k):
            return base.sample_t(*a, **k)

        def __call__(self, model, x0, t=None, generator=None, y=None):
            seen.append(y)
            return x0.sum(1)

    yy = torch.randint(0, 3, (20000,), generator=torch.Generator().manual_seed(1))
    LabelDropout(Spy(), 3, 0.2)(None, torch.zeros(20000, 2), y=yy,
                                 generator=torch.Generator().manual_seed(2))  # fmt: skip
    null = seen[0] == 3
    assert abs(float(null.float().mean()) - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20000)
    assert torch.equal(seen[0][~null], yy[~null])
    with pytest.raises(ValueError, match="label_dropout"):
        LabelDropout(base, 3, 1.5)


def test_classifier_objective_is_smallest_for_the_bayes_classifier(mix):
    proc = VP()
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(4000, generator=g)
    y = torch.multinomial(mix.responsibilities(x0), 1, generator=g)[:, 0]
    obj = ClassifierObjective(proc, 3)
    exact = ExactClassifier(mix, CLASSES, proc)

    def ce(clf):
        return obj(ScoreModel(clf, proc), x0, generator=torch.Generator().manual_seed(1), y=y)

    best = ce(exact).mean()
    assert best < ce(lambda x, t: 0.7 * exact(x, t)).mean()
    assert best < ce(lambda x, t: 1.4 * exact(x, t)).mean()
    assert best < math.log(3) - 0.3
    with pytest.raises(ValueError, match=r"logits of shape \(B, 3\)"):
        ce(lambda x, t: x)
    with pytest.raises(ValueError, match="needs the labels"):
        obj(exact, x0)


def test_cfg_is_the_exact_guided_score(mix):
    # u + gamma (c - u) with the exact conditional score: grad log p_t(x) + gamma grad log p(y|x)
    proc = VP()
    model = ExactConditional(mix, CLASSES, proc)
    clf = ExactClassifier(mix, CLASSES, proc)
    x = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((30,), 0.4, dtype=torch.float64)
    y = torch.arange(3).repeat(10)
    for gamma in (0.0, 1.0, 2.5):
        got = ClassifierFreeGuidance(model, gamma)(x, t, y=y)
        xi = x.clone().requires_grad_(True)
        lp = torch.log_softmax(clf(xi, t), 1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(lp, xi)
        torch.testing.assert_close(got, model(x, t) + gamma * grad, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="class-conditional model"):
        ClassifierFreeGuidance(ScoreModel(lambda x, t: x, proc), 2.0)
