"""Plant each problem in a small model and check the monitor finds it, naming the layer."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from aptops.core.errors import ConfigError
from aptops.debug import (
    detect_dead_neurons,
    detect_gradient_anomalies,
    detect_memory_leaks,
    detect_nan_inf,
    detect_saturated_neurons,
    monitor_activations,
    monitor_gradients,
    profile_model,
    profile_section,
    track_memory,
    transformer_flops,
)
from aptops.debug.nan import NonFiniteError


def mlp(act: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), act or nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))


def backward(model: nn.Module, n: int = 32) -> None:
    x = torch.randn(n, 8)
    model.zero_grad()
    model(x).pow(2).mean().backward()


def test_gradient_stats_match_torch():
    model = mlp()
    mon = monitor_gradients(model, log_interval=1)
    backward(model)
    record = mon.step()
    g = model[2].weight.grad
    s = record.layers["2.weight"]
    assert s.norm == pytest.approx(float(g.norm()), rel=1e-5)
    assert s.mean == pytest.approx(float(g.mean()), rel=1e-5, abs=1e-9)
    assert s.std == pytest.approx(float(g.std(unbiased=False)), rel=1e-4)
    assert record.total_norm == pytest.approx(float(torch.sqrt(sum(p.grad.norm() ** 2 for p in model.parameters()))), rel=1e-5)


def test_interval_and_bounded_history():
    model = mlp()
    mon = monitor_gradients(model, log_interval=3, history_size=2)
    for _ in range(9):
        backward(model)
        mon.step()
    assert [r.step for r in mon.history] == [3, 6]  # steps 0, 3, 6 recorded; the oldest dropped


def test_exploding_layer_is_named():
    model = mlp()
    model[2].weight.register_hook(lambda g: g * 1e6)  # plant: this layer's gradient explodes
    mon = monitor_gradients(model, log_interval=1)
    backward(model)
    mon.step()
    findings = detect_gradient_anomalies(mon, threshold=100.0)
    exploding = [f for f in findings if f.kind == "exploding_gradients"]
    assert [f.where for f in exploding] == ["2.weight"]
    assert "clipping" in exploding[0].suggestion


def test_vanishing_and_growth_found():
    model = mlp()
    model[0].weight.register_hook(lambda g: g * 1e-12)
    mon = monitor_gradients(model, log_interval=1)
    for i in range(4):
        backward(model)
        if i == 3:
            model[4].weight.grad *= 1000.0  # abnormal growth at the last step, under the explosion threshold
        mon.step()
    kinds = {(f.kind, f.where) for f in detect_gradient_anomalies(mon, threshold=1e9)}
    assert ("vanishing_gradients", "0.weight") in kinds
    assert ("gradient_growth", "4.weight") in kinds


def test_healthy_model_has_no_gradient_findings():
    model = mlp()
    mon = monitor_gradients(model, log_interval=1)
    for _ in range(3):
        backward(model)
        mon.step()
    assert detect_gradient_anomalies(mon) == []


def test_dead_relu_units_found_with_candidates():
    model = mlp()
    with torch.no_grad():  # plant: 6 of 16 units get a bias so negative they never fire
        model[0].bias[:6] = -1e3
    loader = [torch.randn(16, 8) for _ in range(4)]
    stats = monitor_activations(model, loader)
    assert set(stats) == {"1", "3"}  # the activation modules, found by type
    dead = detect_dead_neurons(stats)
    assert dead["layers"]["1"]["candidates"] == list(range(6))
    assert dead["layers"]["1"]["dead_ratio"] == pytest.approx(6 / 16)
    assert [f.where for f in dead["findings"]] == ["1"]
    st = stats["1"]
    assert st.min == 0.0 and st.max > 0 and sum(st.hist) == st.count == 4 * 16 * 16


def test_saturated_tanh_found():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e3)  # plant: tanh inputs far from 0
    stats = monitor_activations(model, [torch.randn(32, 8) for _ in range(2)], layers=["3"])
    sat = detect_saturated_neurons(stats, saturation_threshold=0.9)
    assert sat["layers"]["3"]["saturated_ratio"] > 0.5
    assert sat["findings"] and sat["findings"][0].where == "3"


def test_unknown_layer_and_bad_interval_are_clear_errors():
    model = mlp()
    with pytest.raises(ConfigError, match=r"'7' does not exist.*names look like"):
        monitor_activations(model, [torch.randn(2, 8)], layers=["7"])
    with pytest.raises(ConfigError, match="does not exist"):
        monitor_gradients(model, track_layers=["encoder.weight"])
    with pytest.raises(ConfigError, match="log_interval=0"):
        monitor_gradients(model, log_interval=0)
    with pytest.raises(ConfigError, match="interval"):
        track_memory(interval=0)


class Leaky:
    def __init__(self) -> None:
        self.payload = bytearray(4 * 1024 * 1024)


def test_growing_list_is_a_leak_and_names_the_type(tmp_path):
    kept: list[Leaky] = []
    with track_memory("cpu", interval=0.02, plot=tmp_path / "memory.png") as mem:
        # plant: a list that grows by one object every 25 ms of wall time. A starved process catches up after
        # a stall, so memory stays a straight line in time however busy the machine is (a fixed count per
        # loop step made the line bend when one step took a second, and the fit's r² fell under 0.8 on CI)
        start = time.monotonic()
        while len(kept) < 40:
            due = min(40, int((time.monotonic() - start) / 0.025) + 1)
            while len(kept) < due:
                kept.append(Leaky())
            time.sleep(0.005)
        while len(mem.history) < 5:  # the tracker samples at least a few times, even on a starved machine
            time.sleep(0.02)
    report = detect_memory_leaks(mem, leak_threshold=50 * 2**20)
    assert report.leaking, report
    assert report.growth_bytes > 100 * 2**20
    assert ("Leaky", 40) in report.growing_types
    assert "Leaky" in report.findings[0].message
    assert (tmp_path / "memory.png").read_bytes()[:4] == b"\x89PNG"


def test_the_trackers_own_samples_are_not_a_growing_type():
    from aptops.debug.memory import MemoryTracker

    with MemoryTracker("cpu", interval=0.01, objects_every=2) as mem:
        while len(mem.history) < 80:
            time.sleep(0.005)
    assert not {"tuple", "Counter"} & set(dict(mem.object_growth)), mem.object_growth


def test_flat_memory_is_not_a_leak():
    assert not detect_memory_leaks([100e6 + (i % 3) * 1e6 for i in range(50)]).leaking
    # a warm-up step then a plateau: large rise, but not a straight line
    assert not detect_memory_leaks([1e8] * 5 + [9e8] * 45).leaking


def test_nan_in_one_module_is_located():
    model = mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")  # plant
    with detect_nan_inf(model) as det:
        model(torch.randn(4, 8))
    assert det.first == "2"
    assert [e[0] for e in det.events][:1] == ["2"]  # later modules only inherit it
    with detect_nan_inf(model, raise_error=True), pytest.raises(NonFiniteError, match="module 2 "):
        model(torch.randn(4, 8))
    found = detect_nan_inf({"ok": torch.ones(3), "bad": torch.tensor([1.0, float("inf")])})
    assert found == [{"name": "bad", "nan": 0, "inf": 1, "numel": 2}]


def test_profile_section_callable_context_and_decorator():
    calls = []
    summary = profile_section(lambda: calls.append(1), iterations=5, warmup=2)
    assert len(calls) == 7 and summary["calls"] == 5 and summary["mean_s"] >= 0
    section = profile_section("sleep")
    with section:
        time.sleep(0.01)

    @section
    def f():
        time.sleep(0.01)

    f()
    assert section.summary()["calls"] == 2 and section.summary()["min_s"] >= 0.009
    with pytest.raises(ConfigError, match="iterations"):
        profile_section(lambda: None, iterations=0)


def test_profile_model_flops_match_transformer_estimate():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    # eager attention: FlopCounterMode counts its matmuls (the fused CPU SDPA kernel is not counted)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager")
    prof = profile_model(model, (32,), batch_size=2)
    assert prof["flops"] == pytest.approx(transformer_flops(cfg, 2, 32), rel=0.01)
    assert prof["analytic_flops"] == transformer_flops(cfg, 2, 32)
    assert prof["params"] == sum(p.numel() for p in model.parameters())
    by_name = {r["name"]: r for r in prof["layers"]}
    assert by_name["lm_head"]["flops"] == 2 * 2 * 32 * 64 * 256
    assert by_name["lm_head"]["params"] == 64 * 256
    vision = profile_model(mlp(), (8,), batch_size=4)
    assert vision["flops"] == 2 * 4 * (8 * 16 + 16 * 16 + 16 * 4)
    with pytest.raises(ConfigError, match="input_shape"):
        profile_model(mlp(), (0,))


def test_captured_statistics_are_the_unclipped_ones():
    model = mlp()
    model[2].weight.register_hook(lambda g: g * 1e6)
    mon = monitor_gradients(model, log_interval=1)
    mon.watch_backward()
    mon.capturing = True
    backward(model)
    raw = float(model[2].weight.grad.norm())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # what the Trainer does before callbacks
    record = mon.step()
    assert record.layers["2.weight"].norm == pytest.approx(raw, rel=1e-5)
    assert [f.where for f in detect_gradient_anomalies(mon) if f.kind == "exploding_gradients"] == ["2.weight"]
    mon.remove()
