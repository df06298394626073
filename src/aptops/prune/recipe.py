"""Fine-tuning with fixed masks, lottery tickets, and the automated prune stage with its report.

``fine_tune_after_pruning`` trains through :func:`aptops.lm.training.run_trainer` with a callback that
keeps every pruned weight at zero (gradients masked before the optimizer step, weights re-masked after it),
so checkpoints, resume, LR schedules, early stopping and the debugger come with it. ``prune_model`` runs
the whole flow: measure, prune (gradually for unstructured methods: a cubic schedule with short recovery
between steps), fine-tune, measure again, and write the model with a report and its lineage.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import LINEAGE_FILE, StageResult, read_json, write_json
from aptops.core.config import check_choice, check_range, to_dict
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.lm.measure import profile_in_turns, profile_section
from aptops.lm.training import TrainConfig, run_trainer
from aptops.prune.structured import structured_pruning
from aptops.prune.unstructured import (
    apply_masks,
    check_sparsity,
    magnitude_pruning,
    prunable_layers,
    saved_sparsity,
    sparsity_report,
    taylor_pruning,
    wanda_pruning,
    weight_masks,
)

log = logging.getLogger(__name__)
torch = require("torch", extra="prune", feature="pruning")
transformers = require("transformers", extra="prune", feature="pruning")

METHODS = ("magnitude", "taylor", "wanda", "neuron", "head", "expert", "lottery")
STRUCTURED = ("neuron", "head", "expert")


class MaskCallback(transformers.TrainerCallback):
    """Keep pruned weights at zero while training: mask the gradients before each optimizer step and the
    weights after it (Adam's moments would otherwise move them)."""

    def __init__(self, masks: Mapping[str, Any]) -> None:
        self.masks = dict(masks)
        self._layers: dict[str, Any] | None = None

    def _bind(self, model: Any) -> dict[str, Any]:
        if self._layers is None:
            layers = prunable_layers(model)
            self._layers = {n: layers[n] for n in self.masks}
            for n, m in self._layers.items():
                self.masks[n] = self.masks[n].to(m.weight.device)
        return self._layers

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        for n, m in self._bind(model).items():
            if m.weight.grad is not None:
                m.weight.grad.mul_(self.masks[n].to(m.weight.grad.dtype))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        with torch.no_grad():
            for n, m in self._bind(model).items():
                m.weight.mul_(self.masks[n].to(m.weight.dtype))


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """How :func:`prune_model` prunes and recovers.

    Attributes:
        method: ``magnitude``, ``taylor``, ``wanda`` (unstructured), ``neuron`` / ``head`` / ``expert`` (structured;
            ``expert`` removes the experts a MoE model's routers send the fewest calibration tokens to),
            ``lottery`` (iterative magnitude with rewinding).
        target_sparsity: for unstructured methods the share of zeroed weights; for structured ones the share
            of units removed; in (0, 1).
        granularity: ``global`` or ``layer`` for magnitude / taylor.
        n_m: Wanda's N:M pattern as ``"2:4"`` (empty: unstructured per row).
        schedule_steps: gradual pruning in this many steps of a cubic schedule (1: one shot).
        recovery_steps: optimizer steps of fine-tuning between schedule steps.
        calibration_batches: batches for Taylor / Wanda / activation-aware neuron scores.
        lottery_rounds: lottery-ticket rounds (each prunes ``1 - (1 - target)^(1/rounds)`` of what is left).
        lottery_steps: training steps per lottery round.
        rewind_step: the lottery's early weights are taken after this many steps.
        training: the fine-tuning after pruning and the data it reads (:class:`aptops.lm.training.TrainConfig`: block size,
            text column, chat prompt, held-out share, the debugger, ``training_args`` ...; ``--set
            training.block_size=128``). It does not resume from checkpoints unless ``training.resume`` says so:
            a checkpoint of an earlier run holds other masks.
    """

    method: str = "magnitude"
    target_sparsity: float = 0.5
    granularity: str = "global"
    n_m: str = ""
    schedule_steps: int = 1
    recovery_steps: int = 0
    calibration_batches: int = 8
    lottery_rounds: int = 3
    lottery_steps: int = 20
    rewind_step: int = 2
    training: TrainConfig = field(default_factory=lambda: TrainConfig(resume="never"))

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_sparsity(self.target_sparsity, "target_sparsity")
        check_choice("granularity", self.granularity, ("global", "layer"))
        check_range("schedule_steps", self.schedule_steps, min_value=1)
        check_range("recovery_steps", self.recovery_steps, min_value=0)
        check_range("calibration_batches", self.calibration_batches, min_value=1)
        check_range("lottery_rounds", self.lottery_rounds, min_value=1)
        check_range("lottery_steps", self.lottery_steps, min_value=1)
        check_range("rewind_step", self.rewind_step, min_value=0)
        if self.n_m:
            self.pattern()

    def pattern(self) -> tuple[int, int] | None:
        if not self.n_m:
            return None
        try:
            n, m = (int(x) for x in self.n_m.split(":"))
        except ValueError:
            raise ConfigError(f"n_m={self.n_m!r} must look like '2:4'", field="n_m", value=self.n_m) from None
        return n, m



def cubic_schedule(target: float, steps: int) -> list[float]:
    """Gradual sparsity targets (Zhu & Gupta 2017): ``s_t = s_f · (1 - (1 - t/n)^3)``, ending at the target."""
    return [target * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]


def _blocks(tokenizer: Any, data: Any, block_size: int, text_column: str, batch_size: int,
            chat_prompt: str = "") -> list[dict[str, Any]]:
    from aptops.lm import pack_for_clm

    blocks = pack_for_clm(data, tokenizer, block_size=block_size, text_column=text_column, chat_prompt=chat_prompt)
    ids = torch.tensor(blocks["input_ids"]) if len(blocks) else torch.empty(0, block_size, dtype=torch.long)
    if len(ids) == 0:
        raise ConfigError(f"the data yields no block of {block_size} tokens; lower block_size or add text",
                          field="block_size")
    return [{"input_ids": ids[i:i + batch_size], "labels": ids[i:i + batch_size]} for i in range(0, len(ids), batch_size)]


def _train_steps(model: Any, batches: list[dict[str, Any]], steps: int, lr: float, masks: Mapping[str, Any] | None) -> list[float]:
    device = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    layers = prunable_layers(model)
    losses = []
    model.train()
    for step in range(steps):
        batch = {k: v.to(device) for k, v in batches[step % len(batches)].items()}
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if masks:
            for n, mask in masks.items():
                if layers[n].weight.grad is not None:
                    layers[n].weight.grad.mul_(mask.to(layers[n].weight.grad.dtype))
        opt.step()
        if masks:
            apply_masks(model, masks)
        losses.append(float(loss.detach()))
    return losses


def lottery_ticket_pruning(model: Any, train_data: Any, iterations: int = 3, prune_rate: float = 0.2, *,
                           tokenizer: Any = None, steps: int = 20, rewind_step: int = 2, learning_rate: float = 1e-4,
                           block_size: int = 128, batch_size: int = 4, text_column: str = "text") -> dict[str, Any]:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; rewinding: Frankle et al. 2020).

    Train ``rewind_step`` steps and keep those early weights; then each round trains ``steps`` steps,
    removes ``prune_rate`` of the remaining weights by magnitude (global), and rewinds the survivors to the
    early weights. Masks accumulate across rounds. ``train_data``: a list of batches (dicts with labels) or
    text data with ``tokenizer``.

    Returns:
        ``{"masks", "rounds": [{"round", "sparsity", "final_loss"}], "sparsity"}``; the model holds the
        rewound ticket (train it further with :func:`fine_tune_after_pruning`).
    """
    check_range("iterations", iterations, min_value=1)
    check_sparsity(prune_rate, "prune_rate")
    batches = train_data if isinstance(train_data, list) and train_data and isinstance(train_data[0], Mapping) else \
        _blocks(tokenizer, _text(train_data, text_column), block_size, text_column, batch_size)
    _train_steps(model, batches, rewind_step, learning_rate, None)
    early = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model).items()}
    rounds = []
    for r in range(1, iterations + 1):
        losses = _train_steps(model, batches, steps, learning_rate, masks)
        remaining = 1.0 - sparsity_report(model)["sparsity"]
        target = 1.0 - remaining * (1.0 - prune_rate)
        magnitude_pruning(model, target, "global")  # zeros already there are the smallest: masks only grow
        masks = weight_masks(model)
        model.load_state_dict(early)
        apply_masks(model, masks)
        report = sparsity_report(model)
        rounds.append({"round": r, "sparsity": report["sparsity"], "final_loss": losses[-1] if losses else math.nan})
        log.info("lottery round %d: sparsity %.3f, loss before pruning %.4f", r, report["sparsity"], rounds[-1]["final_loss"])
    return {"masks": masks, "rounds": rounds, "sparsity": rounds[-1]["sparsity"]}


def _text(data: Any, text_column: str) -> Any:
    from aptops.lm import load_text_dataset

    return load_text_dataset(data, text_column)


def fine_tune_after_pruning(pruned_model: Any, train_data: Any, val_data: Any = None, epochs: float = 1.0, *,
                            output_dir: str | Path, tokenizer: Any = None, config: PruneConfig | None = None,
                            masks: Mapping[str, Any] | None = None, callbacks: Iterable[Any] = ()) -> Any:
    """Fine-tune a pruned model with its masks fixed; write it as a model artifact (stage ``prune``).

    Args:
        pruned_model: a model folder or object.
        masks: ``{layer: bool mask}`` (default: the current zeros of every prunable layer).
        epochs: passes over ``train_data`` (``training_args.max_steps`` in ``config`` wins when set).
    """
    from aptops.lm import load_causal_lm

    cfg = config or PruneConfig()
    model, tok, _ = load_causal_lm(pruned_model, tokenizer)
    masks = dict(masks) if masks is not None else weight_masks(model)
    args = {"num_train_epochs": epochs} | dict(cfg.training.training_args)
    train_cfg = dataclasses.replace(cfg.training, training_args=args)
    return run_trainer(model, tok, train_data, val_data, output_dir=output_dir, config=train_cfg,
                       callbacks=[MaskCallback(masks), *callbacks], stage="prune", lineage_config=to_dict(cfg))


def _perplexity_and_latency(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    from aptops.lm import heldout_loss

    scored = heldout_loss(model, [{"input_ids": b["input_ids"]} for b in batches])
    with torch.inference_mode():
        one = batches[0]["input_ids"][:1].to(next(model.parameters()).device)
        latency = profile_section(lambda: model(input_ids=one), iterations=5, warmup=1)["p50_s"]
    model.train()
    return {"perplexity": scored["perplexity"], "latency_s": latency,
            "params": float(sum(p.numel() for p in model.parameters())),
            "nonzero_params": float(sum(int((p != 0).sum()) for p in model.parameters()))}


def paired_latency(models: Mapping[str, Any], ids: Any, rounds: int = 7) -> dict[str, float]:
    """Median forward time of each model on ``ids``, the models taking turns round after round
    (:func:`~aptops.lm.measure.profile_in_turns`): measured minutes apart (before pruning, after
    fine-tuning), the same model's time moved by more than a 25% neuron cut saves on a shared CPU."""
    calls = {}
    for name, model in models.items():
        model.eval()
        x = ids.to(next(model.parameters()).device)
        calls[name] = functools.partial(model, input_ids=x)
    with torch.inference_mode():
        summaries = profile_in_turns(calls, iterations=rounds, warmup=1)
    return {name: summary["p50_s"] for name, summary in summaries.items()}


