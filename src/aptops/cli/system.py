"""The commands about the whole system rather than one stage: ``stages``, ``compile``, ``run``, ``register``,
``submit``, ``doctor``."""

from __future__ import annotations

import inspect
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aptops.cli.common import (
    CachePvcOpt,
    ClusterOpt,
    ConfigOpt,
    CpuSelectorOpt,
    GpuResourceOpt,
    GpuSelectorOpt,
    GpuTolerationOpt,
    RegistryOpt,
    SecretsOpt,
    TagOpt,
    app,
    console,
    err,
    print_table,
)
from aptops.core.config import parse_overrides, read_yaml_mapping
from aptops.core.errors import ConfigError, MissingDependencyError, PipelineError
from aptops.stages import STAGES


@app.command()
def stages() -> None:
    """List the stages: old adapter name, category, priority, image, node pool and how many old functions it keeps."""
    print_table("aptops stages", ("stage", "old adapter", "category", "priority", "image", "pool", "old functions"),
                [(s.name, s.adapter or "-", s.category, str(s.priority), s.image, s.pool, str(len(s.functions))) for s in STAGES])


# the placement options of every command that compiles pipelines for a cluster, in their order on --help
_PLACEMENT = (("image_registry", RegistryOpt), ("image_tag", TagOpt), ("gpu_node_selector", GpuSelectorOpt),
              ("gpu_toleration", GpuTolerationOpt), ("cpu_node_selector", CpuSelectorOpt),
              ("gpu_resource", GpuResourceOpt), ("secret", SecretsOpt), ("cache_pvc", CachePvcOpt),
              ("cluster", ClusterOpt))


