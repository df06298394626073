"""The multimodal model: any subset of text / image / audio encoders, projections, a fusion, a task head.

Try it (a tiny random model; real encoders are folders or Hub ids)::

    from aptops.multimodal import create_multimodal_model
    model = create_multimodal_model(
        text_encoder="path/to/all-MiniLM-L6-v2",
        image_encoder={"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
        fusion_method="attention", num_labels=6, freeze=("text",))
    model.save_pretrained("runs/mm")            # one folder: encoders, processors, fusion and head
    model = MultimodalModel.from_pretrained("runs/mm")

How a batch flows: each encoder runs on the rows that have its modality only (``index`` says which rows),
its token states are projected to ``hidden_size`` and scattered back into the batch, a presence mask per
modality records who had what, and the fusion combines what is present. A missing modality is never an
error and never a zero vector pretending to be data: ``concat`` puts a learned "missing" embedding in its
slot, ``add`` averages over the present ones, ``attention`` masks the absent tokens out of the keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.lm.saving import for_inference
from aptops.multimodal.encoders import (
    MODALITIES,
    ModalityEncoder,
    default_processor,
    load_encoder,
    load_processor,
    masked_mean,
)

log = logging.getLogger(__name__)

FUSIONS = ("concat", "add", "attention")
TASKS = ("classification", "regression", "embedding")
MODEL_CONFIG = "multimodal_config.json"
HEAD_WEIGHTS = "fusion_head.safetensors"


@dataclass
class MultimodalModelConfig:
    """What :class:`MultimodalModel` needs to rebuild itself from a folder.

    Attributes:
        modalities: the modalities that have an encoder, in fusion order.
        fusion: ``concat``, ``add``, ``attention`` or ``custom`` (a module passed at load time).
        task: ``classification`` (cross-entropy over ``num_labels``), ``regression`` (MSE on ``num_labels``
            outputs) or ``embedding`` (an L2-normalised vector; contrastive loss between the modalities).
        num_labels: classes, or regression outputs.
        hidden_size: the shared width every modality is projected to.
        num_heads: heads of the cross-modal attention.
        dropout: dropout after projection and in the fusion.
        frozen: modalities whose encoders do not train.
        id2label: class names, written into predictions.
    """

    modalities: list[str] = field(default_factory=list)
    fusion: str = "concat"
    task: str = "classification"
    num_labels: int = 2
    hidden_size: int = 256
    num_heads: int = 4
    dropout: float = 0.1
    frozen: list[str] = field(default_factory=list)
    id2label: dict[int, str] = field(default_factory=dict)


class CrossModalAttention(nn.Module):
    """Multi-head attention from one modality's queries to another's keys and values, with a learned gate.

    ``out = query + tanh(gate) * attention(query, key, value)``. The gate starts at 0, so a fresh block
    passes its query through unchanged and opens only as far as the other modality helps (the
    Flamingo-style gated cross-attention); ``key_mask`` false positions (padding, absent modalities) are
    never attended, and a row with no key at all gets its query back.

    Args:
        dim: the query width (and output width).
        num_heads: attention heads; ``dim`` must divide by it.
        key_dim: the key / value width when it differs from ``dim``.
        dropout: attention dropout while training.
    """

    def __init__(self, dim: int, num_heads: int = 4, key_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"hidden size {dim} does not divide into {num_heads} attention heads",
                              field="num_heads", value=num_heads)
        key_dim = key_dim or dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(key_dim, dim)
        self.v_proj = nn.Linear(key_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``query (B, Tq, D)``, ``key`` / ``value (B, Tk, Dk)``, ``key_mask (B, Tk)`` bool -> ``(B, Tq, D)``."""
        value = key if value is None else value
        if key.shape[0] != query.shape[0] or value.shape[:2] != key.shape[:2]:
            raise ConfigError(f"cross-modal attention: query batch {tuple(query.shape)}, key {tuple(key.shape)} and "
                              f"value {tuple(value.shape)} do not line up (same batch, same key length)",
                              field="cross_modal_attention")
        b, tq, d = query.shape
        h = self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, h, d // h).transpose(1, 2)

        q = heads(self.q_proj(self.norm(query)))
        k, v = heads(self.k_proj(key)), heads(self.v_proj(value))
        if key_mask is None:
            key_mask = torch.ones(key.shape[:2], dtype=torch.bool, device=key.device)
        has_key = key_mask.any(1)
        # a row without any key would softmax over nothing (NaN): let it attend everything, then drop it
        safe = key_mask | ~has_key[:, None]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :],
                                                  dropout_p=self.dropout if self.training else 0.0)
        attended = self.out_proj(attended.transpose(1, 2).reshape(b, tq, d))
        attended = attended * has_key[:, None, None].to(attended.dtype)
        return query + torch.tanh(self.gate) * attended


