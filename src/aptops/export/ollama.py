"""Ollama: a Modelfile from the tokenizer's chat template, registration over the HTTP API, smoke tests.

``create_modelfile`` maps the chat template of the model's tokenizer to Ollama's Go template for the
known formats (ChatML: Qwen and SmolLM, Llama 3, Phi-3, Gemma, Mistral and Mixtral, Zephyr), takes the stop tokens from the same format, and
validates every PARAMETER. ``register_to_ollama`` talks to the server at ``OLLAMA_HOST``: uploads the GGUF
as a blob (the server checks its sha256), creates the model, and confirms it with ``show``.
``test_model`` sends prompts through Ollama, or straight through llama.cpp when no server is given, and
checks that answers are non-empty, stop on their own and do not loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aptops.core.artifacts import read_json
from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError, OutputExistsError, StorageError
from aptops.lm.gguf import read_gguf

log = logging.getLogger(__name__)
DEFAULT_HOST = "http://127.0.0.1:11434"

# name -> (marker in the HF chat template, Ollama template, stop tokens)
CHAT_FORMATS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "chatml": ("<|im_start|>",
               "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
               "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
               ("<|im_end|>", "<|im_start|>")),
    "llama3": ("<|start_header_id|>",
               "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
               "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
               ("<|eot_id|>", "<|start_header_id|>")),
    # Phi-3 / 3.5 (before zephyr: both have <|assistant|>, Phi-3 ends turns with <|end|>)
    "phi3": ("<|end|>",
             "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n"
             "{{ end }}<|assistant|>\n",
             ("<|end|>", "<|user|>", "<|assistant|>")),
    "zephyr": ("<|assistant|>",
               "{{ if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}</s>\n"
               "{{ end }}<|assistant|>\n",
               ("</s>", "<|user|>")),
    # Gemma 2 / 3: no system turn, the system text opens the first user turn
    "gemma": ("<start_of_turn>",
              "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
              "<start_of_turn>model\n",
              ("<end_of_turn>", "<start_of_turn>")),
    "mistral": ("[INST]", "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }} [/INST]", ("[INST]", "</s>")),
}
PARAMETERS: dict[str, tuple[type, float | None, float | None]] = {
    "temperature": (float, 0.0, 2.0), "top_p": (float, 0.0, 1.0), "top_k": (int, 0, None), "min_p": (float, 0.0, 1.0),
    "num_ctx": (int, 1, None), "num_predict": (int, -2, None), "repeat_penalty": (float, 0.0, None),
    "repeat_last_n": (int, -1, None), "seed": (int, None, None),
}


def chat_format(tokenizer_path: str | Path) -> str | None:
    """The known chat format of a tokenizer folder's chat template (``None``: it has no template)."""
    folder = Path(tokenizer_path)
    template = ""
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif (folder / "tokenizer_config.json").is_file():
        data = read_json(folder / "tokenizer_config.json")  # not JSON: an error naming the file
        template = (data.get("chat_template") if isinstance(data, dict) else "") or ""
    if not template:
        return None
    for name, (marker, _, _) in CHAT_FORMATS.items():
        if marker in template:
            return name
    raise ConfigError("the tokenizer's chat template is none of the known formats "
                      f"({', '.join(CHAT_FORMATS)}); pass template= (an Ollama Go template) explicitly",
                      field="template")


def default_system_prompt(tokenizer_path: str | Path) -> str | None:
    """The system message a tokenizer's chat template puts in when a conversation has none (SmolLM2's "You are a
    helpful AI assistant named SmolLM, trained by Hugging Face"), or ``None``.

    A model fine-tuned through that template saw it before every answer, so the Modelfile must send it too: without
    it, the demo's compressed SmolLM2 ends its turn at once on 2 of 3 prompts (the end-of-turn token is its likeliest
    first token) and answers all 3 with it. Found by rendering a conversation with a marker as its system message
    and one without any: what stands in the marker's place is the default.
    """
    transformers = require("transformers", extra="export", feature="reading a chat template")
    marker = "\x1faptops-system\x1f"
    user = [{"role": "user", "content": "Hi."}]
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_path))
        alone = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        marked = tokenizer.apply_chat_template([{"role": "system", "content": marker}, *user], tokenize=False,
                                               add_generation_prompt=True)
    except Exception as exc:  # a template that refuses system turns, or no template: no default to carry over
        log.info("no default system message read from %s's chat template: %s", tokenizer_path, exc)
        return None
    if not isinstance(alone, str) or not isinstance(marked, str) or marked.count(marker) != 1:
        return None
    head, tail = marked.split(marker)
    if alone.startswith(head) and alone.endswith(tail) and len(alone) > len(head) + len(tail):
        return alone[len(head):len(alone) - len(tail)]
    return None


