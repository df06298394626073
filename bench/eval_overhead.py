"""Task evaluation: ``aptops eval run`` against lm-evaluation-harness's own ``lm_eval`` command, same model, same task.

Both evaluate SmolLM2-135M-Instruct (``--tiny``: a 2-layer random Llama) on the WordNet multiple-choice task
(``aptops eval wordnet-task``, 100 questions) on the CPU with batch size 16, each a fresh process (imports, task
index, model load and scoring all counted), in alternating rounds; the medians of the wall times are compared and
the two results must be equal. The harness is run from the tasks folder, as its data files are named relative to
it. Where the time goes differs in one place: the harness indexes its ~15,000 built-in task files on every run,
``aptops eval run`` skips that when every requested task is in ``--include-path``.

Run: ``python bench/eval_overhead.py [--rounds 3] [--tiny]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, model_under_test, torch_machine, write_report

BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer random Llama instead of SmolLM2-135M")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_overhead.json")
    args = parser.parse_args()
    import lm_eval

    with tempfile.TemporaryDirectory(prefix="aptops-bench-eval-") as tmp:
        work = Path(tmp)
        model, model_name = model_under_test(args.tiny, work)
        tasks = work / "tasks"
        subprocess.run([str(BIN / "aptops"), "eval", "wordnet-task", str(tasks)], check=True, capture_output=True)
        ours_cmd = [str(BIN / "aptops"), "eval", "run", str(model), "--tasks", "wordnet_words", "--include-path",
                    str(tasks), "--device", "cpu", "--batch-size", "16", "--overwrite", "--out", str(work / "ours")]
        theirs_cmd = [str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={model}", "--tasks",
                      "wordnet_words", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "16",
                      "--output_path", str(work / "theirs")]
        times: dict[str, list[float]] = {"aptops": [], "lm_eval": []}
        for _ in range(args.rounds):  # alternating: whatever the machine does meanwhile hits both
            times["aptops"].append(timed(ours_cmd, work)[0])
            times["lm_eval"].append(timed(theirs_cmd, tasks)[0])
        ours = json.loads((work / "ours" / "results.json").read_text())["results"]["wordnet_words"]
        theirs_file = sorted((work / "theirs").rglob("results_*.json"))[-1]  # one per round: the last
        theirs = json.loads(theirs_file.read_text())["results"]["wordnet_words"]
        shutil.rmtree(work / "theirs")
    median = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "benchmark": "aptops eval run vs lm_eval (lm-evaluation-harness CLI), same model, task and batch size",
        "machine": torch_machine(lm_eval=lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?"),
        "model": model_name, "task": "wordnet_words (100 questions, 4 choices)", "rounds": args.rounds,
        "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 2) for k, v in median.items()},
        "time_ratio_aptops_over_lm_eval": round(median["aptops"] / median["lm_eval"], 3),
        "acc": {"aptops": ours["acc,none"], "lm_eval": theirs["acc,none"]},
        "same_result": ours["acc,none"] == theirs["acc,none"],
    }
    write_report(args.out, report)
    if not report["same_result"]:
        raise SystemExit("the two runs disagree: see the report")


if __name__ == "__main__":
    main()
