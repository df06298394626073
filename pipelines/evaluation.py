"""Models judged on lm-evaluation-harness tasks inside a pipeline: one eval task per model, each labelled with its
role (base, trained, compressed, gguf), so the run report, KFP and the model card show one table.

Hugging Face folders are evaluated in the eval image (GPU pool), GGUF folders in the export image, where llama.cpp
is. With no tasks the eval tasks evaluate nothing and say so: their outputs exist either way, so a publish task can
always take them.
"""

from collections.abc import Callable
from typing import Any

from aptops.cluster.settings import ClusterSettings
from aptops_components import eval as eval_components


def evaluators(settings: ClusterSettings) -> tuple[Any, Any]:
    """The eval component for Hugging Face folders (eval image) and for GGUF folders (export image)."""
    return (settings.component(eval_components.evaluate_tasks, "eval"),
            settings.component(eval_components.evaluate_tasks, "export"))


def judge(settings: ClusterSettings, *, tasks: Any, include_path: Any, limit: Any,
          labels: dict[str, Any]) -> Callable[..., Any]:
    """``judge(model, label, gguf=False, baseline=None)``: one eval task of ``model`` (an artifact) on the pipeline's
    eval tasks, labelled with its role, on the eval image (or the export image for a GGUF folder); with
    ``baseline`` the model it was made from is judged in the same task (before and after: one load of the harness)."""
    hf, gguf_files = evaluators(settings)

    def one(model: Any, label: str, *, gguf: bool = False, baseline: Any = None, baseline_label: str = "base") -> Any:
        before = {"baseline": baseline, "baseline_label": baseline_label} if baseline is not None else {}
        task = (gguf_files if gguf else hf)(model=model, label=label, tasks=tasks, include_path=include_path,
                                            limit=limit, **before, **labels)
        return settings.apply(task, "export" if gguf else "eval")

    return one
