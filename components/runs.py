"""Run-level components: the exit handler that records how a pipeline run ended (image ``aptops-data``, CPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp import dsl

from aptops_components import stage_component

component = stage_component("data")


@component
def record_run_outcome(
    status: dsl.PipelineTaskFinalStatus,
    pipeline: str = "lifecycle",
    run_id: str = "",
) -> str:
    """Runs however the pipeline ended: pushes ``aptops_pipeline_run_succeeded`` (1 or 0) and the end time as metrics."""
    import time

    from aptops.core.artifacts import StageResult
    from aptops.core.runtime import run_component

    state = str(status.state or "UNKNOWN").upper()
    succeeded = state in ("SUCCEEDED", "SUCCESS", "COMPLETE")

    def work():
        return StageResult("pipeline", outputs={}, metrics={"run_succeeded": 1.0 if succeeded else 0.0,
                                                             "run_end_timestamp_seconds": time.time()},
                           details={"state": state, "error": status.error_message or ""})

    run_component("pipeline", work, step="outcome", pipeline=pipeline, run_id=run_id)
    if not succeeded:
        print(f"pipeline {pipeline} run {run_id} ended {state}: {status.error_message or 'no message'}")
    return state
