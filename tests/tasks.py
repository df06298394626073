"""Tasks of one's own for lm-evaluation-harness, small enough for a tiny random model: multiple choice
(``tiny_mc``), rolling perplexity (``tiny_text``) and generation (``tiny_gen``), their data beside them."""

from __future__ import annotations

import json
from pathlib import Path

MC_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: tiny_mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""
ROLLING_YAML = """\
task: tiny_text
dataset_path: json
dataset_kwargs:
  data_files:
    test: tiny_text.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""
GENERATE_YAML = """\
task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: tiny_gen.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{target}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
"""



def write_tiny_tasks(folder: Path) -> Path:
    """Write the three tasks and their JSONL data into ``folder`` (data files named relative to it)."""
    from tests.models import CORPUS

    folder.mkdir(parents=True, exist_ok=True)
    words = ["fox", "dog", "text", "models", "pipeline", "weights", "numbers", "tokenizer"]
    rows = [{"question": f"Which word comes {i}?", "choices": [words[i % 8], words[(i + 3) % 8], words[(i + 5) % 8]],
             "answer": i % 3} for i in range(24)]
    (folder / "tiny_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_mc.yaml").write_text(MC_YAML)
    texts = [{"text": " ".join(CORPUS[i:i + 3])} for i in range(0, 15, 3)]
    (folder / "tiny_text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))
    (folder / "tiny_text.yaml").write_text(ROLLING_YAML)
    gen = [{"prompt": s[:12], "target": s[12:].split(".")[0]} for s in CORPUS[:5]]
    (folder / "tiny_gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    (folder / "tiny_gen.yaml").write_text(GENERATE_YAML)
    return folder


