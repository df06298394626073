"""What every ``aptops`` command shares: the root app, the consoles, the option types, running a stage
function with metrics, and rendering results."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aptops import __version__
from aptops.core.config import load_config, parse_overrides
from aptops.core.deps import load_object
from aptops.core.errors import ConfigError
from aptops.core.logging import configure_logging
from aptops.core.remote import is_uri
from aptops.core.remote_artifacts import Location, published_path, staged_input, staged_output

log = logging.getLogger("aptops.cli")
console = Console(stderr=False)
err = Console(stderr=True)

app = typer.Typer(
    name="aptops",
    help="Take a language model through its whole life: data, training, debugging, compression, GGUF "
    "export, Hub publishing and backup, as Kubeflow pipelines that also run on one machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: The help of a dataset argument, the same for every stage that reads text.
DATASET_HELP = ("An aptops dataset folder, JSONL/Parquet/CSV/text, a Hub dataset, or a URI read in place (s3://bucket/corpus/, "
                "oss://, gs://, hf://datasets/org/name/*.parquet, https://).")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of settings.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace --out when it holds an aptops artifact of this stage (once the new one is complete); "
                        "a folder of other files is never replaced.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a setting: key=value (repeatable).")]


# the cluster options `compile`, `register` (and the Helm chart's register Job) share
ClusterOpt = Annotated[Path | None, typer.Option(
    "--cluster", help="The cluster file (images, pools, resources, secrets, cache, TrainJobs); options override it.")]
NodesOpt = Annotated[int | None, typer.Option(
    "--nodes", help="With --dry-run: the TrainJob's nodes (default: the cluster file's trainjob.num_nodes).")]
GpusPerNodeOpt = Annotated[int | None, typer.Option(
    "--gpus-per-node", help="With --dry-run: GPUs (torchrun processes) per node (default: the cluster file's).")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print the Kubeflow Trainer TrainJob (and the ConfigMap with this config) as YAML for "
                      "kubectl apply; train nothing. Paths are as the job's nodes see them.")]
RegistryOpt = Annotated[str | None, typer.Option(help="Registry/namespace of the stage images.")]
TagOpt = Annotated[str | None, typer.Option(help="Tag of the stage images.")]
GpuSelectorOpt = Annotated[list[str] | None, typer.Option(help="GPU pool node label k=v (repeatable).")]
GpuTolerationOpt = Annotated[list[str] | None, typer.Option(help="GPU toleration key=value:Effect (repeatable).")]
CpuSelectorOpt = Annotated[list[str] | None, typer.Option(help="CPU pool node label k=v (repeatable).")]
GpuResourceOpt = Annotated[str | None, typer.Option(help="GPU resource name, e.g. nvidia.com/gpu.")]
SecretsOpt = Annotated[list[str] | None, typer.Option(
    help="provider=SecretName: a Kubernetes Secret whose keys become env vars (aws, oss, hf, modelscope).")]
CachePvcOpt = Annotated[str | None, typer.Option(
    help="A PVC mounted at /cache in every model-loading task (HF_HOME and the aptops cache live there).")]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"aptops {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    configure_logging("DEBUG" if verbose else "INFO")




def _run_stage(stage: str, step: str, fn: Any, out: Path, *, inputs: Sequence[str | Path | None] | None = None,
               overwrite: bool = False, metrics_dir: Path | None = None) -> Any:
    """Run a stage function with metrics, as a component would: Pushgateway if configured, else a textfile.

    With ``inputs`` (the command writes ``out``), ``out`` is checked before any work: a folder of the user's
    files, an input, or (without ``overwrite``) an existing artifact is refused; every output the stage writes
    then follows the same rule.
    """
    from aptops.core.artifacts import check_output, output_policy
    from aptops.core.runtime import run_component

    run_id = os.environ.get("APTOPS_RUN_ID") or f"cli-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    scope: Any = contextlib.nullcontext()  # no inputs: the command reads `out` (publish, backup), writes none of it
    if inputs is not None:
        paths = [str(i) for i in inputs if i is not None]
        check_output(out, overwrite=overwrite, kind=stage, inputs=paths, resume=True)
        scope = output_policy(overwrite=overwrite, inputs=paths)
    with scope:
        return run_component(stage, fn, pipeline="cli", run_id=run_id, step=step,
                             metrics_dir=metrics_dir or out.parent / f"{out.name}.metrics")


OUT_URI_HELP = " A local folder, or s3://bucket/prefix (oss://, gs://): published there, result.json last."


def _out_dir(staged: contextlib.ExitStack, out: str, *, stage: str, overwrite: bool,
             inputs: Sequence[Any]) -> tuple[Path, Path | None]:
    """The local folder a stage writes ``--out`` to, and where its metrics go when that folder is staged: a URI
    ``--out`` is checked now, written to a staging folder and published when the command's block ends; the metrics
    textfile then goes to ``./<name>.metrics``."""
    if "://" not in out:
        return Path(out), None
    local = staged.enter_context(staged_output(out, overwrite=overwrite, kind=stage, inputs=map(str, inputs)))
    return local, Path(f"{Location(out).name}.metrics")


def _dry_run(stage: str, argv: list[str], out: Path, cfg: Any, *, dry_run: bool, cluster: Path | None,
             nodes: int | None, gpus_per_node: int | None) -> bool:
    """Print the stage's TrainJob for ``--dry-run`` and say so (True); False when this is a real run."""
    if not dry_run:
        if nodes is not None or gpus_per_node is not None or cluster is not None:
            raise ConfigError("--nodes, --gpus-per-node and --cluster describe a TrainJob: add --dry-run to print it "
                              "(then kubectl apply it), or run the pipeline on the cluster (aptops submit)",
                              field="dry_run")
        return False
    import dataclasses

    import yaml

    from aptops.cluster.settings import ClusterSettings
    from aptops.cluster.trainjob import dry_run_manifests

    settings = ClusterSettings.from_file(cluster) if cluster is not None else ClusterSettings()
    job = dataclasses.replace(settings.trainjob,
                              num_nodes=nodes if nodes is not None else settings.trainjob.num_nodes,
                              gpus_per_node=gpus_per_node if gpus_per_node is not None else settings.trainjob.gpus_per_node)
    launch = dataclasses.replace(settings, trainjob=job).trainjob_launch(stage)
    if not launch.pvc:
        err.print("[yellow]warning:[/] no cache.pvc (give --cluster with one): --out is written inside the node's "
                  "pod and is lost with it")
    docs = dry_run_manifests(launch, stage=stage, argv=argv, output_dir=str(out), config=cfg)

    class Dumper(yaml.SafeDumper):  # the ConfigMap's JSON as a readable block, not one quoted line
        pass

    Dumper.add_representer(str, lambda d, v: d.represent_scalar(
        "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))
    typer.echo(yaml.dump_all(docs, Dumper=Dumper, sort_keys=False), nl=False)
    return True


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A titled table of text rows on the console."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    from aptops.core.runtime import is_main_process

    if not is_main_process():  # torchrun: one table, from rank 0
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:,.4g}" if abs(v) < 1e6 and not float(v).is_integer() else f"{v:,.0f}")
    console.print(table)


@dataclass(frozen=True)
class In:
    """A positional input of a stage command: a path or an id the stage function takes first, in order.

    ``artifact``: the input is an aptops artifact folder; given as a URI (``s3://bucket/runs/clean``) it must be
    complete there and is fetched for the run (:func:`aptops.core.remote_artifacts.staged_input`).
    """

    name: str
    help: str
    type: Any = str
    artifact: bool = False


@dataclass(frozen=True)
class Opt:
    """An optional ``--flag VALUE`` a stage command passes to its function as ``keyword``, or, with ``field``,
    a short name for ``--set <field>=VALUE`` (``listed``: comma-separated values, a list field).

    ``reads``: the stage reads it (a path --out may not be or lie in); otherwise it is a second output.
    """

    flag: str
    keyword: str
    help: str
    type: Any = str
    reads: bool = True
    field: str = ""
    listed: bool = False

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _parameter(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def metrics_table(title: str, keep: Callable[[str], bool] = lambda _: True) -> Callable[[Any, Path], None]:
    """Show a stage result as its metrics table; ``title`` may name ``{out}``, ``{report}`` and the result's
    outputs and details (``{gguf}``, ``{tensor_types}``); ``keep`` picks the metrics to show."""
    def show(result: Any, out: Path) -> None:
        names = {"out": out, "report": out / "report.html", **result.outputs, **result.details}
        _print_metrics(title.format(**names), {k: v for k, v in result.metrics.items() if keep(k)})
    return show


@dataclass(frozen=True)
class StageCommand:
    """One command :func:`stage_command` made: its stage, name, function and config class."""

    stage: str
    name: str
    run: str
    config: str


#: Every stage command, in the order they were made (the parameter test reads it).
STAGE_COMMANDS: list[StageCommand] = []


def stage_command(group: typer.Typer, name: str, *, stage: str, run: str, config: str, inputs: Sequence[In],
                  out: str, doc: str, show: Callable[[Any, Path], None], options: Sequence[Opt] = (),
                  step: str | None = None, trainjob: bool = False) -> Callable[..., None]:
    """Add ``aptops <group> <name>``: a command that runs one stage function as every stage command does.

    The command takes ``inputs`` as arguments, ``--out``, ``--overwrite``, ``options``, ``--config`` and ``--set``
    (every field of the ``config`` class by its own dotted name, validated by the class), and with ``trainjob``
    the TrainJob options (``--dry-run`` prints the job instead). It loads the config, checks --out, runs
    ``run(*inputs, output_dir=out, config=cfg, **options)`` with metrics, and shows the result (``show``, such as
    :func:`metrics_table`).

    Args:
        run / config: ``module:function`` and ``module:ConfigClass``, imported when the command runs.
        out: the help of ``--out``; ``doc`` the command's help; ``step`` its metrics' step name (default ``name``).
    """
    params = [_parameter(i.name, Annotated[str, typer.Argument(help=i.help)]) for i in inputs]  # URIs intact
    params += [_parameter("out", Annotated[str, typer.Option("--out", "-o", help=out + OUT_URI_HELP)]),
               _parameter("overwrite", OverwriteOpt, False)]
    params += [_parameter(o.name, Annotated[o.type | None, typer.Option(o.flag, help=o.help)], None) for o in options]
    params += [_parameter("config", ConfigOpt, None), _parameter("set_", SetOpt, None)]
    if trainjob:
        params += [_parameter("nodes", NodesOpt, None), _parameter("gpus_per_node", GpusPerNodeOpt, None),
                   _parameter("dry_run", DryRunOpt, False), _parameter("cluster", ClusterOpt, None)]

    def command(**kw: Any) -> None:
        overrides = parse_overrides(kw["set_"] or [])
        for o in options:
            if o.field and kw[o.name] is not None:
                value = kw[o.name]
                overrides[o.field] = [v.strip() for v in str(value).split(",") if v.strip()] if o.listed else value
        cfg = load_config(load_object(config), kw["config"], overrides=overrides)
        args = [kw[i.name] if i.type is str or is_uri(kw[i.name]) else i.type(kw[i.name]) for i in inputs]
        given = [o for o in options if kw[o.name] is not None and not o.field]
        if trainjob:
            argv = [stage, name, *map(str, args), *(x for o in given for x in (o.flag, str(kw[o.name])))]
            if _dry_run(stage, argv, Path(kw["out"]), cfg, dry_run=kw["dry_run"], cluster=kw["cluster"],
                        nodes=kw["nodes"], gpus_per_node=kw["gpus_per_node"]):
                return
        fn = load_object(run)  # imported when the command runs: `aptops --help` loads no stage
        reads = [*args, *(kw[o.name] for o in options if o.reads and kw[o.name] is not None)]
        with contextlib.ExitStack() as staged:
            out_dir, metrics_dir = _out_dir(staged, kw["out"], stage=stage, overwrite=kw["overwrite"], inputs=reads)
            local = [staged.enter_context(staged_input(a, what=i.name)) if i.artifact and is_uri(a) else a
                     for i, a in zip(inputs, args, strict=True)]
            result = _run_stage(stage, step or name, lambda: fn(*local, output_dir=out_dir, config=cfg,
                                                                    **{o.keyword: kw[o.name] for o in given}),
                                out_dir, overwrite=kw["overwrite"], inputs=[*local, *reads[len(args):]],
                                metrics_dir=metrics_dir)
        if metrics_dir is not None:  # published: what the user sees names where it is
            result.outputs = {k: published_path(v, out_dir, kw["out"]) for k, v in result.outputs.items()}
            out_dir = Location(kw["out"])
        show(result, out_dir)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = f"{stage}_{name}"
    group.command(name, help=doc)(command)
    STAGE_COMMANDS.append(StageCommand(stage, name, run, config))
    return command
