"""open_clip_c2lip.demo.runs: the open_clip_train command, log parsing and a failing run."""
import os
import sys

from open_clip_c2lip.demo.runs import RunSpec, parse_train_log

import pytest

# The exact f-string of open_clip_train.train.train_one_epoch, filled in.
_LOG_LINE = ("2025-01-01,00:00:00 | INFO | Train Epoch: {epoch} [{seen:>4}/1280 ({pct:.0f}%)] Data (t): 0.001 "
             "Batch (t): 0.250, 256.000/s, 256.000/s/gpu LR: {lr:5f} Logit Scale: {scale:.3f} "
             "Contrastive_loss: {con:#.5g} (6.0000) Npc_loss: {npc:#.5g} (3.0000) Xac_loss: 0.012000 (0.012000) "
             "Loss: {total:#.5g} (9.0000)")


def test_parse_train_log_reads_open_clip_lines():
    lines = ["2025 | INFO | Start epoch 0"]
    expected = []
    for epoch in range(2):
        for batch in (1, 10, 20):
            step = epoch * 20 + batch
            values = dict(con=7.0 - step * 0.01, npc=3.0 - step * 0.001, lr=1e-3 * step / 40, scale=10 + step / 10)
            values["total"] = values["con"] + values["npc"] + 0.012
            lines.append(_LOG_LINE.format(epoch=epoch, seen=batch * 64, pct=batch * 5, **values))
            expected.append((step, values))
    log = parse_train_log(lines, batch_size=64, steps_per_epoch=20)
    assert log.steps == [step for step, _ in expected]
    assert log.losses["contrastive_loss"] == pytest.approx([v["con"] for _, v in expected], abs=1e-4)
    assert log.losses["npc_loss"] == pytest.approx([v["npc"] for _, v in expected], abs=1e-5)
    assert log.losses["loss"] == pytest.approx([v["total"] for _, v in expected], abs=1e-4)
    assert log.lr == pytest.approx([v["lr"] for _, v in expected], abs=1e-6)
    assert log.logit_scale == pytest.approx([v["scale"] for _, v in expected], abs=1e-3)


def test_progress_reads_a_growing_log_incrementally(tmp_path):
    from tqdm import tqdm
    from open_clip_c2lip.demo.runs import _Progress
    log = tmp_path / "run.console.log"
    line = _LOG_LINE.format(epoch=0, seen=640, pct=50, con=5.0, npc=1.0, lr=1e-3, scale=10.0, total=6.0)
    bar = tqdm(total=20, disable=False, file=open(os.devnull, "w"))
    progress = _Progress(bar, log, batch_size=64, steps_per_epoch=20)
    progress.update()  # no file yet
    assert bar.n == 0
    log.write_text("starting\n" + line[:40])  # a line still being written is not parsed
    progress.update()
    assert bar.n == 0
    with open(log, "a") as f:
        f.write(line[40:] + "\n")
    progress.update()
    assert bar.n == 10
    with open(log, "a") as f:
        f.write(line.replace(" 640/1280", "1280/1280") + "\n")
    progress.update()
    assert bar.n == 20 and progress.offset == log.stat().st_size


def test_run_steps_follow_open_clip_rounding():
    spec = RunSpec("x", ["--siglip"], "a.tar", train_num_samples=1000, batch_size=64, lr=1e-3, warmup=1, seed=0)
    assert spec.steps == 16  # ceil(1000 / 64)
    spec.workers = 3
    assert spec.steps == 18  # rounded up to a multiple of workers
    assert spec.command("logs")[:3] == [sys.executable, "-m", "open_clip_c2lip.train"]


def test_failed_training_run_raises_with_its_log(tmp_path):
    from open_clip_c2lip.demo.runs import train
    spec = RunSpec("broken", ["--siglip"], "missing.tar", train_num_samples=8, batch_size=4, lr=1e-3, warmup=1,
                   seed=0, extra_args=["--no-such-flag"])
    with pytest.raises(RuntimeError, match=r"(?s)'broken' failed.*no-such-flag"):
        train(spec, str(tmp_path), progress=False)
