"""The layer contracts of pyproject.toml ([tool.importlinter]) hold."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO_ROOT


def test_import_layers_are_kept():
    script = shutil.which("lint-imports")
    if script is None:
        pytest.fail("lint-imports is missing: install the test extras (pip install -e '.[test]')")
    done = subprocess.run(
        [script, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
