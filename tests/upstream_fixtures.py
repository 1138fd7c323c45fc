"""Applying a shipped ``patches/*.diff`` to a copy of the installed open_clip_train source.

Imported by the ``tests/test_integration_*.py`` modules that test an upstream-ready diff.
"""
import shutil
import subprocess
from pathlib import Path

import open_clip_train.train
import pytest

REPO = Path(__file__).resolve().parents[1]


def apply_diff(tmp_path: Path, diff_name: str, upstream_file: str) -> Path:
    """``patches/<diff_name>`` applied to a copy of open_clip_train's ``upstream_file`` under
    ``tmp_path``; returns the patched file (skips when the ``patch`` tool is missing)."""
    if shutil.which("patch") is None:
        pytest.skip("the `patch` tool is not installed")
    target = tmp_path / "open_clip_train"
    target.mkdir(exist_ok=True)
    shutil.copyfile(Path(open_clip_train.train.__file__).parent / upstream_file, target / upstream_file)
    diff = REPO / "patches" / diff_name
    result = subprocess.run(["patch", "-p1", "-i", str(diff)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return target / upstream_file
