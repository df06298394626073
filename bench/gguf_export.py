"""GGUF export: aptops' converter against llama.cpp's reference ``convert_hf_to_gguf.py``, same model.

Both convert the real SmolLM2-135M-Instruct to F16 (each in its own subprocess, imports included, several
alternating rounds, medians of time and of peak RSS), then llama.cpp's quantizer turns each F16 file into
Q4_K_M; the F16 files are compared tensor by tensor (names, types, shapes, bytes) and metadata key by key.
Then the same side by side on a synthetic ~1B-parameter Llama (Llama-3.2-1B's shape with SmolLM2's tokenizer,
random weights saved in BF16 by this script, not committed), BF16 -> F16: the peak RSS says whether memory
grows with the model. The reference comes from the llama-cpp-python source distribution (downloaded once into
the aptops cache) and is only run as a comparator.

Run on a CPU: ``python bench/gguf_export.py [--rounds 3] [--large-rounds 1] [--no-large]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
LLAMA_CPP_PYTHON = "0.3.36"


def reference_converter() -> Path:
    """convert_hf_to_gguf.py and its gguf-py from the llama-cpp-python sdist, cached."""
    from aptops.core.assets import cache_dir

    root = cache_dir() / "reference" / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    script = root / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                        "--no-binary", ":all:", "--no-deps", "-d", tmp, "-q"], check=True)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            wanted = [m for m in tar.getmembers()
                      if "/vendor/llama.cpp/" in m.name and (m.name.endswith("convert_hf_to_gguf.py")
                                                             or "/gguf-py/" in m.name or "/conversion/" in m.name)]
            for m in wanted:
                m.name = m.name.split("/", 1)[1]  # drop the top folder
            root.mkdir(parents=True, exist_ok=True)
            tar.extractall(root, members=wanted, filter="data")
    return script


# runs a script and, at its exit, writes its own peak RSS (VmHWM: this process image only; getrusage's
# ru_maxrss would carry the bench's own footprint over the fork into the child)
_PEAK = """import atexit, os, runpy, sys
out = sys.argv[1]
def peak():
    with open('/proc/self/status') as f:
        kib = next(line.split()[1] for line in f if line.startswith('VmHWM:'))
    with open(out, 'w') as f:
        f.write(kib)