def prune_model(model: Any, dataset: Any, *, output_dir: str | Path, config: PruneConfig | None = None,
                eval_dataset: Any = None, tokenizer: Any = None) -> StageResult:
    """Prune, recover and measure: the automated flow, written as a model artifact with a report.

    Args:
        model: a model folder, Hub id or ``PreTrainedModel`` (a causal LM).
        dataset: text for calibration and fine-tuning (anything the train stage reads).
        output_dir: the pruned model folder (``report.html``, ``prune.json``, lineage inside).
        config: the method, its schedule and the fine-tuning after it.
        eval_dataset: held-out text for the before/after numbers and the recovery's evaluation (default:
            ``training.eval_fraction`` of ``dataset``, split as training splits it; with no fraction, the first blocks
            of ``dataset``).
        tokenizer: the tokenizer when ``model`` is an object.

    Returns:
        The stage result: sparsity, parameters, perplexity and latency before and after.
    """
    from aptops.lm import load_causal_lm
    from aptops.lm.loading import check_model_source
    from aptops.lm.training import split_heldout

    cfg = config or PruneConfig()
    train = cfg.training
    # the Trainer's own split, made once: recovery trains on the rest, and the before/after table scores the
    # held-out documents the recovery's evaluation (and a training with the same seed and fraction) reports on
    check_model_source(model)  # a wrong model path, then a bad dataset, fail before anything loads
    splits = split_heldout(_text(dataset, train.text_column), eval_dataset, train)
    text, val_data = splits.train, splits.eval
    lm, tok, source = load_causal_lm(model, tokenizer)
    if cfg.method in STRUCTURED:
        from aptops.prune.structured import _check_head_pruning, _decoder_layers

        family, _ = _decoder_layers(lm)  # an unsupported architecture fails before anything changes
        if cfg.method == "head":
            _check_head_pruning(family)  # as does a head-pruned model llama.cpp could not load
        if cfg.method == "expert" and family.experts is None:
            raise ConfigError(f"method=expert: {family.model_type} is a dense model with no experts; use method=neuron "
                              "or head", field="method", value="expert")
    batch_size = int(train.training_args.get("per_device_train_batch_size", 4))
    batches = _blocks(tok, text, train.block_size, train.text_column, batch_size)
    # the training text in the format the model is trained in (its chat turns when training uses them): the
    # calibration scores, and without a held-out split the before/after table, are taken on it
    formatted = (_blocks(tok, text, train.block_size, train.text_column, batch_size, train.chat_prompt)
                 if train.chat_prompt else batches)
    # measured before and after in that format, so the table's perplexities are the ones training reports
    held = (_blocks(tok, _text(val_data, train.text_column), train.block_size, train.text_column, batch_size,
                    train.chat_prompt) if val_data is not None else formatted[: max(1, min(8, len(batches) // 5))])
    calibration = formatted[: cfg.calibration_batches]
    before = _perplexity_and_latency(lm, held)
    lr = float(train.training_args.get("learning_rate", 5e-5))
    stages = []
    info: dict[str, Any] = {}
    if cfg.method in STRUCTURED:
        info = structured_pruning(lm, cfg.target_sparsity, cfg.method,
                                  **({"data_loader": calibration} if cfg.method != "head" else {}))
    elif cfg.method == "lottery":
        rate = 1 - (1 - cfg.target_sparsity) ** (1 / cfg.lottery_rounds)
        info = lottery_ticket_pruning(lm, batches, cfg.lottery_rounds, rate, steps=cfg.lottery_steps,
                                      rewind_step=cfg.rewind_step, learning_rate=lr)
        info.pop("masks")
    else:
        for step, target in enumerate(cubic_schedule(cfg.target_sparsity, cfg.schedule_steps), 1):
            if cfg.method == "magnitude":
                report = magnitude_pruning(lm, target, cfg.granularity)
            elif cfg.method == "taylor":
                report = taylor_pruning(lm, calibration, target, granularity=cfg.granularity)
            else:
                report = wanda_pruning(lm, calibration, target, n_m=cfg.pattern())
            losses = _train_steps(lm, batches, cfg.recovery_steps, lr, weight_masks(lm)) if (
                cfg.recovery_steps and step < cfg.schedule_steps) else []
            stages.append({"step": step, "target": target, "sparsity": report["sparsity"],
                           "recovery_loss": losses[-1] if losses else None})
            log.info("prune step %d/%d: sparsity %.3f", step, cfg.schedule_steps, report["sparsity"])
    pruned = _perplexity_and_latency(lm, held)
    masks = weight_masks(lm) if cfg.method not in STRUCTURED else {}
    out = Path(output_dir)
    result = fine_tune_after_pruning(lm, text, val_data, output_dir=out, tokenizer=tok, config=cfg, masks=masks)
    after = _perplexity_and_latency(lm, held)
    speed = {"before_s": before["latency_s"], "after_s": after["latency_s"], "method": "sequential"}
    if isinstance(source, str | Path) and Path(str(source)).is_dir():  # the unpruned model again, timed in turns
        reference = load_causal_lm(str(source), tok)[0].to(next(lm.parameters()).device)
        paired = paired_latency({"before": reference, "after": lm}, held[0]["input_ids"][:1])
        speed = {"before_s": paired["before"], "after_s": paired["after"], "method": "paired"}
        del reference
        lm.train()
    summary = {
        "method": cfg.method, "target": cfg.target_sparsity, "stages": stages, "details": info,
        "sparsity": sparsity_report(lm)["sparsity"],
        "before": before, "after_pruning": pruned, "after_fine_tuning": after,
        "size_bytes": {"before": _size(source), "after": _size(out)},
        "speedup": speed["before_s"] / speed["after_s"], "speed": speed,
    }
    summary["saved"] = saved_sparsity(out)  # what the files hold, per kind, not the target echoed back
    _write_report(out, summary, result)
    return result


def _size(folder: Any) -> float | None:
    path = Path(str(folder))
    return float(sum(p.stat().st_size for p in path.glob("*.safetensors"))) if path.is_dir() else None


def _write_report(out: Path, summary: dict[str, Any], result: Any) -> None:
    from aptops.core import report
    from aptops.core.artifacts import RESULT_FILE, finish_artifact

    b, p, a = summary["before"], summary["after_pruning"], summary["after_fine_tuning"]
    rows = [(k, b[k], p[k], a[k]) for k in ("params", "nonzero_params", "perplexity", "latency_s")]
    sections = [
        ("Before and after", report.table(rows, header=["", "before", "after pruning", "after fine-tuning"])),
        ("Summary", report.table({"method": summary["method"], "target": summary["target"],
                                  "sparsity reached": summary["sparsity"],
                                  **{f"zeros in the saved {k} weights": v for k, v in summary["saved"]["kinds"].items()},
                                  "not counted": summary["saved"]["not_counted"], "speedup": summary["speedup"],
                                  "speedup measured": "the unpruned and the final model timed in turns"
                                  if summary["speed"]["method"] == "paired" else "before and after, minutes apart",
                                  "size before (bytes)": summary["size_bytes"]["before"] or "",
                                  "size after (bytes)": summary["size_bytes"]["after"] or ""})),
    ]
    if summary["stages"]:
        sections.append(("Gradual schedule", report.line_chart(
            {"target": [(s["step"], s["target"]) for s in summary["stages"]],
             "reached": [(s["step"], s["sparsity"]) for s in summary["stages"]]},
            title="Sparsity by schedule step", x_label="step", y_label="sparsity")))
    rounds = summary["details"].get("rounds") if isinstance(summary["details"], dict) else None
    if rounds:
        sections.append(("Lottery rounds", report.table([(r["round"], r["sparsity"], r["final_loss"]) for r in rounds],
                                                         header=["round", "sparsity", "loss before pruning"])))
    prune_page = report.page("aptops prune", sections)
    train_page = (out / "report.html").read_text(encoding="utf-8")
    (out / "report.html").write_text(prune_page.replace("</body></html>", "") + "<h2>Fine-tuning</h2>"
                                     + train_page.split("<body>", 1)[-1], encoding="utf-8")
    write_json(out / "prune.json", summary)
    metrics = {"sparsity": summary["sparsity"], "speedup": summary["speedup"],
               "perplexity_before": b["perplexity"], "perplexity_pruned": p["perplexity"],
               "perplexity_after": a["perplexity"], "params_before": b["params"], "params_after": a["params"],
               "nonzero_params_after": a["nonzero_params"],
               **{f"sparsity_{k}": v for k, v in summary["saved"]["kinds"].items()}}
    lineage = read_json(out / LINEAGE_FILE)
    lineage["metrics"] = {**lineage.get("metrics", {}), **{f"prune_{k}": v for k, v in metrics.items()}}
    write_json(out / LINEAGE_FILE, lineage)
    result.metrics.update({f"prune_{k}": v for k, v in metrics.items()})
    result.outputs["prune_report"] = str(out / "prune.json")
    (out / RESULT_FILE).unlink()
    finish_artifact(out, result)
