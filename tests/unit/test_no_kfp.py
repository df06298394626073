"""The library never depends on the orchestrator: every module imports with kfp unimportable."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "aptops", "aptops.cli", "aptops.stages", "aptops.core.errors", "aptops.core.config", "aptops.core.artifacts",
    "aptops.core.locations", "aptops.core.metrics", "aptops.core.logging", "aptops.core.runtime",
    "aptops.core.assets", "aptops.plugins", "aptops.data", "aptops.data.io",
]


def test_library_imports_without_kfp():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'kfp' or name.startswith('kfp.'):\n"
        "            raise ImportError('kfp is blocked for this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib\n"
        f"for m in {MODULES!r}:\n"
        "    importlib.import_module(m)\n"
        "from aptops.stages import STAGES\n"
        "for s in STAGES:\n"
        "    importlib.import_module(s.module)\n"
        "assert 'kfp' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_cli_without_kfp_explains_what_to_install():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'kfp' or name.startswith('kfp.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['aptops', 'compile', '--out', '/tmp/never']\n"
        "from aptops.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "pip install 'aptops[kfp]'" in proc.stderr
