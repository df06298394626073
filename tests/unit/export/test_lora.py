"""GGUF export of a LoRA adapter folder: its base found, the adapter merged by PEFT, the merged model verified."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from aptops.core.errors import ArtifactNotFoundError
from aptops.export import ExportConfig, export_to_gguf


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter (rank 4, every linear layer, non-zero B so it changes the model) on a tiny Qwen3 base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.models import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("lora")
    base = build_tiny_causal_lm(root / "base", "qwen3", initializer_range=0.3)
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    folder = root / "tuned-instruct"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def _tensor(path, name):
    import gguf
    import numpy as np

    return np.asarray(next(t for t in gguf.GGUFReader(path).tensors if t.name == name).data)


def test_an_adapter_is_merged_into_its_base_and_exported(adapter, tmp_path):
    import numpy as np

    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    result = export_to_gguf(adapter, output_dir=tmp_path / "gguf", config=ExportConfig(quantization="F32"))
    assert result.metrics["top1_agreement"] >= 0.95 and result.metrics["min_logit_cosine"] >= 0.999
    plain = export_to_gguf(base, output_dir=tmp_path / "base-gguf", config=ExportConfig(quantization="F32"))
    merged, unmerged = (_tensor(r.outputs["gguf"], "blk.0.ffn_down.weight") for r in (result, plain))
    assert np.abs(merged - unmerged).max() > 1e-3  # the adapter is in the weights, not only the name
    import gguf

    fields = gguf.GGUFReader(result.outputs["gguf"]).fields
    assert fields["general.name"].contents() == "Tuned Instruct"  # named after the adapter (as llama.cpp would)
    assert not list((tmp_path).glob("**/tuned-instruct/*.safetensors"))  # the merged copy is gone


def test_an_adapter_whose_base_moved(adapter, tmp_path):
    """Bad input: the recorded base is gone: a clear error and no artifact; --set base_model= finds it (CLI)."""
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    base = cfg["base_model_name_or_path"]
    (moved / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ArtifactNotFoundError, match=r"the base model '.*gone' of the adapter .* cannot be found .* "
                                                    r"--set base_model=PATH_OR_HUB_ID"):
        export_to_gguf(moved, output_dir=tmp_path / "a", config=ExportConfig(quantization="F16"))
    assert not (tmp_path / "a").exists()
    cli = [sys.executable, "-m", "aptops.cli", "export", "gguf", str(moved), "--out", str(tmp_path / "b"),
           "--set", "quantization=F16", "--set", f"base_model={base}"]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "b" / "model-F16.gguf").is_file()
