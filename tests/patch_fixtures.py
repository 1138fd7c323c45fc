"""Upstream-ready diffs under test: apply one (or several, in order) to a copy of the installed upstream file."""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def apply_diffs(tmp_path: Path, package: str, filename: str, *diff_names: str) -> Path:
    """Copy ``<installed package>/<filename>`` to ``tmp_path/<package>/`` and ``patch -p1`` each diff of
    ``patches/`` onto it; returns the patched file. Skips when the ``patch`` tool is missing."""
    if shutil.which("patch") is None:
        pytest.skip("the `patch` tool is not installed")
    source = Path(importlib.util.find_spec(package).origin).parent / filename
    target = tmp_path / package / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    for name in diff_names:
        result = subprocess.run(["patch", "-p1", "-i", str(REPO / "patches" / name)], cwd=tmp_path,
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    return target


def import_file(path: Path, module_name: str):
    """Import a patched copy under its own module name (the installed module stays untouched)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
