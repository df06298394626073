"""Modelfiles from chat templates, registration over Ollama's HTTP API (stand-in), real smoke tests."""

from __future__ import annotations

import json
import shutil

import pytest

from aptops.core.errors import ConfigError, OutputExistsError, StorageError
from aptops.export import ExportConfig, create_modelfile, export_to_gguf, ollama, register_to_ollama
from aptops.export.ollama import default_system_prompt, parse_modelfile, render_template
from tests.models import write_tiny_gguf
from tests.services.ollama_standin import OllamaStandIn


@pytest.fixture(scope="module")
def smollm2_q8(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "q8"
    export_to_gguf(smollm2, output_dir=out, config=ExportConfig(quantization="Q8_0"))
    return out / "model-Q8_0.gguf"


def test_modelfile_from_the_chatml_template(smollm2, tmp_path):
    gguf = write_tiny_gguf(tmp_path / "model.gguf")
    path = create_modelfile("smollm2:135m", gguf, system_prompt="You are brief.", tokenizer_path=smollm2,
                            parameters={"temperature": 0.2, "num_ctx": 2048})
    spec = parse_modelfile(path)
    assert spec["from"] == "./model.gguf" and "<|im_start|>assistant" in spec["template"]
    assert spec["parameters"] == {"temperature": 0.2, "num_ctx": 2048, "stop": ["<|im_end|>", "<|im_start|>"]}
    assert spec["system"] == "You are brief."
    assert render_template(spec["template"], "Hi", "Be nice") == (
        "<|im_start|>system\nBe nice<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_modelfile_sends_the_system_message_the_chat_template_puts_in(smollm2, tmp_path):
    """SmolLM2's chat template puts in a system message when a conversation has none, so a model fine-tuned through
    it saw one before every answer: the Modelfile sends the same, and Ollama's prompt is the template's, exactly."""
    from transformers import AutoTokenizer

    spec = parse_modelfile(create_modelfile("m", write_tiny_gguf(tmp_path / "model.gguf"), tokenizer_path=smollm2))
    assert spec["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    expected = AutoTokenizer.from_pretrained(smollm2).apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert render_template(spec["template"], "Hi", spec["system"]) == expected
    assert default_system_prompt(smollm2) == spec["system"]


def test_modelfile_bad_inputs(smollm2, tiny_llama, tmp_path):
    gguf = write_tiny_gguf(tmp_path / "model.gguf")
    with pytest.raises(ConfigError, match="unknown Modelfile PARAMETER 'temprature'"):
        create_modelfile("m", gguf, parameters={"temprature": 0.5}, tokenizer_path=smollm2)
    with pytest.raises(ConfigError, match="outside"):
        create_modelfile("m", gguf, parameters={"top_p": 3}, tokenizer_path=smollm2)
    with pytest.raises(ConfigError, match="Ollama names"):
        create_modelfile("Bad Name", gguf, tokenizer_path=smollm2)
    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama, odd)
    cfg = json.loads((odd / "tokenizer_config.json").read_text())
    (odd / "tokenizer_config.json").write_text(json.dumps(cfg | {"chat_template": "{{ '### ' + m }}"}))
    (odd / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="none of the known formats"):
        create_modelfile("m", gguf, tokenizer_path=odd)
    with pytest.raises(ConfigError, match='contains """'):
        create_modelfile("m", gguf, system_prompt='say """ hi', tokenizer_path=smollm2)


def test_no_newline_or_non_number_reaches_a_modelfile_directive(smollm2, tmp_path):
    """Issue 25: a GGUF name with a newline wrote 'ADAPTER evil.bin' into the Modelfile; temperature='nan'
    wrote 'PARAMETER temperature nan'."""
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    for name in ("model.gguf\nADAPTER evil.bin", 'model".gguf', "my model.gguf", "-model.gguf"):
        evil = write_tiny_gguf(evil_dir / name)
        with pytest.raises(ConfigError, match="cannot go into a Modelfile FROM line"):
            create_modelfile("m", evil, tokenizer_path=smollm2)
    assert not (evil_dir / "Modelfile").exists()
    gguf = write_tiny_gguf(tmp_path / "model.gguf")
    for value in ("nan", float("nan"), "inf", float("-inf")):
        with pytest.raises(ConfigError, match="PARAMETER temperature must be a finite number"):
            create_modelfile("m", gguf, parameters={"temperature": value}, tokenizer_path=smollm2)
    with pytest.raises(ConfigError, match="PARAMETER num_ctx must be a int"):
        create_modelfile("m", gguf, parameters={"num_ctx": "4096\nADAPTER evil.bin"}, tokenizer_path=smollm2)
    path = create_modelfile("m", gguf, parameters={"temperature": "0.7", "stop": ["a\nADAPTER x"]},
                            tokenizer_path=smollm2)
    directives = [line.split(" ", 1)[0] for line in path.read_text().split("\n") if line and line[0].isupper()
                  and not line.startswith(("<", "{"))]
    assert "ADAPTER" not in directives and parse_modelfile(path)["parameters"]["stop"][0] == "a\nADAPTER x"


def test_register_needs_a_running_ollama(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "model.gguf")
    path = create_modelfile("m", gguf)
    with pytest.raises(StorageError, match=r"not reachable at http://127\.0\.0\.1:9.*OLLAMA_HOST"):
        register_to_ollama(path, "m", host="http://127.0.0.1:9")


@pytest.mark.slow
def test_register_and_smoke_test_through_ollama(smollm2, smollm2_q8, tmp_path):
    path = create_modelfile("smollm2:q8", smollm2_q8, tokenizer_path=smollm2,
                            parameters={"temperature": 0, "repeat_penalty": 1.3})
    with OllamaStandIn(tmp_path / "blobs") as server:
        info = register_to_ollama(path, "smollm2:q8", host=server.host)
        assert info["blob"] in server.state.blobs and not server.state.refused
        created = server.state.created[-1]
        assert created["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>"]
        report = ollama.test_model("smollm2:q8", ["What is the capital of France?", "Name three colours."], max_tokens=96,
                                   host=server.host)
        again = register_to_ollama(path, "smollm2:q8", host=server.host)  # the blob is not sent twice
        assert again["blob"] == info["blob"]
    assert report["passed"], report
    first = report["results"][0]
    assert "paris" in first["answer"].lower() and first["stopped"] and first["tokens_per_second"] > 0


@pytest.mark.slow
def test_smoke_test_in_process_with_llama_cpp(smollm2, smollm2_q8):
    # the module's GGUF folder already holds the Modelfile the registration test wrote, with other parameters
    path = create_modelfile("smollm2:q8", smollm2_q8, tokenizer_path=smollm2, overwrite=True)
    report = ollama.test_model("smollm2:q8", ["Name three colours."], max_tokens=40, gguf_path=smollm2_q8,
                               modelfile_path=path)
    assert report["passed"] and not report["results"][0]["empty"]


# chat templates as the model families ship them in tokenizer_config.json (BOS left to the tokenizer)
FAMILY_TEMPLATES = {
    "gemma": (
        "{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
        "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
        "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}"
        "{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' + "
        "(first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"),
    "phi3": (
        "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
        "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"),
}


@pytest.mark.parametrize("family", list(FAMILY_TEMPLATES))
def test_modelfile_renders_what_the_families_template_renders(family, tiny_llama, tmp_path):
    """Issue 22: the Ollama template written for Gemma and Phi-3 gives the same prompt text as the model's own chat
    template through transformers, with and without a system prompt."""
    from transformers import AutoTokenizer

    folder = tmp_path / family
    shutil.copytree(tiny_llama, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg | {"chat_template": FAMILY_TEMPLATES[family]}))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(folder)
    spec = parse_modelfile(create_modelfile("m", write_tiny_gguf(tmp_path / "model.gguf"), tokenizer_path=folder))
    assert default_system_prompt(folder) is None and "system" not in spec  # these templates put none in
    for system in (None, "Answer briefly."):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Hi"}]
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_template(spec["template"], "Hi", system) == expected
    assert spec["parameters"]["stop"][0] == {"gemma": "<end_of_turn>", "phi3": "<|end|>"}[family]


def test_export_ollama_leaves_an_existing_modelfile_alone_when_registration_fails(tmp_path):
    """Issue 32: `export ollama` rewrote an existing Modelfile (through a symlink too) before Ollama refused."""
    from tests.cli import aptops

    gguf = write_tiny_gguf(tmp_path / "model.gguf")
    mine = tmp_path / "Modelfile"
    mine.write_text("FROM ./model.gguf\nPARAMETER temperature 0.1\n")  # a user's own, hand-tuned
    refused = aptops("export", "ollama", str(gguf), "--name", "m", "--host", "http://127.0.0.1:9")
    assert refused.returncode != 0 and "already holds another Modelfile" in refused.stderr
    proc = aptops("export", "ollama", str(gguf), "--name", "m", "--host", "http://127.0.0.1:9", "--overwrite")
    assert proc.returncode != 0 and "not reachable" in proc.stderr + proc.stdout
    assert mine.read_text() == "FROM ./model.gguf\nPARAMETER temperature 0.1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "model.gguf"]  # no draft left
    with pytest.raises(OutputExistsError, match="already holds another Modelfile"):
        create_modelfile("m", gguf, output_path=mine)
    target = tmp_path / "precious.txt"
    target.write_text("not a Modelfile")
    mine.unlink()
    mine.symlink_to(target)
    with pytest.raises(OutputExistsError, match="is a link or a folder"):
        create_modelfile("m", gguf, overwrite=True)
    assert target.read_text() == "not a Modelfile"
