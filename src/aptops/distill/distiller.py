"""Strategies combined into one objective, and the loop that trains a student with it.

:class:`Distiller` holds the chosen strategies with their weights (and the learned feature projections);
``Distiller.loss(student_out, teacher_out, batch)`` returns the combined loss and each term. The
:class:`DistillationTrainer` (a ``transformers.Trainer``) and the plain loop of the legacy functions
(``response_distillation`` ...) both use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.distill import losses

torch = require("torch", extra="distill", feature="distillation")

STRATEGIES = ("response", "feature", "relation", "attention")


@dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """The objective: strategies and weights, and each strategy's settings.

    Attributes:
        strategies: ``{strategy: weight}`` over ``response``, ``feature``, ``relation``, ``attention``.
        temperature: response distillation's softening temperature (> 0). At 1 the soft and hard terms
            are computed as one cross-entropy against a mixed target (one pass over the vocabulary
            instead of two: on SmolLM2's 49k vocabulary the distilled step costs 1.44-1.51x a plain
            one at T=1, against 2.25x at T=2 before the losses were fused); for language models T=1 with
            alpha 0.8 also distilled best in ``bench/distill_gain.py`` (held-out perplexity of a 16-block SmolLM2
            student after 60 steps: 238 at T=1/alpha=0.8, 242 at 0.9, 251 at 1.0, 248 at T=2/alpha=0.5): the defaults.
        alpha: weight of the soft (teacher) term against the hard labels, in [0, 1].
        layer_mappings: feature distillation's ``{student hidden state: teacher hidden state}``
            (0 = embeddings, i = after block i); empty: each student block's output onto the
            proportionally placed teacher block's.
        attention_type: ``self`` or ``cross`` (encoder-decoder models).
        head_mapping: ``average`` heads, or ``map`` teacher head groups onto student heads.
        auto_weighting: divide each term by a running mean of its own size, so the weights, not the
            scales of the losses, decide each term's share.
    """

    strategies: dict[str, float] = field(default_factory=lambda: {"response": 1.0})
    temperature: float = 1.0
    alpha: float = 0.8
    layer_mappings: dict[int, int] = field(default_factory=dict)
    attention_type: str = "self"
    head_mapping: str = "average"
    auto_weighting: bool = False

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, min_value=0.0, min_inclusive=False)
        check_range("alpha", self.alpha, min_value=0.0, max_value=1.0)
        check_choice("attention_type", self.attention_type, ("self", "cross"))
        check_choice("head_mapping", self.head_mapping, ("average", "map"))
        if not self.strategies:
            raise ConfigError("choose at least one strategy: strategies={response: 1.0}", field="strategies")
        for name, weight in self.strategies.items():
            check_choice("strategies", name, STRATEGIES)
            check_range(f"strategies.{name}", float(weight), min_value=0.0)
        object.__setattr__(self, "layer_mappings", {int(k): int(v) for k, v in dict(self.layer_mappings).items()})


class Distiller(torch.nn.Module):
    """The combined objective; its parameters are the feature projections (trained with the student)."""

    def __init__(self, config: StrategyConfig, teacher: Any, student: Any, *, vocab: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.projections = torch.nn.ModuleDict()
        self._scales: dict[str, float] = {}
        tc, sc = teacher.config, student.config
        if "feature" in config.strategies:
            t_states = tc.num_hidden_layers + 1
            s_states = sc.num_hidden_layers + 1
            mapping = config.layer_mappings or {
                i: round(i * (t_states - 1) / (s_states - 1)) for i in range(1, s_states)}
            losses.check_layer_mappings(mapping, s_states, t_states)
            self.mapping = mapping
            if sc.hidden_size != tc.hidden_size:
                for s_idx in mapping:
                    self.projections[str(s_idx)] = torch.nn.Linear(sc.hidden_size, tc.hidden_size, bias=False)
        else:
            self.mapping = {}
        if "attention" in config.strategies:
            for m in (teacher, student):
                impl = getattr(m.config, "_attn_implementation", "eager")
                if impl != "eager" and hasattr(m, "set_attn_implementation"):
                    m.set_attn_implementation("eager")  # fused kernels return no attention maps

    @property
    def needs_hidden(self) -> bool:
        return bool({"feature", "relation"} & set(self.config.strategies))

    @property
    def needs_attentions(self) -> bool:
        return "attention" in self.config.strategies

    def forward_kwargs(self) -> dict[str, bool]:
        return {"output_hidden_states": self.needs_hidden, "output_attentions": self.needs_attentions}

    def loss(self, student_out: Any, teacher_out: Any, batch: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
        """The weighted sum of the strategies' losses, and each term (floats, for logging)."""
        cfg = self.config
        mask = batch.get("attention_mask")
        labels = batch.get("labels")
        terms: dict[str, Any] = {}
        logged: dict[str, float] = {}
        if "response" in cfg.strategies:
            s_logits, t_logits = student_out.logits, teacher_out.logits
            if self.vocab is not None:
                s_logits, t_logits = s_logits[..., :self.vocab], t_logits[..., :self.vocab]
            r = losses.response_loss(s_logits, t_logits, labels, temperature=cfg.temperature, alpha=cfg.alpha,
                                     attention_mask=mask)
            terms["response"] = r["loss"]
            logged["kd"] = float(r["kd"].detach())
            if r["ce"] is not None:
                logged["ce"] = float(r["ce"].detach())
        if "feature" in cfg.strategies:
            terms["feature"] = losses.feature_loss(student_out.hidden_states, teacher_out.hidden_states, self.mapping,
                                                   self.projections, attention_mask=mask)
        if "relation" in cfg.strategies:
            rel = losses.relation_loss(losses.pool(student_out.hidden_states[-1], mask),
                                       losses.pool(teacher_out.hidden_states[-1], mask))
            terms["relation"] = rel["loss"]
        if "attention" in cfg.strategies:
            key = "cross_attentions" if cfg.attention_type == "cross" else "attentions"
            s_att, t_att = getattr(student_out, key, None), getattr(teacher_out, key, None)
            if s_att is None or t_att is None:
                raise ConfigError(f"attention_type={cfg.attention_type!r} but the models return no {key} "
                                  "(cross-attention needs an encoder-decoder model)", field="attention_type")
            terms["attention"] = losses.attention_loss(s_att, t_att, head_mapping=cfg.head_mapping,
                                                       attention_mask=mask if cfg.attention_type == "self" else None)
        total = None
        for name, value in terms.items():
            weight = float(cfg.strategies[name])
            logged[name] = float(value.detach())
            if cfg.auto_weighting:
                scale = self._scales.get(name)
                size = abs(logged[name]) if math.isfinite(logged[name]) else 1.0
                scale = size if scale is None else 0.9 * scale + 0.1 * size  # running mean of the term's size
                self._scales[name] = scale
                weight = weight / max(scale, 1e-8)
            total = weight * value if total is None else total + weight * value
        return total, logged


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without labels: the objective computes the hard loss itself, the model need not."""
    return {k: v for k, v in batch.items() if k != "labels"}


def teacher_forward(teacher: Any, batch: Mapping[str, Any], distiller: Distiller) -> Any:
    """The teacher's outputs for a batch, without gradients (it never learns)."""
    with torch.no_grad():
        return teacher(**model_inputs(batch), **distiller.forward_kwargs())


