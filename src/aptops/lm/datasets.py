"""Load a dataset from wherever it lives: the Hub, local files, an aptops dataset artifact.

``load_hf_dataset("runs/clean")`` reads the Parquet shards of an aptops data artifact (after checking its
``result.json`` marker), ``load_hf_dataset("corpus.jsonl")`` a local file (JSONL, Parquet, CSV, text),
``load_hf_dataset("wikitext", split="train[:10%]")`` a Hub dataset through the ``datasets`` library's own
loading path. With ``streaming=True`` an ``IterableDataset`` comes back that reads as it goes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aptops.core import hub_client as client
from aptops.core.artifacts import RESULT_FILE, require_complete
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError, InvalidArtifactError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
            ".txt": "text", ".text": "text"}
_SPLIT = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>-?\d+%?)?:(?P<end>-?\d+%?)?\])?$")


def _parse_split(split: str) -> tuple[str, str | None, str | None]:
    m = _SPLIT.match(split.replace(" ", ""))
    if not m:
        raise ConfigError(f"split {split!r} is not a split name with an optional slice such as 'train', "
                          "'train[:1000]' or 'train[10%:20%]'", field="split", value=split)
    return m["name"], m["start"], m["end"]


def _local_files(path: Path) -> tuple[str, list[str]] | None:
    """The ``datasets`` builder and files for a local file or folder of files, or ``None`` if it is not one."""
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ConfigError(f"{str(path)!r}: unknown file type {path.suffix!r}; use one of {sorted(BUILDERS)}",
                              field="dataset_name", value=str(path))
        return builder, [str(path)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS
                       and p.name not in (RESULT_FILE, "stats.json", "config.json") and not p.name.startswith("."))
        kinds = {BUILDERS[p.suffix.lower()] for p in files}
        if (path / RESULT_FILE).exists() or any(p.suffix == ".parquet" for p in files):
            require_complete(path, what="dataset artifact")
            files = [p for p in files if BUILDERS[p.suffix.lower()] == "parquet"]
            kinds = {"parquet"}
        if not files:
            raise ArtifactNotFoundError(f"{str(path)!r} holds no dataset files ({', '.join(sorted(BUILDERS))})",
                                        path=str(path))
        if len(kinds) > 1:
            raise ConfigError(f"{str(path)!r} mixes file types {sorted(kinds)}; keep one format per folder",
                              field="dataset_name", value=str(path))
        return kinds.pop(), [str(p) for p in files]
    return None


def load_hf_dataset(dataset_name: str | Path, split: str = "train", streaming: bool = False, *,
                    config_name: str | None = None, revision: str | None = None, token: str | None = None) -> Any:
    """Load ``split`` of a dataset as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming).

    Args:
        dataset_name: a Hub dataset id (``org/name``), a local JSONL/Parquet/CSV/text file or folder of
            them, a folder written by ``Dataset.save_to_disk``, or an aptops dataset artifact.
        split: a split name with an optional slice: ``train``, ``train[:1000]``, ``train[:10%]``.
            Local files have one split, ``train``.
        streaming: return an ``IterableDataset`` that reads lazily; percentage slices need the size and
            are refused here (use absolute counts).
        config_name: the Hub dataset's configuration (subset).
        revision: a Hub branch, tag or commit.
        token: a Hub token for private or gated datasets.

    Returns:
        The dataset.

    Raises:
        ConfigError: a malformed or missing split, a percentage slice while streaming.
        ArtifactNotFoundError: no such file, folder or Hub dataset.
        InvalidArtifactError: the dataset is empty.
    """
    datasets = require("datasets", extra="train", feature="loading datasets")
    name, start, end = _parse_split(split)
    if streaming and any(s and s.endswith("%") for s in (start, end)):
        raise ConfigError(f"split {split!r}: percentage slices need the dataset's size, which a stream does not "
                          "know; use absolute counts such as 'train[:1000]', or streaming=False",
                          field="split", value=split)
    path = Path(str(dataset_name)).expanduser()
    saved = path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))
    local = _local_files(path) if path.exists() and not saved else None
    if not path.exists() and (path.suffix.lower() in BUILDERS or str(dataset_name).startswith(("/", ".", "~"))):
        raise ArtifactNotFoundError(f"dataset file {str(path)!r} does not exist", path=str(path))

    if saved:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = _pick_split(ds, name, str(path))
        ds = _slice(ds, start, end, split)
        ds = ds.to_iterable_dataset() if streaming else ds
    elif local is not None:
        if name != "train":
            raise ConfigError(f"split {name!r} does not exist in local files {str(path)!r}: local files have one "
                              "split, 'train' (slice it, e.g. 'train[90%:]', for a validation part)",
                              field="split", value=split)
        builder, files = local
        if all(Path(f).stat().st_size == 0 for f in files):
            raise InvalidArtifactError(f"dataset {str(path)!r} is empty (0 bytes); nothing to train on",
                                       path=str(path))
        try:
            ds = datasets.load_dataset(builder, data_files={"train": files}, split="train", streaming=streaming)
        except (datasets.exceptions.DatasetGenerationError, ValueError, StopIteration) as exc:
            cause = exc.__cause__ or exc
            raise InvalidArtifactError(f"cannot read {str(path)!r} as {builder}: {type(cause).__name__}: {cause}; "
                                       "check the file's format", path=str(path)) from None
        ds = _slice_stream(ds, start, end) if streaming else _slice(ds, start, end, split)
    else:
        client.check_repo_id(str(dataset_name), what="dataset")
        with client.translate_errors("loading dataset", str(dataset_name), token, repo_type="dataset"):
            try:
                ds = datasets.load_dataset(str(dataset_name), config_name, split=name if streaming else split,
                                           streaming=streaming, revision=revision, token=token)
            except datasets.exceptions.DatasetNotFoundError:
                raise ArtifactNotFoundError(
                    f"dataset {dataset_name!r} was not found on {client.endpoint()}; check the name, and if it is "
                    "private or gated pass a token with read access (HF_TOKEN)") from None
            except ValueError as exc:
                if "split" in str(exc).lower():
                    raise ConfigError(f"dataset {dataset_name!r} has no split {name!r}: {exc}",
                                      field="split", value=split) from None
                raise
        if streaming:
            ds = _slice_stream(ds, start, end)
    if not streaming and len(ds) == 0:
        raise InvalidArtifactError(f"dataset {str(dataset_name)!r} split {split!r} is empty; nothing to train on",
                                   path=str(dataset_name))
    return ds


def _pick_split(ds: Any, name: str, where: str) -> Any:
    if name not in ds:
        raise ConfigError(f"{where!r} has no split {name!r}; it has {sorted(ds)}", field="split", value=name)
    return ds[name]


def _slice(ds: Any, start: str | None, end: str | None, split: str) -> Any:
    if start is None and end is None:
        return ds
    n = len(ds)

    def index(value: str | None, default: int) -> int:
        if value is None:
            return default
        i = round(n * int(value[:-1]) / 100) if value.endswith("%") else int(value)
        return max(0, min(n, i + n if i < 0 else i))

    lo, hi = index(start, 0), index(end, n)
    return ds.select(range(lo, max(lo, hi)))


def _slice_stream(ds: Any, start: str | None, end: str | None) -> Any:
    if any(s and s.startswith("-") for s in (start, end)):
        raise ConfigError("negative slices need the dataset's size, which a stream does not know",
                          field="split", value=f"[{start or ''}:{end or ''}]")
    lo = int(start) if start else 0
    if lo:
        ds = ds.skip(lo)
    if end is not None:
        ds = ds.take(max(0, int(end) - lo))
    return ds
