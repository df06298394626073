"""The Trainer bridge: a real 2-step Trainer run on a tiny Llama delivers its events onto the bus."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


class Watcher:
    def __init__(self, name, priority, seen):
        self.name, self.priority, self.seen = name, priority, seen

    def on_event(self, event, **payload):
        self.seen.append((self.name, event, payload["step"]))


class Broken:
    name, priority = "broken", 50

    def on_step_end(self, **payload):
        raise ValueError("plugin bug")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_trainer_events_reach_bus_in_order_and_a_broken_plugin_never_stops_training(tiny_llama, tmp_path, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from aptops.lm.callbacks import BusCallback
    from aptops.plugins import ConsoleCore

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    enc = tok(["the quick brown fox jumps over the lazy dog"] * 8, return_tensors="pt", padding=True)
    rows = [{"input_ids": ids, "attention_mask": m, "labels": ids} for ids, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]

    seen: list = []
    core = ConsoleCore()
    core.register_plugin(Watcher("debugger", 800, seen))
    core.register_plugin(Watcher("data", 100, seen))
    core.register_plugin(Broken())
    core.compile_plugins()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], logging_steps=1,
        save_strategy="no", use_cpu=device == "cpu", disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[BusCallback(core)])
    out = trainer.train()
    assert out.global_step == 2
    assert trainer.args.device.type == device
    assert next(trainer.model.parameters()).device.type == device
    assert torch.isfinite(torch.tensor(out.training_loss))
    events = [e for n, e, _ in seen if n == "data"]
    assert events[0] == "on_init_end" or "on_train_begin" in events
    assert events.count("on_batch_start") == 2
    assert events.count("on_step_end") == 2
    assert events.index("on_train_begin") < events.index("on_batch_start") < events.index("on_train_end")
    # priority order within each event: data (100) before debugger (800)
    step_ends = [n for n, e, s in seen if e == "on_step_end"]
    assert step_ends == ["data", "debugger", "data", "debugger"]
    assert [s for n, e, s in seen if e == "on_step_end" and n == "data"] == [1, 2]
    assert core.bus.failures == {"broken": 2}