def create_modelfile(model_name: str, gguf_path: str | Path, template: str | None = None,
                     system_prompt: str | None = None, parameters: Mapping[str, Any] | None = None, *,
                     tokenizer_path: str | Path | None = None, output_path: str | Path | None = None,
                     overwrite: bool = False) -> Path:
    """Write an Ollama Modelfile beside the GGUF (or at ``output_path``) and return its path.

    The file is written whole or not at all (a temp file renamed into place). An existing file of other content
    is replaced only with ``overwrite``, and a link or folder at that path never: its target is not ours to
    change.

    With a chat template read from ``tokenizer_path`` and no ``system_prompt``, the template's own default system
    message, if it has one, becomes the Modelfile's ``SYSTEM`` (:func:`default_system_prompt`).

    Raises:
        ConfigError: a name, template or parameter Ollama would refuse.
        OutputExistsError: something else is at the path (see above).
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*(:[A-Za-z0-9._-]+)?", model_name):
        raise ConfigError(f"model name {model_name!r}: Ollama names are lower-case letters, digits, '.', '_', '-' "
                          "with an optional ':tag'", field="model_name", value=model_name)
    gguf = Path(gguf_path)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", gguf.name):
        # the name goes into the FROM line: a newline, a quote or a space would end it and start another directive
        raise ConfigError(f"GGUF file name {gguf.name!r} cannot go into a Modelfile FROM line: use letters, digits, "
                          "'.', '_', '+' and '-' only (rename the file)", field="gguf_path", value=gguf.name)
    read_gguf(gguf)  # exists and parses: Ollama would only say so at create time
    stops: tuple[str, ...] = ()
    if template is None:
        fmt = chat_format(tokenizer_path) if tokenizer_path else None
        if fmt is None:
            template = "{{ .Prompt }}"  # a completion model: the prompt as is
        else:
            _, template, stops = CHAT_FORMATS[fmt]
            if system_prompt is None and tokenizer_path:  # what the model was trained to see before each answer
                system_prompt = default_system_prompt(tokenizer_path)
    lines = [f"FROM ./{gguf.name}", f'TEMPLATE """{_triple_safe(template, "template")}"""']
    if system_prompt:
        lines.append(f'SYSTEM """{_triple_safe(system_prompt, "system_prompt")}"""')
    for name, value in (parameters or {}).items():
        if name == "stop":
            stops = tuple(value) if isinstance(value, list | tuple) else (str(value),)
            continue
        lines.append(f"PARAMETER {name} {_check_parameter(name, value)}")
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    path = Path(output_path) if output_path else gguf.with_name("Modelfile")
    text = "\n".join(lines) + "\n"
    check_modelfile_target(path, text, overwrite=overwrite)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # newline="": a template's own line endings (\r\n in some chat formats) are written as they are
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_modelfile_target(path: str | Path, text: str, *, overwrite: bool = False) -> None:
    """Raise unless a Modelfile holding ``text`` may be written at ``path``: nothing there, the same text, or
    (with ``overwrite``) another Modelfile; never a link or a folder.

    Raises:
        OutputExistsError: what is there and what to do.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputExistsError(f"{str(path)!r} is a link or a folder, not a Modelfile aptops may write; remove it "
                                "or choose another output_path", path=str(path))
    if path.is_file() and not overwrite and path.read_text(encoding="utf-8", errors="replace") != text:
        raise OutputExistsError(f"{str(path)!r} already holds another Modelfile; pass overwrite (--overwrite) to "
                                "replace it, or choose another output_path", path=str(path))


