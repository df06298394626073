"""Each distillation loss against a value computed by hand on fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from aptops.core.errors import ConfigError
from aptops.distill import attention_loss, feature_loss, relation_loss, response_loss


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_response_loss_matches_hand_computation():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    T, alpha = 2.0, 0.5
    expected_kd = kl(softmax([math.log(3.0) / T, 0.0]), softmax([0.0, 0.0])) * T * T
    assert expected_kd == pytest.approx(0.14545, abs=1e-4)
    out = response_loss(s, t, torch.tensor([0]), temperature=T, alpha=alpha)
    assert float(out["kd"]) == pytest.approx(expected_kd, rel=1e-5)
    assert float(out["ce"]) == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(alpha * expected_kd + (1 - alpha) * math.log(2.0), rel=1e-5)
    only_soft = response_loss(s, t, temperature=1.0)
    assert float(only_soft["loss"]) == pytest.approx(kl([0.75, 0.25], [0.5, 0.5]), rel=1e-5)


def test_response_loss_on_sequences_uses_the_predicting_positions():
    torch.manual_seed(0)
    s, t = torch.randn(1, 4, 5), torch.randn(1, 4, 5)
    labels = torch.tensor([[1, 2, -100, 3]])  # position 1 predicts an ignored label
    out = response_loss(s, t, labels, temperature=1.0, alpha=1.0)
    rows = [kl(softmax(t[0, i].tolist()), softmax(s[0, i].tolist())) for i in (0, 2)]
    assert float(out["kd"]) == pytest.approx(sum(rows) / 2, rel=1e-5)


def test_feature_loss_with_projection():
    s = [torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]
    t = [torch.zeros(1, 2, 3), torch.full((1, 2, 3), 3.0)]
    proj = torch.nn.ModuleDict({"0": torch.nn.Linear(2, 3, bias=False), "1": torch.nn.Linear(2, 3, bias=False)})
    with torch.no_grad():
        proj["1"].weight.fill_(1.0)  # each output = 1 + 1 = 2, target 3: squared error 1
    assert float(feature_loss(s, t, {1: 1}, proj).detach()) == pytest.approx(1.0)  # layer 0: zeros onto zeros
    assert float(feature_loss(s, t, {0: 0, 1: 1}, proj).detach()) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"teacher has hidden states 0-1"):
        feature_loss(s, t, {1: 5}, proj)


def test_relation_loss_matches_hand_computation_and_is_scale_invariant():
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    dt = [[0, 1, 1], [1, 0, math.sqrt(2)], [1, math.sqrt(2), 0]]
    ds = [[0, 1, 2], [1, 0, 1], [2, 1, 0]]
    mt, ms = (4 + 2 * math.sqrt(2)) / 6, 8 / 6

    def huber(a, b):
        d = abs(a - b)
        return 0.5 * d * d if d < 1 else d - 0.5

    expected = sum(huber(ds[i][j] / ms, dt[i][j] / mt) for i in range(3) for j in range(3)) / 9
    out = relation_loss(student, teacher, angle_weight=0.0)
    assert float(out["distance"]) == pytest.approx(expected, rel=1e-5)
    scaled = relation_loss(teacher * 7.0, teacher)  # distances normalised, angles scale-free
    assert float(scaled["loss"]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="batch size of at least 2"):
        relation_loss(student[:1], teacher[:1])


def test_attention_loss_averages_heads():
    t = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]]])  # [1, 2 heads, 2, 2]
    s = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])  # one head
    # teacher heads averaged: rows [0.75, 0.25] and [0.5, 0.5]
    expected = (kl([0.75, 0.25], [0.5, 0.5]) + 0.0) / 2
    assert float(attention_loss([s], [t])) == pytest.approx(expected, rel=1e-4)
    mapped = attention_loss([torch.cat([s, s], 1)], [t], head_mapping="map")
    assert float(mapped) == pytest.approx((kl([1.0 - 1e-12, 1e-12], [0.5, 0.5]) + 0 + 0 + 0) / 4, rel=1e-3)
    with pytest.raises(ConfigError, match="multiple"):
        attention_loss([torch.rand(1, 3, 2, 2)], [t], head_mapping="map")
    with pytest.raises(ConfigError, match="eager"):
        attention_loss([None], [t])


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha")])
def test_bad_temperature_and_alpha_fail(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        response_loss(torch.zeros(1, 2), torch.zeros(1, 2), **kwargs)
