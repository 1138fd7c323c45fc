"""scripts/gpu_check.sh: its --tiny CPU mode runs the whole check and writes the report tables
(the GPU numbers themselves come only from a run on a GPU)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHON=sys.executable)


def _table(text: str, first_header: str):
    """Rows (lists of cells) of the markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))))
    return rows


@pytest.mark.slow
def test_tiny_mode_writes_the_report(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([BASH, str(SCRIPT), "--tiny", str(out)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "gpu_check.md").read_text()
    assert "--tiny CPU smoke run" in report and "not a benchmark" in report
    steps = {row["variant"]: row for row in _table(report, "variant")}
    assert set(steps) == {"siglip", "c2lip-text", "c2lip-span"}
    for row in steps.values():
        assert float(row["wall (ms, median)"]) > 0 and float(row["images/s (wall)"]) > 0
        assert float(row["peak RSS (MiB)"]) > 0
        assert re.fullmatch(r"\d+\.\d\d-\d+\.\d\dx", row["vs siglip per round (min-max, CPU time)"])
    assert steps["siglip"]["vs siglip (CPU time)"] == "1.00x"
    assert "precision amp_bf16" in report and "batch 4" in report
    methods = {row["method"] for row in _table(report, "N")}
    assert {"closed_form", "loop", "matmul_bound"} <= methods
    assert "Failed parts" not in report


def test_gpu_mode_without_cuda_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the real check would run")
    proc = subprocess.run([BASH, str(SCRIPT), str(tmp_path / "check")], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--tiny" in proc.stderr
    assert not (tmp_path / "check" / "gpu_check.md").exists()
