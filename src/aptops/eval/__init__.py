"""The eval stage: models judged on standard tasks with lm-evaluation-harness (Hugging Face folders and GGUF
files alike), and the multiple-choice task the demo builds from WordNet."""

from aptops.eval.recipe import (
    RESULTS_FILE,
    HarnessConfig,
    comparison_rows,
    evaluate_tasks,
    headline,
    render_report,
    task_metrics,
)
from aptops.eval.tasks import build_wordnet_task

__all__ = ["RESULTS_FILE", "HarnessConfig", "build_wordnet_task", "comparison_rows", "evaluate_tasks", "headline",
           "render_report", "task_metrics"]