def prepare_teacher(teacher: Any, device: Any) -> Any:
    """Frozen, in eval mode, on ``device``."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher.to(device)


def run_distillation(teacher: Any, student: Any, data_loader: Iterable[Mapping[str, Any]], config: StrategyConfig, *,
                     epochs: int = 1, learning_rate: float = 5e-5, optimizer: Any = None,
                     max_steps: int | None = None) -> dict[str, Any]:
    """A plain PyTorch loop training ``student`` against ``teacher`` with ``config``'s objective.

    Vocabularies that differ only by padding rows are compared on their common (smaller) part.

    Returns:
        ``{"steps", "loss": [per step], "terms": [per step {term: value}]}``.
    """
    check_range("epochs", epochs, min_value=1)
    check_range("learning_rate", learning_rate, min_value=0.0, min_inclusive=False)
    from aptops.distill.student import aligned_vocab

    device = next(student.parameters()).device
    prepare_teacher(teacher, device)
    distiller = Distiller(config, teacher, student, vocab=aligned_vocab(teacher, student)).to(device)
    params = list(student.parameters()) + list(distiller.parameters())
    opt = optimizer or torch.optim.AdamW([p for p in params if p.requires_grad], lr=learning_rate)
    student.train()
    history: dict[str, Any] = {"steps": 0, "loss": [], "terms": []}
    for _ in range(epochs):
        for batch in data_loader:
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            teacher_out = teacher_forward(teacher, batch, distiller)
            student_out = student(**model_inputs(batch), **distiller.forward_kwargs())
            loss, terms = distiller.loss(student_out, teacher_out, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history["steps"] += 1
            history["loss"].append(float(loss.detach()))
            history["terms"].append(terms)
            if max_steps is not None and history["steps"] >= max_steps:
                return history
    return history
