"""Install llama.cpp's own Hugging Face -> GGUF converter, of the llama.cpp version aptops' quantizer is built from.

The export stage converts the architectures of its table itself; any other text architecture goes through llama.cpp's
``convert_hf_to_gguf.py`` (with its ``conversion`` package and its own ``gguf-py``), then through aptops' verification
and quant gate. The converter is taken from the llama-cpp-python source distribution pinned in
``requirements/lock.txt`` (its SHA-256 checked against the lock), so converter, quantizer and runtime are one llama.cpp.

Usage: ``python scripts/llama_cpp_converter.py [DEST]`` (default ``<venv>/share/llama.cpp``, where the export stage
looks first). ``make setup`` and the export image run it; it does nothing when DEST already holds that version.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def locked(lock: Path) -> tuple[str, set[str]]:
    """The locked llama-cpp-python version and its allowed SHA-256 hashes."""
    text = lock.read_text(encoding="utf-8")
    m = re.search(r"^llama-cpp-python==(\S+)((?:\s*\\\s*--hash=sha256:[0-9a-f]+)+)", text, re.M)
    if not m:
        raise SystemExit(f"{lock} pins no llama-cpp-python with hashes")
    return m.group(1), set(re.findall(r"sha256:([0-9a-f]+)", m.group(2)))


def install(dest: Path, lock: Path = ROOT / "requirements" / "lock.txt") -> Path:
    version, hashes = locked(lock)
    stamp = dest / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == version:
        return dest
    with tempfile.TemporaryDirectory(prefix="llama-cpp-src-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest not in hashes:
            raise SystemExit(f"{sdist.name} has SHA-256 {digest}, not the lock's {sorted(hashes)}: not installed")
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        staging = Path(tmp) / "out"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(KEEP) and (m.isfile() or m.isdir())]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise SystemExit(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
        (staging / "VERSION").write_text(version + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)
    return dest


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.prefix) / "share" / "llama.cpp"
    print(f"llama.cpp's converter: {install(target)}")
