from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

from aptops.core.errors import ConfigError, PluginError
from aptops.plugins import ConsoleCore, PluginBus, get_adapter, get_all_legacy_adapters


class Recorder:
    def __init__(self, name, priority, log):
        self.name, self.priority, self.log = name, priority, log

    def on_batch_start(self, step, context_data=None):
        self.log.append((self.name, step))
        return self.name


class Exploding(Recorder):
    def on_batch_start(self, step, context_data=None):
        raise RuntimeError("boom")


def test_priority_order_and_registration_order_ties():
    log: list = []
    bus = PluginBus()
    for name, prio in [("export", 900), ("data", 100), ("debug", 800), ("train-a", 350), ("train-b", 350)]:
        bus.subscribe(Recorder(name, prio, log))
    bus.emit("on_batch_start", step=3)
    assert [n for n, _ in log] == ["data", "train-a", "train-b", "debug", "export"]


def test_raising_subscriber_is_isolated_and_logged(caplog):
    log: list = []
    bus = PluginBus()
    bus.subscribe(Recorder("first", 100, log))
    bus.subscribe(Exploding("bad", 200, log))
    bus.subscribe(Recorder("last", 900, log))
    with caplog.at_level(logging.ERROR, logger="aptops.core.bus"):
        deliveries = bus.emit("on_batch_start", step=1)
    assert [n for n, _ in log] == ["first", "last"]
    assert [(d.plugin, d.ok) for d in deliveries] == [("first", True), ("bad", False), ("last", True)]
    assert "RuntimeError: boom" in deliveries[1].error
    assert bus.failures == {"bad": 1}
    assert "plugin bad raised in on_batch_start" in caplog.text


def test_subscribers_without_handler_are_skipped():
    bus = PluginBus()
    bus.subscribe(type("Quiet", (), {"name": "quiet", "priority": 1})())
    assert bus.emit("on_step_end", step=0) == []


def test_console_core_legacy_flow():
    core = ConsoleCore()
    plugin = core.register_plugin(get_adapter("data_processors", config={"strategy": "basic"}))
    seen: list = []
    plugin.add_listener("on_batch_start", lambda step, context_data: seen.append((step, context_data)))
    assert core.compile_plugins() == ["data_processors"]
    core.start()
    assert plugin.initialized
    core.emit_event("on_batch_start", step=0, context_data={"loss": 1.0})
    assert seen == [(0, {"loss": 1.0})]
    # the old plugin's method works and resolves the stage lazily
    assert plugin.clean_text("a  b https://x.io") == "a b"
    core.shutdown()
    assert plugin.events_seen == ["on_start", "on_batch_start", "on_shutdown"]
    assert not plugin.initialized


def test_compile_validates_plugin_config():
    core = ConsoleCore()
    core.register_plugin(get_adapter("data_processors", config={"stratgy": "basic"}))
    with pytest.raises(ConfigError, match="unknown config key 'stratgy'"):
        core.compile_plugins()


def test_emit_before_compile_and_duplicates():
    core = ConsoleCore()
    with pytest.raises(PluginError, match="compile_plugins"):
        core.emit_event("on_batch_start", step=0)
    core.register_plugin(get_adapter("data_processors"))
    with pytest.raises(PluginError, match="already registered"):
        core.register_plugin(get_adapter("data_processors"))


OLD_PLUGINS = {  # adapter name: (category, priority, number of old functions)
    "data_processors": ("data", 100, 5), "huggingface_integration": ("integration", 700, 5),
    "model_distillation": ("training", 350, 6), "model_pruning": ("training", 350, 6),
    "multimodal_training": ("training", 350, 5), "advanced_debugging": ("debug", 800, 14),
    "ollama_export": ("export", 900, 4), "cloud_storage": ("storage", 700, 8),
}


def test_all_eight_old_plugins_with_their_categories_priorities_and_functions():
    adapters = get_all_legacy_adapters()
    assert set(adapters) == set(OLD_PLUGINS)
    for name, (category, priority, count) in OLD_PLUGINS.items():
        plugin = adapters[name].get_legacy_plugin()
        assert (plugin.category, plugin.priority, len(plugin.get_metadata()["methods"])) == (category, priority, count)
    assert sum(c for _, _, c in OLD_PLUGINS.values()) == 53
    with pytest.raises(PluginError, match=r"no adapter named 'nope'.*model_pruning"):
        get_adapter("nope")