def _triple_safe(text: str, what: str) -> str:
    if '"""' in text:
        raise ConfigError(f'{what} contains """, which ends a Modelfile block; remove it', field=what)
    if text.endswith('"'):  # '""""' would close the block one quote early and leave a stray quote
        raise ConfigError(f'{what} ends with a double quote, which a Modelfile """ block cannot hold; end it with '
                          "a space or a newline", field=what)
    return text


def _check_parameter(name: str, value: Any) -> str:
    if name not in PARAMETERS:
        raise ConfigError(f"unknown Modelfile PARAMETER {name!r}; known: {sorted([*PARAMETERS, 'stop'])}",
                          field=f"parameters.{name}", value=value)
    kind, low, high = PARAMETERS[name]
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"PARAMETER {name} must be a {kind.__name__}, got {value!r}", field=f"parameters.{name}",
                          value=value) from None
    if not math.isfinite(number):
        raise ConfigError(f"PARAMETER {name} must be a finite number, got {value!r}", field=f"parameters.{name}",
                          value=value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ConfigError(f"PARAMETER {name}={number} is outside [{low}, {high if high is not None else '∞'}]",
                          field=f"parameters.{name}", value=value)
    return str(number)


def parse_modelfile(path: str | Path) -> dict[str, Any]:
    """FROM, TEMPLATE, SYSTEM and PARAMETER lines of a Modelfile (the subset :func:`create_modelfile` writes)."""
    with Path(path).open(encoding="utf-8", newline="") as fh:  # keep \r inside TEMPLATE / SYSTEM bodies
        text = fh.read()
    out: dict[str, Any] = {"parameters": {}}
    for key, body in re.findall(r'^(TEMPLATE|SYSTEM) """(.*?)"""', text, re.S | re.M):
        out[key.lower()] = body
    for line in text.split("\n"):
        if line.startswith("FROM "):
            out["from"] = line[5:].strip()
        elif line.startswith("PARAMETER "):
            _, name, value = line.split(" ", 2)
            value = json.loads(value) if name == "stop" else value
            if name == "stop":
                out["parameters"].setdefault("stop", []).append(value)
            else:
                kind = PARAMETERS.get(name, (str, None, None))[0]
                out["parameters"][name] = kind(value)
    if "from" not in out:
        raise InvalidArtifactError(f"{path} has no FROM line")
    return out


def _host(host: str | None) -> str:
    value = host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
    return (value if "://" in value else f"http://{value}").rstrip("/")


def _call(method: str, url: str, *, json_body: Any = None, data: Any = None, timeout: float = 600) -> Any:
    requests = require("requests", extra="export", feature="talking to Ollama")
    try:
        return requests.request(method, url, json=json_body, data=data, timeout=timeout)
    except requests.ConnectionError:
        base = url.split("/api/")[0]
        raise StorageError(f"Ollama is not reachable at {base}: start it (`ollama serve`) or set OLLAMA_HOST to "
                           "where it runs", uri=base) from None


def register_to_ollama(modelfile_path: str | Path, model_name: str, *, host: str | None = None) -> dict[str, Any]:
    """Upload the Modelfile's GGUF as a blob, create ``model_name`` from it, and confirm with ``show``."""
    base = _host(host)
    version = _call("GET", f"{base}/api/version", timeout=10)
    if version.status_code != 200:
        raise StorageError(f"{base} answered {version.status_code} to /api/version: is that an Ollama server?")
    spec = parse_modelfile(modelfile_path)
    gguf = (Path(modelfile_path).parent / spec["from"]).resolve()
    if not gguf.is_file():
        raise InvalidArtifactError(f"the Modelfile's FROM {spec['from']!r} is not a file next to it", path=str(gguf))
    digest = hashlib.sha256()
    with gguf.open("rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            digest.update(chunk)
    blob = f"sha256:{digest.hexdigest()}"
    if _call("HEAD", f"{base}/api/blobs/{blob}", timeout=30).status_code != 200:
        with gguf.open("rb") as fh:
            up = _call("POST", f"{base}/api/blobs/{blob}", data=fh)
        if up.status_code not in (200, 201):
            raise StorageError(f"Ollama refused the GGUF blob ({up.status_code}): {up.text[:200]}")
    body = {"model": model_name, "files": {gguf.name: blob}, "stream": False,
            "template": spec.get("template"), "parameters": spec["parameters"]}
    if spec.get("system"):
        body["system"] = spec["system"]
    created = _call("POST", f"{base}/api/create", json_body=body)
    if created.status_code != 200 or created.json().get("status") != "success":
        raise StorageError(f"Ollama could not create {model_name} ({created.status_code}): {created.text[:300]}")
    shown = _call("POST", f"{base}/api/show", json_body={"model": model_name}, timeout=30)
    if shown.status_code != 200:
        raise StorageError(f"{model_name} was created but Ollama cannot show it ({shown.status_code})")
    return {"model": model_name, "blob": blob, "host": base, "version": version.json().get("version"),
            "details": shown.json().get("details", {})}


def _loops(text: str, n: int = 4) -> bool:
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) >= 8 and len(set(grams)) / len(grams) < 0.5


def test_model(model_name: str, test_prompts: Sequence[str], max_tokens: int = 64, *, host: str | None = None,
               gguf_path: str | Path | None = None, modelfile_path: str | Path | None = None) -> dict[str, Any]:
    """Send each prompt through Ollama (``host``) or, with ``gguf_path``, straight through llama.cpp.

    Each answer is checked: non-empty, stopped by the model rather than by ``max_tokens`` (reported, not
    failed: a short budget cuts long answers), and not looping (repeated 4-grams). Reports tokens/s and
    time to first token.
    """
    if not test_prompts:
        raise ConfigError("no test prompts given", field="test_prompts")
    results = []
    llm = None
    if gguf_path is not None:
        require("llama_cpp", extra="export", feature="testing a GGUF")
        read_gguf(gguf_path)
        from aptops.lm.llamacpp import open_llama

        llm = open_llama(gguf_path, n_ctx=2048, seed=0)
        spec = parse_modelfile(modelfile_path) if modelfile_path else {"template": "{{ .Prompt }}", "parameters": {}}
    try:
        for prompt in test_prompts:
            start = time.perf_counter()
            if llm is not None:
                text_in = render_template(spec.get("template") or "{{ .Prompt }}", prompt, spec.get("system"))
                params = spec["parameters"]
                out = llm.create_completion(text_in, max_tokens=max_tokens, temperature=0.0,
                                            repeat_penalty=float(params.get("repeat_penalty", 1.1)),
                                            stop=params.get("stop") or None)
                choice = out["choices"][0]
                answer, reason, n_out = choice["text"], choice["finish_reason"], out["usage"]["completion_tokens"]
                seconds = time.perf_counter() - start
                ttft = None
            else:
                resp = _call("POST", f"{_host(host)}/api/generate", json_body={
                    "model": model_name, "prompt": prompt, "stream": False,
                    "options": {"num_predict": max_tokens, "temperature": 0}})
                if resp.status_code != 200:
                    raise StorageError(f"Ollama could not run {model_name} ({resp.status_code}): {resp.text[:200]}")
                body = resp.json()
                answer, reason, n_out = body.get("response", ""), body.get("done_reason", "stop"), body.get("eval_count", 0)
                seconds = body.get("eval_duration", 0) / 1e9 or time.perf_counter() - start
                ttft = (body.get("load_duration", 0) + body.get("prompt_eval_duration", 0)) / 1e9
            results.append({"prompt": prompt, "answer": answer, "tokens": n_out, "stopped": reason == "stop",
                            "empty": not answer.strip(), "loops": _loops(answer),
                            "tokens_per_second": n_out / seconds if seconds > 0 else 0.0,
                            "time_to_first_token_s": ttft})
    finally:
        if llm is not None:
            llm.close()
    ok = all(not r["empty"] and not r["loops"] for r in results)
    return {"model": model_name, "passed": ok, "results": results,
            "tokens_per_second": sum(r["tokens_per_second"] for r in results) / len(results)}


def render_template(template: str, prompt: str, system: str | None = None) -> str:
    """Render the subset of Ollama's Go templates that :data:`CHAT_FORMATS` uses (``if`` blocks, fields)."""
    values = {"Prompt": prompt, "System": system or "", "Response": ""}

    def block(match: re.Match[str]) -> str:
        return match.group(2) if values.get(match.group(1)) else ""

    text = re.sub(r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}", block, template, flags=re.S)
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values.get(m.group(1), ""), text)


test_model.__test__ = False  # a library function, not a pytest test, wherever it is imported
