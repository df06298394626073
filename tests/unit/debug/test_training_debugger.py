"""The debugger attached to a real Trainer run: report files, metrics, NaN stop, Prometheus, isolation."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

from aptops.core.artifacts import is_complete
from aptops.core.bus import PluginBus
from aptops.debug import DebugConfig, debug_callback
from aptops.debug.callback import TrainingDebugger
from aptops.train import TrainConfig, train_with_hf_trainer
from tests.browser import needs_chromium, screenshot
from tests.models import CORPUS


def _dataset():
    import datasets

    return datasets.Dataset.from_dict({"text": CORPUS})


def _config(**extra) -> TrainConfig:
    args = {"max_steps": 6, "per_device_train_batch_size": 4, "logging_steps": 1, "save_strategy": "no",
            "use_cpu": True, "learning_rate": 1e-3}
    return TrainConfig(block_size=32, eval_fraction=0.1, seed=7, debug=True, debug_interval=2, training_args=args | extra)


def test_debugged_training_writes_the_report_and_metrics(tiny_llama, tmp_path):
    out = tmp_path / "run"
    result = train_with_hf_trainer(str(tiny_llama), None, _dataset(), out, _config())
    report = out / "debug"
    assert is_complete(report) and result.outputs["debug_report"] == str(report / "report.html")
    for name in ("report.html", "report.json", "report.pdf"):
        assert (report / name).stat().st_size > 1000, name
    assert (report / "report.pdf").read_bytes()[:5] == b"%PDF-"
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "http://" not in page.replace("http://www.w3.org", "")
    data = json.loads((report / "report.json").read_text())
    assert [r["step"] for r in data["gradients"]["history"]] == [0, 2, 4]
    assert data["training"]["loss"] and data["memory"]["history"]
    assert set(data["activations"]) == {"model.layers.0.mlp.act_fn", "model.layers.1.mlp.act_fn"}
    assert result.metrics["debug_nan_events"] == 0 and result.metrics["debug_max_grad_norm"] > 0
    assert 0 < result.metrics["debug_median_update_ratio"] < 1
    assert result.metrics["debug_peak_memory_bytes"] > 10 * 2**20


def test_nan_stops_training_and_names_the_module(tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.fill_(float("inf"))  # plant
    callback, debugger = debug_callback(DebugConfig(log_interval=1, trace_nan_modules=True,
                                                    report_dir=str(tmp_path / "debug")))
    from transformers import Trainer, TrainingArguments

    from aptops.lm import pack_for_clm

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    data = pack_for_clm(_dataset(), tok, block_size=32)
    import transformers

    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=20, per_device_train_batch_size=4,
                             use_cpu=True, save_strategy="no", report_to="none", logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=transformers.default_data_collator,
                      callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 1  # stopped at the first non-finite loss
    assert debugger.nan_events >= 1
    nan = next(f for f in debugger.findings if f.kind == "nonfinite_loss")
    assert nan.where == "model.layers.1.mlp.down_proj" and "model.layers.1.mlp.down_proj" in nan.message
    report = (tmp_path / "debug" / "report.html").read_text()
    assert "model.layers.1.mlp.down_proj" in report


class Broken:
    name, priority = "broken", 100

    def on_step_end(self, **_):
        raise RuntimeError("a monitor bug")


def test_a_failing_monitor_never_stops_training(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(TrainingDebugger, "on_pre_optimizer_step", lambda self, **_: 1 / 0)
    bus = PluginBus()
    bus.subscribe(Broken())
    out = tmp_path / "run"
    result = train_with_hf_trainer(str(tiny_llama), None, _dataset(), out, _config(max_steps=3), bus=bus)
    assert result.metrics["global_step"] == 3 and is_complete(out)
    assert bus.failures["broken"] == 3 and bus.failures["advanced_debugging"] == 3
    assert is_complete(out / "debug")  # the rest of the debugger still reported


def test_training_health_reaches_prometheus(tiny_llama, tmp_path, pushgateway, prometheus, monkeypatch):
    monkeypatch.setenv("APTOPS_PUSHGATEWAY_URL", pushgateway)
    monkeypatch.setenv("APTOPS_RUN_ID", "dbg-1")
    train_with_hf_trainer(str(tiny_llama), None, _dataset(), tmp_path / "run", _config(max_steps=3))
    deadline = time.monotonic() + 30
    while True:
        q = urllib.parse.quote('aptops_debug_loss{run_id="dbg-1"}')
        with urllib.request.urlopen(f"{prometheus}/api/v1/query?query={q}", timeout=5) as resp:
            found = json.loads(resp.read())["data"]["result"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found and 0 < float(found[0]["value"][1]) < 20
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for name in ("aptops_debug_grad_norm", "aptops_debug_nan_events", "aptops_debug_dead_neuron_ratio",
                 "aptops_debug_memory_bytes", "aptops_debug_last_update_timestamp_seconds"):
        assert f'{name}{{' in text, name


@needs_chromium
def test_report_renders_in_headless_chromium(tiny_llama, tmp_path):
    out = tmp_path / "run"
    train_with_hf_trainer(str(tiny_llama), None, _dataset(), out, _config(max_steps=4))
    screenshot(out / "debug" / "report.html", tmp_path)


def test_exploding_layer_found_through_the_trainer_despite_clipping(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.model.layers[0].self_attn.v_proj.weight.register_hook(lambda g: g * 1e5)  # plant
    callback, debugger = debug_callback(DebugConfig(log_interval=1, memory_interval_s=0))
    config = TrainConfig(block_size=32, eval_fraction=0.0, training_args={
        "max_steps": 2, "per_device_train_batch_size": 4, "use_cpu": True, "save_strategy": "no",
        "max_grad_norm": 1.0})
    train_with_hf_trainer(model, AutoTokenizer.from_pretrained(tiny_llama), _dataset(), tmp_path / "run", config,
                          callbacks=[callback])
    exploding = [f for f in debugger.findings if f.kind == "exploding_gradients"]
    assert exploding and exploding[0].where == "model.layers.0.self_attn.v_proj.weight"