def test_every_function_of_the_stage_table_resolves_through_its_adapter():
    import inspect

    from aptops.stages import STAGES

    resolved = 0
    for stage in STAGES:
        if not stage.adapter:  # a stage of aptops' own: its functions are its package's
            assert all(callable(getattr(importlib.import_module(stage.module), n)) for n in stage.functions)
            continue
        plugin = get_adapter(stage.adapter).get_legacy_plugin()
        for name in stage.functions:
            fn = getattr(plugin, name)
            assert callable(fn) and fn.__name__ == name, (stage.name, name)
            has_legacy = importlib.util.find_spec(f"{stage.module}.legacy") is not None
            legacy = importlib.import_module(f"{stage.module}.legacy" if has_legacy else stage.module)
            assert fn is getattr(legacy, name)
            assert inspect.signature(fn).parameters, (stage.name, name)
            resolved += 1
        with pytest.raises(AttributeError):
            plugin.no_such_function  # noqa: B018
    assert resolved == 53


@pytest.mark.parametrize(("adapter", "key"), [("model_pruning", "method"), ("model_distillation", "temperature"),
                                              ("cloud_storage", "max_retries"), ("huggingface_integration", "lora_r"),
                                              ("multimodal_training", "fusion"), ("ollama_export", "quantization")])
def test_each_plugin_takes_its_stage_config_keys_and_refuses_typos(adapter, key):
    get_adapter(adapter, config={key: None}).get_legacy_plugin().validate_config()
    with pytest.raises(ConfigError, match=f"plugin {adapter}: unknown config key '{key}x'"):
        get_adapter(adapter, config={key + "x": None}).get_legacy_plugin().validate_config()


def test_adapters_are_lazy():
    # Registering and compiling must not import heavy libraries of the stage.
    import subprocess

    code = (
        "import sys; from aptops.plugins import ConsoleCore, get_adapter;"
        "c = ConsoleCore(); c.register_plugin(get_adapter('data_processors')); c.compile_plugins(); c.start();"
        "bad = [m for m in ('pyarrow', 'ftfy', 'torch', 'transformers', 'kfp') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_debugging_adapter_exposes_the_old_functions():
    import torch

    plugin = get_adapter("advanced_debugging", config={"log_interval": 5}).get_legacy_plugin()
    assert plugin.priority == 800 and plugin.category == "debug"
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    found = plugin.detect_nan_inf({"w": torch.tensor([float("nan")])})
    assert found[0]["nan"] == 1
    assert plugin.monitor_gradients(model, 5).log_interval == 5


def test_old_signatures_call_the_stage_contract(tiny_llama, tmp_path):
    """The old distill_model / prune_model argument order and flat config reach the contract functions."""
    import datasets

    from aptops.distill import DistillConfig
    from tests.models import CORPUS

    data = datasets.Dataset.from_dict({"text": CORPUS})
    distiller = get_adapter("model_distillation").get_legacy_plugin()
    flat = {"temperature": 1.0, "alpha": 0.8, "block_size": 32, "eval_fraction": 0.0, "student_layer_stride": 1,
            "training_args": {"max_steps": 1, "use_cpu": True, "save_strategy": "no"}}
    result = distiller.distill_model(str(tiny_llama), None, data, None, flat, tmp_path / "student")
    assert result.stage == "distill" and result.metrics["global_step"] == 1
    config = json.loads((tmp_path / "student" / "aptops.json").read_text())["config"]
    assert config["objective"]["alpha"] == 0.8 and config["training"]["block_size"] == 32
    with pytest.raises(ConfigError, match="unknown config key 'temprature'"):
        distiller.distill_model(str(tiny_llama), None, data, None, {"temprature": 1.0}, tmp_path / "never")
    assert isinstance(distiller.distill_model.__globals__["_from_flat"](flat), DistillConfig)
    pruner = get_adapter("model_pruning").get_legacy_plugin()
    from aptops.prune import PruneConfig
    from aptops.train import TrainConfig

    cfg = PruneConfig(training=TrainConfig(block_size=32, eval_fraction=0.0, training_args={
        "max_steps": 1, "use_cpu": True, "save_strategy": "no"}))
    pruned = pruner.prune_model(str(tiny_llama), data, None, 0.3, "magnitude", config=cfg)
    assert pruned.stage == "prune" and pruned.metrics["prune_sparsity"] == pytest.approx(0.3, abs=0.02)
    assert not Path(pruned.outputs["model"]).is_relative_to(Path.cwd())  # a temporary folder, not the working one
    shutil.rmtree(pruned.outputs["model"])
