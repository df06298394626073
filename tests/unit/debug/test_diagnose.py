"""diagnose_training on planted problems: each is found, with a fix, and the weights come back unchanged."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from aptops.core.errors import ConfigError
from aptops.debug import DiagnoseConfig, diagnose_history, diagnose_training


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def batches(n: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 8, generator=g)
        out.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()))
    return out


class SlowLoader:
    """A data loader that sleeps before every batch (a planted I/O bottleneck)."""

    def __init__(self, data, delay):
        self.data, self.delay = data, delay

    def __iter__(self):
        for b in self.data:
            time.sleep(self.delay)
            yield b


def kinds(diag):
    return {f.kind for f in diag.findings}


def test_healthy_run_has_no_critical_finding_and_restores_weights():
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    diag = diagnose_training(m, batches(), batches(seed=1), DiagnoseConfig(steps=20, learning_rate=1e-3))
    assert not [f for f in diag.findings if f.severity == "critical"], diag.findings
    assert diag.train_loss[-1][1] < diag.train_loss[0][1]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert 1e-5 < sorted(diag.update_ratios.values())[len(diag.update_ratios) // 2] < 1e-2


def test_data_bottleneck_found():
    # the planted wait (0.25 s a batch) dwarfs a tiny model's step even on a starved machine: at 0.05 s a
    # batch a CI run sharing its two cores with another suite measured a wait share of 0.36
    diag = diagnose_training(model(), SlowLoader(batches(), 0.25), config={"steps": 6})
    assert "data_bottleneck" in kinds(diag)
    assert diag.data_wait_share > 0.5
    f = next(f for f in diag.findings if f.kind == "data_bottleneck")
    assert "num_workers" in f.suggestion


def test_nan_module_named():
    m = model()
    with torch.no_grad():
        m[2].weight[0, 0] = float("nan")  # plant a NaN in one module
    diag = diagnose_training(m, batches(), config={"steps": 5})
    assert diag.nan_module == "2"
    f = diag.findings[0]
    assert f.kind == "nonfinite_loss" and f.severity == "critical" and f.where == "2"
    assert "module 2" in f.message


def test_learning_rate_too_high_and_too_low():
    high = diagnose_training(model(), batches(), config={"steps": 10, "learning_rate": 1.0})
    assert "learning_rate_too_high" in kinds(high)
    low = diagnose_training(model(), batches(), config={"steps": 10, "learning_rate": 1e-9})
    assert "learning_rate_too_low" in kinds(low)
    assert "loss_plateau" in kinds(low)


def test_overfitting_from_the_curves():
    # a big model on 2 memorisable batches with random labels, validated on other random labels
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 3))
    g = torch.Generator().manual_seed(3)
    train = [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]
    val = [(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))]
    diag = diagnose_training(big, train, val, {"steps": 200, "learning_rate": 3e-3, "eval_every": 10})
    assert "overfitting" in kinds(diag), diag.findings


def test_history_findings_from_trainer_logs():
    history = [{"step": s, "loss": 2.0 - 0.1 * s, "grad_norm": 1.0} for s in range(1, 8)]
    history += [{"step": 3, "eval_loss": 1.5}, {"step": 5, "eval_loss": 1.7}, {"step": 7, "eval_loss": 2.0}]
    history.append({"step": 8, "loss": 1.2, "grad_norm": 5e3})
    found = {f.kind: f for f in diagnose_history(history)}
    assert found["overfitting"].step == 3
    assert found["exploding_gradients"].step == 8


def test_bad_config_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="steps=0"):
        diagnose_training(model(), batches(), config={"steps": 0})
    with pytest.raises(ConfigError, match="optimizer='lion'"):
        DiagnoseConfig(optimizer="lion")
    frozen = model().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        diagnose_training(frozen, batches())
