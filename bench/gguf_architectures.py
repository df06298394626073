"""Every architecture of aptops' GGUF converter against llama.cpp's own ``convert_hf_to_gguf.py``, same models.

For each architecture of the converter's table, the tiny random model the tests use (2 blocks, 64 wide, weights
drawn wide so the next token is a clear choice; SmolLM2's real BPE tokenizer, or a SentencePiece one trained
here) is converted to F32 by
aptops and by the reference converter of the llama.cpp version aptops quantizes with (the llama-cpp-python
0.3.36 sdist, a comparator only); llama.cpp runs both files on the same token ids and their logits are
compared with transformers': least cosine over positions and top-1 agreement. A reference conversion that
fails is reported with its error.

Run on a CPU: ``python bench/gguf_architectures.py``
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from bench.gguf_export import reference_converter

    from aptops.core.assets import smollm2_hf_folder
    from aptops.export import convert_to_gguf
    from aptops.export.verify import verify_gguf
    from tests.models import build_tiny_spm_llama
    from tests.unit.export.test_architectures import CASES, _build

    script = reference_converter()
    work = Path(tempfile.mkdtemp(prefix="aptops-bench-arch-"))
    spm = build_tiny_spm_llama(work / "spm")
    rows = {}
    for name in CASES:
        # SmolLM2's real tokenizer for the BPE family (the reference converter only takes BPE tokenizers whose
        # splitting it recognises); Phi-3 with SentencePiece (the reference insists on tokenizer.model)
        model = _build(name, work, spm, smollm2_hf_folder(), family="spm" if name.startswith("p-") else None)
        row = {}
        for who in ("aptops", "llama.cpp"):
            out = work / f"{name}-{who}.gguf"
            try:
                if who == "aptops":
                    convert_to_gguf(model, out, outtype="F32")
                else:
                    proc = subprocess.run([sys.executable, str(script), str(model), "--outfile", str(out),
                                           "--outtype", "f32"], capture_output=True, text=True,
                                          env={**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")})
                    if proc.returncode:
                        raise RuntimeError(proc.stderr.strip().splitlines()[-1][:300])
                check = verify_gguf(out, model, quantized=False)
                row[who] = {"min_logit_cosine": round(check["min_logit_cosine"], 5),
                            "top1_agreement": round(check["top1_agreement"], 4),
                            "tokenizer_agreement": round(check["tokenizer_agreement"], 4)}
            except Exception as exc:  # a converter that cannot do it is a result, not a crash of the bench
                row[who] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "outtype": "F32",
              "architectures": rows}
    out = Path(__file__).parent / "results" / "gguf_architectures.json"
    out.write_text(json.dumps(report, indent=2))
    print("\n| architecture | aptops cosine / top-1 | llama.cpp cosine / top-1 |\n| --- | --- | --- |")
    for name, row in rows.items():
        cells = [f"{r['min_logit_cosine']:.5f} / {r['top1_agreement']:.3f}" if "error" not in r else r["error"][:80]
                 for r in (row["aptops"], row["llama.cpp"])]
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
