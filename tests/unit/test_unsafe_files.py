"""Unsafe files: aptops never unpickles, never runs a repository's code unasked, loads weights as safetensors.

A static check over every module of src/, components/ and pipelines/ (so a new call site cannot slip in),
and one behavioural check: a folder holding only pickled weights is refused, not loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("src", "components", "pipelines") for p in (ROOT / d).rglob("*.py"))
# receivers whose from_pretrained reads no weights (or our own safetensors-only loader)
NO_WEIGHTS = ("Tokenizer", "Config", "Processor", "FeatureExtractor", "loader", "MultimodalModel", "GenerationConfig")


def _calls():
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path.relative_to(ROOT), node


def _kw(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_weights_are_only_loaded_as_safetensors():
    offenders = []
    checked = 0
    for path, node in _calls():
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "from_pretrained"):
            continue
        receiver = ast.unparse(func.value)
        if any(word in receiver for word in NO_WEIGHTS):
            continue
        checked += 1
        safe = _kw(node, "use_safetensors")
        gguf = _kw(node, "gguf_file")  # GGUF is a plain tensor format, no code
        if not ((isinstance(safe, ast.Constant) and safe.value is True) or gguf is not None):
            offenders.append(f"{path}:{node.lineno} {receiver}.from_pretrained")
    assert checked >= 6 and not offenders, offenders


def test_no_pickle_and_no_unguarded_torch_load():
    offenders = []
    for path, node in _calls():
        name = ast.unparse(node.func)
        if name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "cloudpickle.load"):
            offenders.append(f"{path}:{node.lineno} {name}")
        if name in ("torch.load", "np.load", "numpy.load"):
            guard = _kw(node, "weights_only") if name == "torch.load" else _kw(node, "allow_pickle")
            wanted = name == "torch.load"
            if not (isinstance(guard, ast.Constant) and guard.value is wanted):
                offenders.append(f"{path}:{node.lineno} {name} without "
                                 f"{'weights_only=True' if wanted else 'allow_pickle=False'}")
    assert not offenders, offenders


def test_remote_code_only_when_the_caller_asks():
    offenders = []
    for path, node in _calls():
        value = _kw(node, "trust_remote_code")
        if isinstance(value, ast.Constant) and value.value is True:
            offenders.append(f"{path}:{node.lineno}")
    for path in SOURCES:  # defaults of functions that take the switch must be False
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                defaults += node.args.kw_defaults
                for arg, default in zip(args, defaults, strict=True):
                    if arg.arg == "trust_remote_code" and not (isinstance(default, ast.Constant) and default.value is False):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} default")
    assert not offenders, offenders


def test_archives_are_extracted_with_a_filter():
    offenders = []
    for path, node in _calls():
        if (isinstance(node.func, ast.Attribute) and node.func.attr in ("extractall", "extract")
                and _kw(node, "filter") is None):
            offenders.append(f"{path}:{node.lineno}")
    assert not offenders, offenders


def test_a_folder_with_only_pickled_weights_is_refused(tiny_llama, tmp_path):
    import shutil

    from aptops.core.errors import AptopsError
    from aptops.lm import load_causal_lm

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises((AptopsError, OSError, ValueError)) as info:
        load_causal_lm(str(folder))
    assert "safetensors" in str(info.value) or "pickled" in str(info.value)
