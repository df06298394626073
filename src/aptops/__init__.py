"""aptops: take a language model through its whole life on Kubernetes.

The library is plain Python: every stage lives in ``aptops.<stage>`` and never imports the orchestrator
(``kfp``). The KFP components (``aptops_components``) and pipelines (``aptops_pipelines``) wrap it.

Try it on a CPU: ``aptops stages`` lists the stages; ``aptops run data --local`` runs the data pipeline.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