def placement_options(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn(..., settings)`` as a command that also takes the placement options (images, node pools, secrets,
    cache, the cluster file); they reach ``fn`` as one ``ClusterSettings``."""
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "settings"]

    def command(**kw: Any) -> None:
        fn(settings=_cluster_settings(**{name: kw.pop(name) for name, _ in _PLACEMENT}), **kw)

    command.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        *own, *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=None) for n, a in _PLACEMENT)])
    command.__name__, command.__doc__ = fn.__name__, fn.__doc__
    return command


def _cluster_settings(
    image_registry: str | None, image_tag: str | None, gpu_node_selector: list[str] | None,
    gpu_toleration: list[str] | None, cpu_node_selector: list[str] | None, gpu_resource: str | None,
    secret: list[str] | None = None, cache_pvc: str | None = None, cluster: Path | None = None,
) -> Any:
    """The cluster file's settings (or the defaults) with the flags that were given on top."""
    from aptops.cluster.settings import ClusterSettings, Toleration, parse_selector

    base = ClusterSettings.from_file(cluster) if cluster is not None else ClusterSettings()
    return base.with_flags(
        image_registry=image_registry, image_tag=image_tag,
        gpu_node_selector=parse_selector(gpu_node_selector, field_name="gpu_node_selector") if gpu_node_selector else None,
        gpu_tolerations=tuple(Toleration.parse(t) for t in gpu_toleration) if gpu_toleration else None,
        cpu_node_selector=parse_selector(cpu_node_selector, field_name="cpu_node_selector") if cpu_node_selector else None,
        gpu_resource=gpu_resource,
        credential_secrets={**base.credential_secrets, **parse_selector(secret, field_name="secret")} if secret else None,
        cache_pvc=cache_pvc or None,
    )


def _kfp_modules() -> tuple[Any, Any]:
    try:
        import kfp
    except ImportError as exc:
        raise MissingDependencyError("this command needs kfp: pip install 'aptops[kfp]'") from exc
    import aptops_pipelines

    return kfp, aptops_pipelines


@app.command("compile")
@placement_options
def compile_(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the compiled YAML files.")] = Path("dist/pipelines"),
    pipeline: Annotated[list[str] | None, typer.Option("--pipeline", "-p", help="Compile only these (repeatable).")] = None,
    settings: Any = None,
) -> None:
    """Compile the pipelines to KFP YAML for a cluster: the cluster file's settings, the options on top."""
    _, pipelines = _kfp_modules()
    from kfp import compiler

    names = pipeline or sorted(pipelines.PIPELINES)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        func = pipelines.build_pipeline(name, settings)
        path = out / f"{name}.yaml"
        tmp = path.with_name(f".{name}.tmp.yaml")
        compiler.Compiler().compile(func, str(tmp))
        os.replace(tmp, path)
        rows.append((name, str(path)))
    print_table("compiled pipelines", ("pipeline", "file"), rows)


def _load_params(config: Path | None, params: list[str] | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if config is not None:
        loaded = read_yaml_mapping(config)
        values.update(loaded.get("params", loaded))
    values.update(parse_overrides(params or []))
    return values


def _coerce_params(func: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Check names against the pipeline's inputs and convert strings to the declared types."""
    inputs = func.component_spec.inputs or {}
    out = {}
    for key, value in values.items():
        if key not in inputs:
            raise ConfigError(
                f"pipeline {func.name!r} has no parameter {key!r}: parameters are {', '.join(sorted(inputs))}",
                field=key, value=value,
            )
        kind = inputs[key].type
        try:
            if kind == "Integer":
                value = int(value)
            elif kind == "Float":
                value = float(value)
            elif kind == "Boolean" and isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                value = value.lower() in {"true", "1", "yes"}
            elif kind == "String":
                value = str(value)
        except ValueError as exc:
            raise ConfigError(f"parameter {key}={value!r} must be of type {kind}", field=key, value=value) from exc
        out[key] = value
    return out


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name (data, ...).")],
    local: Annotated[bool, typer.Option("--local/--no-local", help="Run on this machine with kfp.local.")] = True,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Pipeline parameter k=v (repeatable).")] = None,
    config: ConfigOpt = None,
    runs_dir: Annotated[Path, typer.Option(help="Where local runs write their outputs.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every task's whole output as it comes "
                                          "(it always goes to runs/<run>/logs/<task>.log).")] = False,
) -> None:
    """Run a pipeline on this machine through kfp.local (SubprocessRunner in the current environment): a line per
    task, a short summary, and runs/<run>/report.html."""
    if not local:
        raise ConfigError("only --local runs are done here; use 'aptops submit' to run on a cluster")
    _, pipelines = _kfp_modules()
    from aptops_pipelines.local import run_local

    func = pipelines.build_pipeline(pipeline)
    params = _coerce_params(func, _load_params(config, param))
    run_dir = runs_dir / f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"[bold]{pipeline}[/]: running on this machine; outputs under {run_dir}", highlight=False,
                  soft_wrap=True)
    view = run_local(func, params, run_dir, verbose=verbose, name=pipeline)
    from aptops_pipelines.run_report import summary_lines

    lines = summary_lines(view)
    console.print(f"\n[bold]{escape(lines[0])}[/]", highlight=False)
    for line in lines[1:]:
        console.print(escape(line), highlight=False, soft_wrap=True)


@app.command()
@placement_options
def register(
    host: Annotated[str, typer.Option(help="KFP API URL, e.g. http://ml-pipeline.kubeflow:8888.")],
    pipeline: Annotated[list[str] | None, typer.Option("--pipeline", "-p", help="Only these (repeatable).")] = None,
    namespace: Annotated[str | None, typer.Option(help="The KFP namespace (multi-user installs).")] = None,
    settings: Any = None,
) -> None:
    """Compile the pipelines for a cluster and upload them to KFP as new versions (unchanged ones are skipped)."""
    _kfp_modules()
    from aptops_pipelines.register import register_pipelines

    logging.getLogger().addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
    rows = register_pipelines(host, settings, names=pipeline, token=os.environ.get("KF_PIPELINES_TOKEN") or None,
                              namespace=namespace)
    print_table(f"pipelines registered at {host}", ("pipeline", "version", "action"),
                [(row["pipeline"], row["version"], row["action"]) for row in rows])


@app.command()
def doctor(
    kfp_host: Annotated[str | None, typer.Option(help="Check this KFP API and the aptops pipelines in it.")] = None,
    pipeline: Annotated[list[str] | None, typer.Option("--pipeline", "-p", help="Pipelines expected (default: all).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Check Secrets and the cache claim in this namespace.")] = None,
    secret: Annotated[list[str] | None, typer.Option(help="A Secret that must exist (repeatable).")] = None,
    pvc: Annotated[str | None, typer.Option(help="The cache PersistentVolumeClaim that must exist.")] = None,
    gpu_node_selector: GpuSelectorOpt = None,
    gpu_resource: Annotated[str, typer.Option(help="GPU resource name.")] = "nvidia.com/gpu",
    in_cluster: Annotated[bool, typer.Option(help="Use the pod's ServiceAccount (inside a cluster).")] = False,
    kubeconfig: Annotated[str | None, typer.Option(help="A kubeconfig file (default: $KUBECONFIG, ~/.kube/config).")] = None,
    trainjob_runtime: Annotated[str | None, typer.Option(
        help="Check Kubeflow Trainer: the TrainJob API, this ClusterTrainingRuntime, the permissions.")] = None,
    model_registry: Annotated[str | None, typer.Option(
        help="Check Kubeflow Model Registry answers at this http(s)://host:port (token from MODEL_REGISTRY_TOKEN).")] = None,
    cluster: ClusterOpt = None,
) -> None:
    """Preflight: the KFP API answers, pipelines are registered, Secrets / PVC exist, the GPU pool has GPUs,
    Kubeflow Trainer is ready when the cluster file trains as TrainJobs, and Model Registry answers when it names one
    (--cluster fills in what it names)."""
    from aptops.cluster.settings import ClusterSettings, parse_selector
    from aptops_pipelines.doctor import check_cluster, check_kfp, check_registry, check_trainer, core_api

    if cluster is not None:
        settings = ClusterSettings.from_file(cluster)
        secret = [*(secret or []), *sorted(set(settings.credential_secrets.values()))]
        pvc = pvc or settings.cache_pvc or None
        gpu_node_selector = gpu_node_selector or [f"{k}={v}" for k, v in settings.gpu_node_selector.items()] or None
        gpu_resource = settings.gpu_resource
        if settings.trainjob.enabled:
            trainjob_runtime = trainjob_runtime or settings.trainjob.runtime
        model_registry = model_registry or settings.model_registry or None
    checks = []
    if model_registry:
        checks += check_registry(model_registry)
    if kfp_host:
        _kfp_modules()
        logging.getLogger().addHandler(logging.NullHandler())
        checks += check_kfp(kfp_host, pipeline, token=os.environ.get("KF_PIPELINES_TOKEN") or None)
    selector = parse_selector(gpu_node_selector, field_name="gpu_node_selector") if gpu_node_selector else None
    if namespace or selector:
        if (secret or pvc) and not namespace:
            raise ConfigError("--secret and --pvc need --namespace", field="namespace")
        try:
            core = core_api(in_cluster=in_cluster, kubeconfig=kubeconfig)
        except Exception as exc:  # kubernetes' config loaders raise several types
            raise ConfigError(f"no Kubernetes credentials: {exc} (pass --kubeconfig, or --in-cluster in a pod)",
                              field="kubeconfig") from None
        checks += check_cluster(core, namespace or "default", secrets=secret or [], pvc=pvc,
                                gpu_node_selector=selector, gpu_resource=gpu_resource)
        if trainjob_runtime:
            checks += check_trainer(core, namespace or "default", trainjob_runtime)
    elif trainjob_runtime:
        raise ConfigError("checking Kubeflow Trainer needs --namespace", field="namespace")
    if not checks:
        raise ConfigError("nothing to check: give --kfp-host, --namespace / --gpu-node-selector and/or --model-registry",
                          field="doctor")
    table = Table(title="aptops doctor")
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", escape(c.detail))
    console.print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        err.print(f"[red]{len(failed)} of {len(checks)} checks failed[/]")
        raise typer.Exit(1)


@app.command()
@placement_options
def submit(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    host: Annotated[str, typer.Option(help="KFP API URL, e.g. http://ml-pipeline-ui.kubeflow:80.")],
    experiment: Annotated[str, typer.Option(help="Experiment to run in.")] = "aptops",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Pipeline parameter k=v.")] = None,
    config: ConfigOpt = None,
    settings: Any = None,
) -> None:
    """Submit a pipeline run to a KFP API (token from KF_PIPELINES_TOKEN if set), as the cluster file's service account."""
    _, pipelines = _kfp_modules()
    func = pipelines.build_pipeline(pipeline, settings)
    params = _coerce_params(func, _load_params(config, param))
    token = os.environ.get("KF_PIPELINES_TOKEN") or None
    # kfp's client logs retries with full tracebacks on the root logger; the failure is reported below.
    logging.getLogger().addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
    from aptops_pipelines.register import kfp_client

    try:
        client = kfp_client(host, token)
        run_result = client.create_run_from_pipeline_func(
            func, arguments=params, experiment_name=experiment, run_name=f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}",
            service_account=settings.service_account or None,
        )
    except Exception as exc:  # the KFP client raises many unrelated types
        raise PipelineError(f"submitting {pipeline!r} to {host} failed: {type(exc).__name__}: {exc}") from exc
    console.print(f"submitted run {run_result.run_id} of {pipeline} to {host}")