def cross_modal_attention(query_modality: torch.Tensor, key_modality: torch.Tensor,
                          value_modality: torch.Tensor | None = None, *, key_mask: torch.Tensor | None = None,
                          attention: CrossModalAttention | None = None, num_heads: int = 4) -> torch.Tensor:
    """Attend from one modality's token states to another's (see :class:`CrossModalAttention`).

    Args:
        query_modality: ``(B, Tq, D)`` states of the modality that asks (e.g. text tokens).
        key_modality: ``(B, Tk, Dk)`` states it attends to (e.g. image patches).
        value_modality: what is read out at those positions (default: ``key_modality``).
        key_mask: ``(B, Tk)`` bool, false where a key is padding or its modality is absent.
        attention: a trained block to use (a model's ``fusion.blocks[...]``); by default a new one is made
            for these widths — its gate starts closed, so it returns the query until it is trained.
        num_heads: heads for a new block.

    Returns:
        ``(B, Tq, D)``: the query states enriched by the other modality.
    """
    if attention is None:
        attention = CrossModalAttention(query_modality.shape[-1], num_heads, key_dim=key_modality.shape[-1])
        attention = attention.to(query_modality.device, query_modality.dtype)
    return attention(query_modality, key_modality, value_modality, key_mask)


class ConcatFusion(nn.Module):
    """Concatenate the pooled modalities (a learned stand-in where one is absent), then an MLP."""

    def __init__(self, modalities: Sequence[str], dim: int, dropout: float) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in modalities})
        self.mlp = nn.Sequential(nn.Linear(dim * len(modalities), dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.LayerNorm(dim))

    def forward(self, pooled: Mapping[str, torch.Tensor], tokens: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [torch.where(present[m][:, None], pooled[m], self.missing[m].to(pooled[m].dtype))
                 for m in self.modalities]
        return self.mlp(torch.cat(parts, dim=-1))


class AddFusion(nn.Module):
    """The mean of the present modalities' pooled vectors."""

    def __init__(self, modalities: Sequence[str], dim: int, dropout: float) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pooled: Mapping[str, torch.Tensor], tokens: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([pooled[m] for m in self.modalities], dim=1)
        mask = torch.stack([present[m] for m in self.modalities], dim=1)
        return self.norm(masked_mean(stacked, mask))


class AttentionFusion(nn.Module):
    """Each modality's pooled vector attends to the tokens of the other present modalities, then a masked mean."""

    def __init__(self, modalities: Sequence[str], dim: int, dropout: float, num_heads: int) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.type_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in modalities})
        self.blocks = nn.ModuleDict({m: CrossModalAttention(dim, num_heads, dropout=dropout) for m in modalities})
        self.norm = nn.LayerNorm(dim)

    def forward(self, pooled: Mapping[str, torch.Tensor], tokens: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        fused = []
        for m in self.modalities:
            others = [o for o in self.modalities if o != m]
            query = pooled[m][:, None, :]
            if others:
                keys = torch.cat([tokens[o][0] + self.type_embedding[o] for o in others], dim=1)
                mask = torch.cat([tokens[o][1] & present[o][:, None] for o in others], dim=1)
                query = self.blocks[m](query, keys, keys, mask)
            fused.append(query[:, 0])
        stacked = torch.stack(fused, dim=1)
        mask = torch.stack([present[m] for m in self.modalities], dim=1)
        return self.norm(masked_mean(stacked, mask))


@dataclass
class MultimodalOutput:
    """What :meth:`MultimodalModel.forward` returns.

    Attributes:
        loss: the task loss when labels were given (the trainer adds the per-modality terms).
        logits: ``(B, num_labels)`` for classification / regression; the normalised embedding otherwise.
        embedding: the fused ``(B, hidden_size)`` vector.
        modality_logits: each modality alone through the head (for auxiliary losses and balancing).
        present: which rows had which modality.
        modality_embeddings: the pooled, projected vector of each modality.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    embedding: torch.Tensor
    modality_logits: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    modality_embeddings: dict[str, torch.Tensor]

    def __getitem__(self, key: str) -> Any:  # Trainer reads outputs["loss"]
        return getattr(self, key)


class MultimodalModel(nn.Module):
    """Encoders + projections + fusion + head; build it with :func:`create_multimodal_model`."""

    def __init__(self, config: MultimodalModelConfig, encoders: Mapping[str, nn.Module],
                 processors: Mapping[str, Any] | None = None, fusion_module: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({m: e if isinstance(e, ModalityEncoder) else ModalityEncoder(m, e)
                                       for m, e in encoders.items()})
        dim = config.hidden_size
        self.projections = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(e.hidden_size, dim), nn.Dropout(config.dropout)) for m, e in self.encoders.items()})
        if config.fusion == "custom":
            if fusion_module is None:
                raise ConfigError("fusion 'custom' needs the module: pass fusion_module=", field="fusion")
            self.fusion = fusion_module
        elif config.fusion == "concat":
            self.fusion = ConcatFusion(config.modalities, dim, config.dropout)
        elif config.fusion == "add":
            self.fusion = AddFusion(config.modalities, dim, config.dropout)
        else:
            self.fusion = AttentionFusion(config.modalities, dim, config.dropout, config.num_heads)
        self.head = None if config.task == "embedding" else nn.Linear(dim, config.num_labels)
        self.logit_scale = nn.Parameter(torch.tensor(2.659)) if config.task == "embedding" else None  # ln(1/0.07)
        self.processors = dict(processors or {})
        for m in config.frozen:
            self.encoders[m].freeze(True)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.modalities)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def freeze(self, modality: str, frozen: bool = True) -> None:
        """Freeze (or unfreeze) one encoder; the choice is saved with the model."""
        if modality not in self.encoders:
            raise ConfigError(f"no {modality} encoder in this model (it has {', '.join(self.modalities)})",
                              field="freeze", value=modality)
        self.encoders[modality].freeze(frozen)
        frozen_set = set(self.config.frozen) - {modality} | ({modality} if frozen else set())
        self.config.frozen = [m for m in self.modalities if m in frozen_set]

    def encode(self, modality: str, inputs: Mapping[str, Any], batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project one modality's rows and scatter them into the batch: ``(tokens, token_mask, present)``."""
        index = inputs.get("index")
        if "features" in inputs:  # cached encoder states of a frozen encoder
            hidden, mask = inputs["features"], inputs["feature_mask"].bool()
        else:
            hidden, mask = self.encoders[modality](inputs)
        n = hidden.shape[0]
        if index is None:
            if n != batch_size:
                raise ConfigError(f"the {modality} inputs hold {n} rows but the batch has {batch_size}; give every "
                                  "modality the same rows, or an 'index' saying which rows it covers",
                                  field=modality)
            index = torch.arange(n, device=hidden.device)
        elif len(index) != n:
            raise ConfigError(f"the {modality} index names {len(index)} rows but its inputs hold {n}", field=modality)
        projected = self.projections[modality](hidden.to(self.projections[modality][0].weight.dtype))
        tokens = projected.new_zeros(batch_size, projected.shape[1], projected.shape[2])
        token_mask = torch.zeros(batch_size, projected.shape[1], dtype=torch.bool, device=projected.device)
        present = torch.zeros(batch_size, dtype=torch.bool, device=projected.device)
        tokens[index], token_mask[index], present[index] = projected, mask, True
        return tokens, token_mask, present

    def forward(self, text: Mapping[str, Any] | None = None, image: Mapping[str, Any] | None = None,
                audio: Mapping[str, Any] | None = None, labels: torch.Tensor | None = None,
                batch_size: int | None = None, drop: Mapping[str, torch.Tensor] | None = None,
                **unused: Any) -> MultimodalOutput:
        """Encode what is there, fuse, predict.

        Args:
            text / image / audio: a modality's processed inputs (``input_ids`` / ``pixel_values`` /
                ``input_values``...), optionally ``index`` (the batch rows they belong to) or cached
                ``features`` + ``feature_mask`` instead of raw inputs.
            labels: class ids (classification), targets (regression) or group ids (embedding: rows with the
                same id are positives for each other).
            batch_size: the number of rows, when no modality covers them all.
            drop: per modality a bool ``(B,)``: treat those rows as missing (modality dropout, ablations).
        """
        tokens, present = self.encode_inputs(text, image, audio, labels=labels, batch_size=batch_size)
        return self.fuse(tokens, present, labels=labels, drop=drop)

    def encode_inputs(self, text: Mapping[str, Any] | None = None, image: Mapping[str, Any] | None = None,
                      audio: Mapping[str, Any] | None = None, *, labels: torch.Tensor | None = None,
                      batch_size: int | None = None,
                      ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
        """Each modality's projected token states and mask, and which rows have it (the first half of
        :meth:`forward`; :meth:`fuse` is the second, so one encoding can be fused several ways)."""
        given = {m: v for m, v in (("text", text), ("image", image), ("audio", audio)) if v is not None}
        unknown = sorted(set(given) - set(self.modalities))
        if unknown:
            raise ConfigError(f"this model has no {', '.join(unknown)} encoder (it has {', '.join(self.modalities)})",
                              field="inputs")
        if not given:
            raise ConfigError("no input: give at least one of text, image, audio", field="inputs")
        if batch_size is None:
            batch_size = len(labels) if labels is not None else _rows(next(iter(given.values())))
        batch_size = int(batch_size)
        tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        present: dict[str, torch.Tensor] = {}
        device, dtype = self.device, self.projections[self.modalities[0]][0].weight.dtype
        for m in self.modalities:
            if m in given:
                t, mask, p = self.encode(m, given[m], batch_size)
            else:
                t = torch.zeros(batch_size, 1, self.config.hidden_size, device=device, dtype=dtype)
                mask = torch.zeros(batch_size, 1, dtype=torch.bool, device=device)
                p = torch.zeros(batch_size, dtype=torch.bool, device=device)
            tokens[m], present[m] = (t, mask), p
        return tokens, present

    def fuse(self, tokens: Mapping[str, tuple[torch.Tensor, torch.Tensor]], present: Mapping[str, torch.Tensor], *,
             labels: torch.Tensor | None = None, drop: Mapping[str, torch.Tensor] | None = None) -> MultimodalOutput:
        """Fuse encoded modalities (from :meth:`encode_inputs`) and predict; ``drop`` hides rows of a modality."""
        tokens, present = dict(tokens), dict(present)
        for m, rows in (drop or {}).items():
            if m in tokens:
                p = present[m] & ~rows.to(present[m].device)
                t, mask = tokens[m]
                tokens[m], present[m] = (t, mask & p[:, None]), p
        pooled = {m: masked_mean(t, mask) for m, (t, mask) in tokens.items()}
        none = ~torch.stack(list(present.values()), 1).any(1)
        if bool(none.any()):
            rows = none.nonzero().flatten().tolist()[:5]
            raise ConfigError(f"batch rows {rows} have no modality at all; every row needs text, an image or audio",
                              field="inputs")
        fused = self.fusion(pooled, tokens, present)
        logits, modality_logits = self._predict(fused, pooled, present)
        loss = self.task_loss(logits, labels) if labels is not None else None
        return MultimodalOutput(loss=loss, logits=logits, embedding=fused, modality_logits=modality_logits,
                                present=present, modality_embeddings=pooled)

    def _predict(self, fused: torch.Tensor, pooled: Mapping[str, torch.Tensor],
                 present: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.head is None:
            return F.normalize(fused, dim=-1), {m: F.normalize(v, dim=-1) for m, v in pooled.items()}
        return self.head(fused), {m: self.head(v) for m, v in pooled.items()}

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The task's loss on ``logits`` (restricted to ``rows`` when given)."""
        if rows is not None:
            logits, labels = logits[rows], labels[rows]
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        if self.config.task == "classification":
            return F.cross_entropy(logits.float(), labels.long())
        if self.config.task == "regression":
            return F.mse_loss(logits.float().view(labels.shape[0], -1), labels.float().view(labels.shape[0], -1))
        # embedding: there is no single-vector loss; contrastive_loss pairs the modalities
        return logits.sum() * 0.0

    def contrastive_loss(self, first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Symmetric InfoNCE between two modalities' normalised vectors; same-label rows count as positives."""
        scale = self.logit_scale.exp().clamp(max=100.0) if self.logit_scale is not None else 1.0 / 0.07
        sim = scale * first.float() @ second.float().T
        if labels is None:
            targets = torch.eye(sim.shape[0], device=sim.device)
        else:
            targets = (labels[:, None] == labels[None, :]).float()
        targets = targets / targets.sum(1, keepdim=True)
        return 0.5 * (torch.sum(-targets * F.log_softmax(sim, 1), 1).mean()
                      + torch.sum(-targets.T * F.log_softmax(sim.T, 1), 1).mean())

    def train(self, mode: bool = True) -> MultimodalModel:
        super().train(mode)
        for encoder in self.encoders.values():
            encoder.train(mode)  # frozen encoders stay in eval mode
        return self

    # -- persistence -------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model as a folder: ``<modality>_encoder/`` (weights + processor), the fusion and head
        weights (safetensors) and ``multimodal_config.json``; :meth:`from_pretrained` reads it back."""
        require("safetensors", extra="multimodal", feature="saving a multimodal model")
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for m, encoder in self.encoders.items():
            sub = folder / f"{m}_encoder"
            for_inference(encoder.model).save_pretrained(sub, safe_serialization=True)
            processor = self.processors.get(m)
            if processor is not None and hasattr(processor, "save_pretrained"):
                processor.save_pretrained(sub)
        own = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("encoders.")}
        save_file(own, str(folder / HEAD_WEIGHTS), metadata={"format": "pt"})
        data = asdict(self.config)
        data["id2label"] = {str(k): v for k, v in self.config.id2label.items()}
        (folder / MODEL_CONFIG).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, fusion_module: nn.Module | None = None,
                        device: str | torch.device | None = None) -> MultimodalModel:
        """Load a folder written by :meth:`save_pretrained`.

        Raises:
            InvalidArtifactError: the folder is not a multimodal model or misses a part.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path = folder / MODEL_CONFIG
        if not config_path.is_file():
            raise InvalidArtifactError(f"{folder} is not an aptops multimodal model: {MODEL_CONFIG} is missing "
                                       "(write one with MultimodalModel.save_pretrained)", path=str(folder))
        data = json.loads(config_path.read_text(encoding="utf-8"))
        data["id2label"] = {int(k): v for k, v in data.get("id2label", {}).items()}
        config = MultimodalModelConfig(**data)
        encoders, processors = {}, {}
        for m in config.modalities:
            sub = folder / f"{m}_encoder"
            if not sub.is_dir():
                raise InvalidArtifactError(f"{folder} misses {sub.name}/ for its {m} encoder", path=str(sub))
            encoders[m] = load_encoder(m, sub)
            processors[m] = load_processor(m, sub)
        model = cls(config, encoders, processors, fusion_module=fusion_module)
        weights = folder / HEAD_WEIGHTS
        if not weights.is_file():
            raise InvalidArtifactError(f"{folder} misses {HEAD_WEIGHTS} (fusion and head weights)", path=str(weights))
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        missing = [k for k in missing if not k.startswith("encoders.")]
        if missing or unexpected:
            raise InvalidArtifactError(f"{weights} does not fit the model: missing {missing[:5]}, unexpected "
                                       f"{unexpected[:5]}", path=str(weights))
        if device is not None:
            model.to(device)
        return model.eval()


def _rows(inputs: Mapping[str, Any]) -> int:
    for key in ("index", "features", "input_ids", "pixel_values", "input_values", "input_features"):
        if key in inputs:
            return int(inputs[key].shape[0])
    raise ConfigError(f"cannot tell the batch size from inputs with keys {sorted(inputs)}; pass batch_size=",
                      field="batch_size")


def create_multimodal_model(text_encoder: Any = None, image_encoder: Any = None, audio_encoder: Any = None,
                            fusion_method: str | nn.Module = "concat", *, task: str = "classification",
                            num_labels: int = 2, hidden_size: int = 256, num_heads: int = 4, dropout: float = 0.1,
                            freeze: Sequence[str] = (), processors: Mapping[str, Any] | None = None,
                            id2label: Mapping[int, str] | None = None) -> MultimodalModel:
    """Build a multimodal model from any subset of the three encoders.

    Args:
        text_encoder / image_encoder / audio_encoder: a folder or Hub id (pretrained), a
            ``PretrainedConfig`` or a mapping with ``model_type`` (random weights), or a model object;
            ``None`` leaves the modality out.
        fusion_method: ``concat``, ``add``, ``attention`` (gated cross-modal attention), or your own
            ``nn.Module`` called as ``module(pooled, tokens, present)`` with per-modality dicts of
            ``(B, H)`` vectors, ``((B, T, H), (B, T))`` token states and masks, and ``(B,)`` presence,
            returning ``(B, H)``.
        task: ``classification``, ``regression`` or ``embedding``.
        num_labels: classes or regression outputs (ignored for ``embedding``).
        hidden_size: the shared width the modalities are projected to.
        num_heads: heads of the cross-modal attention.
        dropout: dropout in the projections and the fusion.
        freeze: modalities whose encoders stay fixed (their features can then be cached).
        processors: tokenizer / image processor / feature extractor per modality; by default loaded from the
            encoder's folder, or made to fit a config-built encoder (a text encoder from a config needs one).
        id2label: class names.

    Raises:
        ConfigError: no encoder, an unknown fusion or task, a frozen modality without encoder.
    """
    specs = {m: s for m, s in (("text", text_encoder), ("image", image_encoder), ("audio", audio_encoder))
             if s is not None}
    if not specs:
        raise ConfigError("a multimodal model needs at least one encoder: give text_encoder, image_encoder or "
                          "audio_encoder", field="encoders")
    custom = isinstance(fusion_method, nn.Module)
    if not custom and fusion_method not in FUSIONS:
        raise ConfigError(f"unknown fusion {fusion_method!r}; use one of {', '.join(FUSIONS)} or an nn.Module",
                          field="fusion_method", value=fusion_method)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use one of {', '.join(TASKS)}", field="task", value=task)
    if num_labels < 1:
        raise ConfigError("num_labels must be at least 1", field="num_labels", value=num_labels)
    bad = sorted(set(freeze) - set(specs))
    if bad:
        raise ConfigError(f"cannot freeze {', '.join(bad)}: the model has no such encoder", field="freeze")
    processors = dict(processors or {})
    encoders = {}
    for m in MODALITIES:
        if m not in specs:
            continue
        encoders[m] = load_encoder(m, specs[m])
        if processors.get(m) is None:
            from_folder = load_processor(m, specs[m]) if isinstance(specs[m], str | Path) else None
            processors[m] = from_folder if from_folder is not None else default_processor(m, encoders[m])
    config = MultimodalModelConfig(
        modalities=list(encoders), fusion="custom" if custom else str(fusion_method), task=task,
        num_labels=num_labels if task != "embedding" else hidden_size, hidden_size=hidden_size,
        num_heads=num_heads, dropout=dropout, frozen=[m for m in encoders if m in set(freeze)],
        id2label={int(k): str(v) for k, v in (id2label or {}).items()})
    model = MultimodalModel(config, encoders, processors, fusion_module=fusion_method if custom else None)
    log.info("multimodal model: %s, fusion %s, %s params (%s trainable)", "+".join(config.modalities), config.fusion,
             f"{sum(p.numel() for p in model.parameters()):,}",
             f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    return model
