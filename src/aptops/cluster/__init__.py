"""Running on Kubernetes: the cluster file model (:mod:`aptops.cluster.settings`: images, node pools, resources,
secrets, the cache volume, TrainJobs) and the Kubeflow Trainer launcher (:mod:`aptops.cluster.trainjob`).

The CLI (``--cluster``, ``--dry-run``), the pipelines (every task placed through ``ClusterSettings``) and the
training components (``run_training_step``: here, or as a TrainJob) use them; no stage does.
"""

from aptops.cluster.settings import ClusterSettings, Toleration, parse_selector
from aptops.cluster.trainjob import (
           TrainJobLaunch,
           TrainJobSettings,
           dry_run_manifests,
           run_distributed,
           run_training_step,
)

__all__ = ["ClusterSettings", "Toleration", "TrainJobLaunch", "TrainJobSettings", "dry_run_manifests",
           "parse_selector", "run_distributed", "run_training_step"]
