"""GGUF export: aptops' converter against llama.cpp's reference ``convert_hf_to_gguf.py``, same model.

Both convert the real SmolLM2-135M-Instruct to F16 (each in its own subprocess, imports included, several
alternating rounds, medians), then llama.cpp's quantizer turns each F16 file into Q4_K_M; the F16 files
are compared tensor by tensor (names, types, shapes, bytes) and metadata key by key. The reference comes
from the llama-cpp-python source distribution (downloaded once into the aptops cache) and is only run as
a comparator.

Run on a CPU: ``python bench/gguf_export.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
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


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return time.perf_counter() - start


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
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gguf_export.json")
    args = parser.parse_args()
    from aptops.core.assets import smollm2_hf_folder
    from aptops.export import quantize_gguf

    model = smollm2_hf_folder()
    script = reference_converter()
    work = Path(tempfile.mkdtemp(prefix="aptops-bench-gguf-"))
    ours_cmd = [sys.executable, "-c", "import sys; from aptops.export import convert_to_gguf; "
                "convert_to_gguf(sys.argv[1], sys.argv[2], outtype='F16')", str(model), str(work / "ours.gguf")]
    ref_cmd = [sys.executable, str(script), str(model), "--outfile", str(work / "ref.gguf"), "--outtype", "f16"]
    ref_env = {"PYTHONPATH": str(script.parent / "gguf-py")}
    rounds = []
    for i in range(args.rounds):
        order = [("aptops", ours_cmd, None), ("reference", ref_cmd, ref_env)]
        if i % 2:
            order.reverse()
        times = {name: timed(cmd, env) for name, cmd, env in order}
        rounds.append(times)
        print(f"round {i}: aptops {times['aptops']:.2f} s, reference {times['reference']:.2f} s", flush=True)
    quant = {}
    for name in ("ours", "ref"):
        start = time.perf_counter()
        quantize_gguf(work / f"{name}.gguf", work / f"{name}-q4km.gguf", "Q4_K_M")
        quant[name] = time.perf_counter() - start
    med = {k: statistics.median(r[k] for r in rounds) for k in ("aptops", "reference")}
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": "SmolLM2-135M-Instruct", "rounds": rounds, "median_s": med,
        "time_ratio_aptops_vs_reference": med["aptops"] / med["reference"],
        "quantize_q4_k_m_s": quant, "f16_comparison": compare(work / "ours.gguf", work / "ref.gguf"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
