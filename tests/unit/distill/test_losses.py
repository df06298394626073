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


def test_mixed_target_response_loss_at_t1_matches_hand_values_and_gradients():
    """At T=1 the soft and hard terms are computed as one cross-entropy against a mixed target: the value,
    both logged terms and the student's gradient equal the two-term definition."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    labels = torch.tensor([[1, 2, -100, 3], [0, 5, 4, 1]])  # position 1 of row 0 predicts an ignored label
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # the last token of row 1 is padding
    alpha = 0.7
    used = [(0, 0), (0, 2), (1, 0), (1, 1)]
    kd = sum(kl(softmax(t[b, i].tolist()), softmax(s[b, i].tolist())) for b, i in used) / 4
    ce = sum(-math.log(softmax(s[b, i].tolist())[labels[b, i + 1]]) for b, i in used) / 4
    leaf = s.clone().requires_grad_()
    out = response_loss(leaf, t, labels, temperature=1.0, alpha=alpha, attention_mask=mask)
    assert float(out["kd"]) == pytest.approx(kd, rel=1e-5)
    assert float(out["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-5)
    out["loss"].backward()
    ref = s.clone().requires_grad_()
    log_q = torch.log_softmax(ref, -1)
    p_t = torch.softmax(t, -1)
    rows = [alpha * (p_t[b, i] * (p_t[b, i].log() - log_q[b, i])).sum() - (1 - alpha) * log_q[b, i, labels[b, i + 1]]
            for b, i in used]
    (sum(rows) / 4).backward()
    torch.testing.assert_close(leaf.grad, ref.grad)
    assert leaf.grad[0, 1].abs().max() == 0 and leaf.grad[1, 2:].abs().max() == 0  # unweighted rows learn nothing


def test_soft_cross_entropy_matches_torch_value_and_gradient():
    from aptops.distill.losses import soft_cross_entropy

    torch.manual_seed(1)
    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    target = torch.rand(5, 7, dtype=torch.float64)
    target[2] = 0.0  # a row with no mass
    y = torch.tensor([0, 6, 3, 2, 1])
    upstream = torch.randn(5, dtype=torch.float64)
    rows, hard = soft_cross_entropy(logits, target, y)
    (rows * upstream).sum().backward()
    ref = logits.detach().clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(ref, target, reduction="none")
    (expected * upstream).sum().backward()
    torch.testing.assert_close(rows, expected)
    torch.testing.assert_close(logits.grad, ref.grad)
    torch.testing.assert_close(hard, torch.nn.functional.cross_entropy(ref, y, reduction="none"))
    again = soft_cross_entropy(logits, target, y)[0].sum()
    again.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):  # the buffer became the gradient: a clear error, not a wrong one
        again.backward()


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