atexit.register(peak)
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python script.py` does
runpy.run_path(sys.argv[0], run_name='__main__')
"""
_OURS = """import sys
from aptops.export import convert_to_gguf
convert_to_gguf(sys.argv[1], sys.argv[2], outtype=sys.argv[3] if len(sys.argv) > 3 else 'F16')
"""


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one script run in a fresh interpreter, imports included."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _PEAK, str(peak), *argv], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        return seconds, int(peak.read_text()) / 1024


def synthetic_llama(folder: Path, tokenizer: Path) -> Path:
    """A ~1.07B-parameter random Llama (hidden 2048, 16 blocks, MLP 8192, 32/8 heads, SmolLM2's 49,152-token
    vocabulary, tied embeddings) written straight to BF16 safetensors shards, one tensor at a time."""
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         tie_word_embeddings=True, rope_theta=500000.0, dtype="bfloat16",
                         architectures=["LlamaForCausalLM"], bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    h, f, kv = 2048, 8192, 8 * 64
    shapes = {"model.embed_tokens.weight": (49152, h), "model.norm.weight": (h,)}
    for i in range(16):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
                   p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
    shards, shard, weight_map = [], {}, {}
    for name, shape in shapes.items():
        shard[name] = (torch.ones(shape) if len(shape) == 1 else torch.randn(shape) * 0.02).to(torch.bfloat16)
        if sum(t.numel() for t in shard.values()) > 400_000_000:
            shards.append(shard)
            shard = {}
    shards.append(shard)
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map |= {t: name for t in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer / file).is_file():
            shutil.copy(tokenizer / file, folder / file)
    return folder


def side_by_side(model: Path, work: Path, rounds: int, tag: str) -> dict[str, object]:
    """aptops and the reference converting ``model`` to F16, alternating who goes first; medians."""
    script = reference_converter()
    ours = work / "aptops_convert.py"
    ours.write_text(_OURS)
    ours_cmd = [str(ours), str(model), str(work / f"{tag}-ours.gguf")]
    ref_cmd = [str(script), str(model), "--outfile", str(work / f"{tag}-ref.gguf"), "--outtype", "f16"]
    ref_env = {"PYTHONPATH": str(script.parent / "gguf-py")}
    rounds_out = []
    for i in range(rounds):
        order = [("aptops", ours_cmd, None), ("reference", ref_cmd, ref_env)]
        if i % 2:
            order.reverse()
        measured = {name: timed(cmd, env) for name, cmd, env in order}
        rounds_out.append({name: {"seconds": s, "peak_rss_mib": m} for name, (s, m) in measured.items()})
        print(f"{tag} round {i}: " + ", ".join(f"{n} {s:.2f} s / {m:.0f} MiB" for n, (s, m) in measured.items()),
              flush=True)
    med = {name: {k: statistics.median(r[name][k] for r in rounds_out) for k in ("seconds", "peak_rss_mib")}
           for name in ("aptops", "reference")}
    return {"rounds": rounds_out, "median": med,
            "time_ratio_aptops_vs_reference": med["aptops"]["seconds"] / med["reference"]["seconds"],
            "peak_rss_ratio_aptops_vs_reference": med["aptops"]["peak_rss_mib"] / med["reference"]["peak_rss_mib"]}


def compare(ours: Path, ref: Path) -> dict[str, object]:
    import numpy as np
    from gguf import GGUFReader

    a, b = GGUFReader(str(ours)), GGUFReader(str(ref))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    identical, differing = 0, {}
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            differing[name] = f"{x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}"
        elif np.array_equal(np.asarray(x.data), np.asarray(y.data)):
            identical += 1
        else:
            diff = np.abs(np.asarray(x.data, dtype=np.float32) - np.asarray(y.data, dtype=np.float32))
            differing[name] = f"max abs diff {float(diff.max()):.3g}"
    keys_a = {k for k in a.fields if not k.startswith("GGUF.")}
    keys_b = {k for k in b.fields if not k.startswith("GGUF.")}
    return {"tensors_ours": len(ta), "tensors_reference": len(tb), "identical": identical,
            "differing": differing, "only_ours": sorted(set(ta) - set(tb)), "only_reference": sorted(set(tb) - set(ta)),
            "metadata_only_reference": sorted(keys_b - keys_a), "metadata_only_ours": sorted(keys_a - keys_b)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large-rounds", type=int, default=1)
    parser.add_argument("--no-large", action="store_true", help="skip the synthetic 1B model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gguf_export.json")
    parser.add_argument("--make-synthetic", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from aptops.core.assets import cache_dir, smollm2_hf_folder

    if args.make_synthetic:
        synthetic_llama(args.make_synthetic, smollm2_hf_folder())
        return
    from aptops.export import quantize_gguf

    model = smollm2_hf_folder()
    work = Path(tempfile.mkdtemp(prefix="aptops-bench-gguf-"))
    small = side_by_side(model, work, args.rounds, "smollm2")
    quant = {}
    for name in ("ours", "ref"):
        start = time.perf_counter()
        quantize_gguf(work / f"smollm2-{name}.gguf", work / f"{name}-q4km.gguf", "Q4_K_M")
        quant[name] = time.perf_counter() - start
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": "SmolLM2-135M-Instruct", **small,
        "quantize_q4_k_m_s": quant, "f16_comparison": compare(work / "smollm2-ours.gguf", work / "smollm2-ref.gguf"),
    }
    if not args.no_large:
        large = cache_dir() / "bench" / "synthetic-llama-1b-bf16"
        subprocess.run([sys.executable, __file__, "--make-synthetic", str(large)], check=True)
        for f in work.glob("smollm2-*.gguf"):
            f.unlink()
        result = side_by_side(large, work, args.large_rounds, "llama-1b")
        comparison = compare(work / "llama-1b-ours.gguf", work / "llama-1b-ref.gguf")
        from aptops.lm.gguf import safetensors_index

        params = sum(math.prod(t.shape) for t in safetensors_index(large).values())
        report["synthetic_1b_bf16"] = {"parameters": params, "source": "BF16 safetensors, 3 shards",
                                       **result, "f16_comparison": {k: v for k, v in comparison.items()
                                                                    if k != "differing"} | {
                                           "differing": len(comparison["differing"])}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("f16_comparison",)}, indent=2))


if __name__ == "__main__":
    main()
