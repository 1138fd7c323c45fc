"""``python -m open_clip_c2lip.train``: argv handling, and a real 2-process torchrun (gloo, CPU)
without the activation .pth, which also exercises the CPU-DDP fix."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import open_clip_c2lip  # noqa: F401
from open_clip_c2lip import train

REPO = Path(__file__).resolve().parents[1]


def test_argv_passes_through_and_leading_double_dash_is_dropped(monkeypatch):
    import open_clip_train.main

    calls = []
    monkeypatch.setattr(open_clip_train.main, "main", lambda argv: calls.append(argv) or 7)
    assert train.main(["--", "--logs", "x", "--", "y"]) == 7
    assert train.main(["--model", "C2LIP-Tiny"]) == 7
    monkeypatch.setattr(sys, "argv", ["train.py", "--", "--siglip"])
    train.main()
    assert calls == [["--logs", "x", "--", "y"], ["--model", "C2LIP-Tiny"], ["--siglip"]]


@pytest.mark.slow
def test_torchrun_two_process_cpu_ddp_without_activation_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "RANK", "WORLD_SIZE"))}
    # the .pth activation is off: only the explicit entry point installs the hooks
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), OPEN_CLIP_C2LIP_DISABLE="1",
               TORCH_CPP_LOG_LEVEL="ERROR")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "open_clip_c2lip.train", "--",  # `--` keeps torchrun from reading --logs as --logs-specs
        "--logs", str(tmp_path), "--name", "ddp", "--model", "C2LIP-Tiny", "--siglip",
        "--dataset-type", "synthetic", "--train-num-samples", "16", "--batch-size", "4",
        "--epochs", "1", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--lr", "1e-3",
        "--warmup", "1", "--log-every-n-steps", "1", "--seed", "0",
    ]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    log = (tmp_path / "ddp" / "out.log").read_text()
    assert "Running in distributed mode with multiple processes" in log and "total 2" in log
    assert log.count("Contrastive_loss") == 2  # 16 samples / (2 ranks x 4) steps
    assert "C2LIP: active" not in log  # no --c2lip-loss: plain SigLIP training
    assert (tmp_path / "ddp" / "checkpoints" / "epoch_1.pt").is_file()
