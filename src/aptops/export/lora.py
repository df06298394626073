"""A LoRA adapter folder as a model to export: its base found, the adapter merged in with PEFT, saved whole.

``aptops export gguf ADAPTER`` takes the folder ``peft`` (or ``aptops train run --set merge_lora=false``)
writes: ``adapter_config.json`` names the base (``base_model_name_or_path``, a local folder or a Hub id), or
``base_model=`` says where it is now. The merged model is what the GGUF is converted from and verified against.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from aptops.core.artifacts import read_json_object
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, InvalidArtifactError

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "README.md")


def is_adapter(folder: str | Path) -> bool:
    """True for a PEFT adapter folder (``adapter_config.json``, no full weights of its own)."""
    return (Path(folder) / "adapter_config.json").is_file()


def resolve_base(adapter: Path, base_model: str = "") -> Path:
    """The base model folder of ``adapter``: ``base_model`` if given, else the one its config names (a local
    folder, or a Hub id fetched through the Hub client; offline, from the cache only).

    Raises:
        ArtifactNotFoundError: the base is neither a folder here nor a model the Hub client can fetch.
    """
    from aptops.lm.loading import check_model_folder, download_model

    cfg = read_json_object(adapter / "adapter_config.json")  # not a JSON object: an error naming the file
    if cfg.get("peft_type", "LORA") != "LORA":
        raise InvalidArtifactError(f"{str(adapter)!r} is a {cfg['peft_type']} adapter; GGUF export merges LoRA adapters",
                                   path=str(adapter))
    named = base_model or cfg.get("base_model_name_or_path") or ""
    if not named:
        raise ArtifactNotFoundError(f"the adapter in {str(adapter)!r} does not name its base model: pass it with "
                                    "--set base_model=PATH_OR_HUB_ID", path=str(adapter))
    local = Path(named).expanduser()
    if not local.is_absolute() and (adapter / local).is_dir():
        local = adapter / local
    if local.is_dir():
        return check_model_folder(local)
    try:
        return download_model(named)
    except Exception as exc:
        raise ArtifactNotFoundError(
            f"the base model {named!r} of the adapter in {str(adapter)!r} cannot be found ({exc}); pass where it "
            "is now with --set base_model=PATH_OR_HUB_ID", path=str(adapter)) from None


def merge_adapter(adapter: str | Path, into: str | Path, *, base_model: str = "") -> Path:
    """Load the base in its own dtype, apply the adapter, fold it into the weights and save the whole model
    (safetensors, the adapter's tokenizer and card when it has them, else the base's) at ``into``."""
    transformers = require("transformers", extra="export", feature="merging a LoRA adapter")
    peft = require("peft", extra="export", feature="merging a LoRA adapter")
    adapter = Path(adapter)
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():  # before the base is looked for (and perhaps downloaded)
        pickled = " (it has a pickled adapter_model.bin, which aptops does not load: save the adapter with "
        raise InvalidArtifactError(f"{str(adapter)!r} has no adapter_model.safetensors" + (
            pickled + "safe_serialization=True)" if (adapter / "adapter_model.bin").is_file() else ""), path=str(adapter))
    base = resolve_base(adapter, base_model)
    out = Path(into)
    log.info("merging the LoRA adapter %s into its base %s", adapter, base)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype="auto", use_safetensors=True)
    safetensors = require("safetensors.torch", extra="export", feature="merging a LoRA adapter")
    try:  # the adapter's weights read as safetensors only (PEFT's own loader would take a pickle too)
        model = peft.get_peft_model(model, peft.LoraConfig.from_pretrained(adapter))
        loaded = peft.set_peft_model_state_dict(model, safetensors.load_file(str(weights)))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise InvalidArtifactError(f"the adapter in {str(adapter)!r} does not fit the base {str(base)!r} ({exc}); "
                                   "pass the base it was trained on with --set base_model=...", path=str(adapter)) from None
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    if loaded.unexpected_keys or missing:
        raise InvalidArtifactError(f"the adapter in {str(adapter)!r} does not fit the base {str(base)!r}: "
                                   f"{len(loaded.unexpected_keys)} of its tensors have no place in the base "
                                   f"({loaded.unexpected_keys[:2]}), {len(missing)} adapter weights are missing; pass "
                                   "the base it was trained on with --set base_model=...", path=str(adapter))
    model.merge_and_unload().save_pretrained(out)
    for name in TOKENIZER_FILES:
        source = adapter / name if (adapter / name).is_file() else base / name
        if source.is_file():
            shutil.copy(source, out / name)
    return out
