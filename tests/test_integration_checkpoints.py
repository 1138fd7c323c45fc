"""open_clip_c2lip.integration.checkpoints: a save interrupted at any point leaves no file that
``--resume latest`` takes, and the resume choice is the newest complete checkpoint, every skipped file
named with its reason. (The same through real training runs: test_integration_train_main.py.)"""
import argparse
import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import open_clip_c2lip  # noqa: F401  (hooks, as in training)
from open_clip_c2lip.fileio.atomic import PARTIAL_SUFFIX
from open_clip_c2lip.integration import checkpoints
from open_clip_c2lip.integration.checkpoints import (CheckpointSaveError, UnreadableCheckpointError,
                                                      inspect_checkpoint, save_checkpoint, select_resume_checkpoint)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def training_checkpoint(epoch: int, size: int = 20000) -> dict:
    """An open_clip_train-style checkpoint whose weights encode ``epoch``."""
    generator = torch.Generator().manual_seed(epoch)
    weight = torch.randn(size, generator=generator)
    return {"epoch": epoch, "name": "run", "state_dict": {"module.w": weight, "module.logit_scale": torch.tensor(2.3)},
            "optimizer": {"state": {0: {"step": torch.tensor(float(epoch)), "exp_avg": weight * 0.1}},
                          "param_groups": [{"lr": 1e-3, "params": [0]}]}}


def loaded_epoch(path) -> int:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(checkpoint["state_dict"]["module.w"], training_checkpoint(checkpoint["epoch"])["state_dict"]["module.w"])
    return checkpoint["epoch"]


def folder_names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ saving

def test_save_writes_the_same_checkpoint_as_torch_save_and_nothing_else(tmp_path):
    save_checkpoint(training_checkpoint(3), tmp_path / "epoch_3.pt")
    torch.save(training_checkpoint(3), tmp_path / "upstream.pt")
    ours, upstream = (torch.load(tmp_path / n, weights_only=True) for n in ("epoch_3.pt", "upstream.pt"))
    assert ours.keys() == upstream.keys() and ours["epoch"] == 3
    assert all(torch.equal(ours["state_dict"][k], upstream["state_dict"][k]) for k in upstream["state_dict"])
    assert folder_names(tmp_path) == ["epoch_3.pt", "upstream.pt"]


class _FullDisk(io.RawIOBase):
    """A writable file that fails with ENOSPC once ``limit`` bytes are written (a full disk)."""

    def __init__(self, raw, limit: int):
        self.raw, self.limit, self.written = raw, limit, 0

    def writable(self):
        return True

    def write(self, data):
        if self.written + len(data) > self.limit:
            room = self.limit - self.written
            self.raw.write(bytes(data[:room]))
            self.written = self.limit
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.raw.write(data)

    def flush(self):
        self.raw.flush()

    def fileno(self):
        return self.raw.fileno()


def _fault(kind: str, real_save):
    """A ``torch.save`` replacement that fails at one point of writing the checkpoint."""
    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        if kind == "before_writing":
            raise RuntimeError("interrupted before the first byte")
        if kind == "full_disk":  # the real torch.save into a file whose write fails half-way
            return real_save(obj, _FullDisk(f, len(data) // 2))
        if kind == "signal_mid_write":
            f.write(data[: len(data) // 3])
            raise KeyboardInterrupt  # what Python raises for SIGINT; a SIGTERM handler would raise too
        if kind == "silently_truncated":  # a writer that returns without error after half the bytes
            f.write(data[: len(data) // 2])
            return None
        if kind == "one_byte_short":
            f.write(data[:-1])
            return None
        raise AssertionError(kind)
    return save


@pytest.mark.parametrize("kind", ["before_writing", "full_disk", "signal_mid_write", "silently_truncated",
                                  "one_byte_short", "fsync_fails", "rename_fails"])
def test_an_interrupted_save_keeps_the_previous_checkpoint_and_leaves_nothing(tmp_path, monkeypatch, kind):
    """Epoch 1 saved; epoch 2's save into a new file and into the existing ``epoch_latest.pt`` (as
    ``--save-most-recent``) fails at one point each: the folder holds exactly what it held before,
    byte for byte, and the resume choice is still epoch 1."""
    save_checkpoint(training_checkpoint(1), tmp_path / "epoch_1.pt")
    save_checkpoint(training_checkpoint(1), tmp_path / "epoch_latest.pt")
    before = {name: (tmp_path / name).read_bytes() for name in folder_names(tmp_path)}
    real_save = torch.save
    if kind == "fsync_fails":
        def failing_fsync(fd):
            raise OSError(errno.EIO, "Input/output error")
        monkeypatch.setattr(checkpoints.os, "fsync", failing_fsync)
    elif kind == "rename_fails":
        def failing_replace(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr("open_clip_c2lip.fileio.atomic.os.replace", failing_replace)
    else:
        monkeypatch.setattr(torch, "save", _fault(kind, real_save))
    expected = KeyboardInterrupt if kind == "signal_mid_write" else CheckpointSaveError
    for target in ("epoch_2.pt", "epoch_latest.pt"):
        with pytest.raises(expected) as raised:
            save_checkpoint(training_checkpoint(2), tmp_path / target)
        if expected is CheckpointSaveError:
            message = str(raised.value)
            assert str(tmp_path / target) in message and "nothing was written there" in message
            if kind == "full_disk":
                assert raised.value.errno == errno.ENOSPC and "no space left on device" in message
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in folder_names(tmp_path)} == before
    selection = select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path)), folder=str(tmp_path))
    assert selection.epoch == 1 and not selection.skipped and not selection.leftovers


_KILLED_WRITER = r"""
import io, sys, time, torch
from open_clip_c2lip.integration.checkpoints import save_checkpoint
target, ready = sys.argv[1:3]
real_save = torch.save
def stalled_save(obj, f, *args, **kwargs):  # half the bytes, flushed to the file, then wait for the kill
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[: buffer.tell() // 2])
    f.flush()
    open(ready, "w").close()
    time.sleep(600)
torch.save = stalled_save
save_checkpoint({"epoch": 2, "name": "run", "state_dict": {"w": torch.randn(100000)}}, target)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_save_leaves_only_a_reported_partial(tmp_path, sig):
    """SIGKILL / SIGTERM (Python's default: die at once, no cleanup) while the file is half written:
    ``epoch_2.pt`` never exists; the partial stays under its own name (not ``*.pt``), and the resume
    choice reports it as the leftover of an interrupted save."""
    save_checkpoint(training_checkpoint(1), tmp_path / "epoch_1.pt")
    ready = tmp_path.parent / f"{tmp_path.name}.ready"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "epoch_2.pt"), str(ready)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the writer did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == -sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    names = folder_names(tmp_path)
    partials = [n for n in names if n.endswith(PARTIAL_SUFFIX)]
    assert len(partials) == 1 and partials[0].startswith(".epoch_2.pt.") and set(names) == {"epoch_1.pt", partials[0]}
    selection = select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path)), folder=str(tmp_path))
    assert selection.epoch == 1 and not selection.skipped
    (leftover, size, live), = selection.leftovers
    assert leftover == str(tmp_path / partials[0]) and size > 0 and not live


# ------------------------------------------------------------------------------------------ resume choice

def _first_tensor_offset(archive: io.BytesIO) -> int:
    """Offset of the first tensor's bytes in a torch zip archive (after its local header)."""
    import struct
    import zipfile

    with zipfile.ZipFile(archive) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    header = archive.getvalue()[info.header_offset:info.header_offset + 30]
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _write_folder(folder: Path) -> dict:
    """Complete epochs 1-2 (+ epoch_latest = 2), and upstream's leftovers of interrupted saves."""
    folder.mkdir(exist_ok=True)
    for epoch in (1, 2):
        torch.save(training_checkpoint(epoch), folder / f"epoch_{epoch}.pt")
    torch.save(training_checkpoint(2), folder / "epoch_latest.pt")
    full = io.BytesIO()
    torch.save(training_checkpoint(5), full)
    data = full.getvalue()
    damaged = {
        "epoch_3.pt": b"",                         # SIGTERM right after open(): 0 bytes
        "epoch_4.pt": data[: len(data) * 4 // 5],  # full disk: truncated
        "epoch_5.pt": data[:-1],                   # one byte short
        "epoch_6.pt": data[:3],                    # inside the zip magic
        "tmp.pt": data[: len(data) // 2],          # --save-most-recent's partial tmp.pt
    }
    corrupt = bytearray(data)
    corrupt[_first_tensor_offset(full) + 100] ^= 0xFF  # a flipped bit pattern inside the weights: loads, wrong numbers
    damaged["epoch_7.pt"] = bytes(corrupt)
    damaged["epoch_8.pt"] = b"version https://git-lfs.github.com/spec/v1\n"  # a Git LFS pointer
    for name, content in damaged.items():
        (folder / name).write_bytes(content)
    torch.save({"w": torch.ones(3)}, folder / "model_only.pt")
    return damaged


def test_resume_skips_every_damaged_file_and_names_why(tmp_path):
    _write_folder(tmp_path)
    selection = select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path)), folder=str(tmp_path))
    assert selection.path == str(tmp_path / "epoch_latest.pt") and selection.epoch == 2  # epoch 2, upstream's name order
    assert loaded_epoch(selection.path) == 2
    reasons = {Path(s.path).name: s.problem for s in selection.skipped}
    assert sorted(reasons) == ["epoch_3.pt", "epoch_4.pt", "epoch_5.pt", "epoch_6.pt", "epoch_7.pt", "epoch_8.pt",
                               "model_only.pt", "tmp.pt"]
    for name, problem in reasons.items():
        assert problem.startswith(str(tmp_path / name)), problem
    assert "empty (0 bytes)" in reasons["epoch_3.pt"]
    for name in ("epoch_4.pt", "epoch_5.pt", "epoch_6.pt", "tmp.pt"):
        assert "truncated" in reasons[name], reasons[name]
    assert "fails the CRC check" in reasons["epoch_7.pt"]
    assert "not a PyTorch checkpoint" in reasons["epoch_8.pt"]
    assert "no 'epoch' entry" in reasons["model_only.pt"]


def test_upstream_picks_a_damaged_file(tmp_path):
    """What the hook replaces: open_clip_train 3.3.0 takes the last ``*.pt`` by name (here the partial
    ``tmp.pt``), whatever its state."""
    import open_clip_train.main

    _write_folder(tmp_path)
    upstream = open_clip_train.main.get_latest_checkpoint
    upstream = getattr(upstream, "__wrapped__", upstream)
    assert Path(upstream(str(tmp_path), remote=False)).name == "tmp.pt"


def test_newest_is_by_stored_epoch_and_a_complete_tmp_counts(tmp_path):
    """A run killed between writing ``tmp.pt`` and renaming it leaves a complete, newest checkpoint;
    ``epoch_10.pt`` is newer than ``epoch_9.pt`` (numbers, not strings)."""
    for epoch in (9, 10):
        torch.save(training_checkpoint(epoch), tmp_path / f"epoch_{epoch}.pt")
    torch.save(training_checkpoint(10), tmp_path / "epoch_latest.pt")
    selection = select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path)))
    assert Path(selection.path).name == "epoch_latest.pt" and selection.epoch == 10
    torch.save(training_checkpoint(11), tmp_path / "tmp.pt")
    assert Path(select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path))).path).name == "tmp.pt"
    (tmp_path / "epoch_latest.pt").unlink()
    (tmp_path / "tmp.pt").unlink()
    assert Path(select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path))).path).name == "epoch_10.pt"


def test_no_complete_checkpoint_and_no_checkpoint(tmp_path):
    empty = select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path / "missing")))
    assert empty.path is None and not empty.skipped
    (tmp_path / "epoch_1.pt").write_bytes(b"")
    selection = select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path)))
    assert selection.path is None and len(selection.skipped) == 1


def test_whole_but_unreadable_checkpoint_stops_the_resume(tmp_path):
    """A whole archive holding objects ``weights_only`` refuses is not damage: skipping it would let
    training from an older checkpoint overwrite it."""
    torch.save(training_checkpoint(1), tmp_path / "epoch_1.pt")
    torch.save({**training_checkpoint(2), "args": argparse.Namespace(lr=1.0)}, tmp_path / "epoch_2.pt")
    with pytest.raises(UnreadableCheckpointError, match=r"epoch_2\.pt is a whole checkpoint file .* cannot be read") as raised:
        select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path)))
    assert raised.value.path == str(tmp_path / "epoch_2.pt")


def test_inspect_reads_no_tensor_data(tmp_path, monkeypatch):
    """The cheap pass memory-maps zip checkpoints; only the chosen file is read in full (CRC check)."""
    torch.save(training_checkpoint(1, size=2_000_000), tmp_path / "epoch_1.pt")
    torch.save(training_checkpoint(2, size=2_000_000), tmp_path / "epoch_2.pt")
    checked = []
    real_damage = checkpoints._damage
    monkeypatch.setattr(checkpoints, "_damage", lambda path: checked.append(path) or real_damage(path))
    found = inspect_checkpoint(str(tmp_path / "epoch_1.pt"))
    assert found.epoch == 1 and found.problem is None and checked == []
    select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path)))
    assert checked == [str(tmp_path / "epoch_2.pt")]


def test_selection_log_names_each_file(tmp_path, caplog):
    _write_folder(tmp_path)
    (tmp_path / f".epoch_9.pt.0123abcd{PARTIAL_SUFFIX}").write_bytes(b"PK\x03\x04half")
    selection = select_resume_checkpoint(checkpoints.checkpoint_candidates(str(tmp_path)), folder=str(tmp_path))
    with caplog.at_level("INFO"):
        selection.log()
    text = caplog.text
    for skipped in selection.skipped:
        assert skipped.problem in text
    assert f".epoch_9.pt.0123abcd{PARTIAL_SUFFIX} (8 bytes) is the leftover of a save that was interrupted" in text
    assert f"newest complete checkpoint is {tmp_path / 'epoch_latest.pt'} (epoch 2)" in text


# ------------------------------------------------------------------------------------------ upstream-ready diff

ATOMIC_DIFF = "open_clip_train-atomic-checkpoints.diff"


@pytest.fixture
def patched_main(tmp_path):
    from patch_fixtures import apply_diffs, import_file

    return import_file(apply_diffs(tmp_path / "src", "open_clip_train", "main.py", ATOMIC_DIFF),
                       "open_clip_train_main_atomic_diff")


def test_atomic_diff_resume_choice(tmp_path, patched_main, caplog):
    """The patched upstream ``get_latest_checkpoint`` alone (no plugin code) skips the same files."""
    folder = tmp_path / "checkpoints"
    _write_folder(folder)
    with caplog.at_level("WARNING"):
        assert patched_main.get_latest_checkpoint(str(folder), remote=False) == str(folder / "epoch_latest.pt")
    for name in ("epoch_3.pt", "epoch_4.pt", "epoch_5.pt", "epoch_6.pt", "epoch_7.pt", "epoch_8.pt", "tmp.pt",
                 "model_only.pt"):
        assert f"Not resuming from {folder / name}: " in caplog.text, name
    (folder / "epoch_9.pt").write_bytes(b"")
    torch.save({**training_checkpoint(3), "args": argparse.Namespace()}, folder / "epoch_10.pt")
    with pytest.raises(RuntimeError, match=r"epoch_10\.pt is complete but cannot be loaded"):
        patched_main.get_latest_checkpoint(str(folder), remote=False)


@pytest.mark.parametrize("kind", ["before_writing", "full_disk", "signal_mid_write"])
def test_atomic_diff_save_leaves_nothing_when_interrupted(tmp_path, patched_main, monkeypatch, kind):
    tmp_path = tmp_path / "checkpoints"
    tmp_path.mkdir()
    patched_main.save_checkpoint(training_checkpoint(1), str(tmp_path / "epoch_latest.pt"))
    before = (tmp_path / "epoch_latest.pt").read_bytes()
    monkeypatch.setattr(torch, "save", _fault(kind, torch.save))
    for name in ("epoch_2.pt", "epoch_latest.pt"):
        with pytest.raises((RuntimeError, OSError, KeyboardInterrupt)):
            patched_main.save_checkpoint(training_checkpoint(2), str(tmp_path / name))
    monkeypatch.undo()
    assert folder_names(tmp_path) == ["epoch_latest.pt"] and (tmp_path / "epoch_latest.pt").read_bytes() == before
    patched_main.save_checkpoint(training_checkpoint(2), str(tmp_path / "epoch_2.pt"))
    assert loaded_epoch(tmp_path / "epoch_2.pt") == 2 and folder_names(tmp_path) == ["epoch_2.pt", "epoch_latest.pt"]


_PATCHED_MAIN_RUNNER = r"""
import runpy, sys
import open_clip
assert "open_clip_c2lip" not in sys.modules
open_clip.add_model_config(sys.argv[1])  # C2LIP-Tiny is no builtin of plain open_clip
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_atomic_diff_main_resumes_past_damaged_files(tmp_path):
    """The patched main.py, run as a script with the plugin off (SigLIP, synthetic data): after 2 epochs
    with --save-most-recent, what upstream's in-place saves leave (truncated epoch_3.pt, 0-byte epoch_4.pt,
    partial tmp.pt) is skipped by ``--resume latest`` and the run finishes epoch 3."""
    from patch_fixtures import apply_diffs

    main_path = apply_diffs(tmp_path / "src", "open_clip_train", "main.py", ATOMIC_DIFF)
    logs = tmp_path / "logs"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPEN_CLIP_C2LIP_DISABLE="1", PYTHONUNBUFFERED="1")

    def run(epochs, *extra):
        args = ["--logs", str(logs), "--name", "run", "--model", "C2LIP-Tiny", "--siglip", "--dataset-type",
                "synthetic", "--train-num-samples", "8", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                "--precision", "fp32", "--epochs", str(epochs), "--save-frequency", "1", "--save-most-recent",
                "--report-to", "none", "--lr", "1e-3", "--warmup", "0", "--seed", "0", *extra]
        return subprocess.run([sys.executable, "-c", _PATCHED_MAIN_RUNNER, str(REPO / "open_clip_c2lip" / "model_configs"
                                                                             / "C2LIP-Tiny.json"), str(main_path), *args],
                              env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))

    first = run(2)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = logs / "run" / "checkpoints"
    assert folder_names(folder) == ["epoch_1.pt", "epoch_2.pt", "epoch_latest.pt"]  # no tmp.pt any more
    data = (folder / "epoch_2.pt").read_bytes()
    (folder / "epoch_3.pt").write_bytes(data[: len(data) * 4 // 5])
    (folder / "epoch_4.pt").write_bytes(b"")
    (folder / "tmp.pt").write_bytes(data[: len(data) // 2])
    second = run(3, "--resume", "latest")
    assert second.returncode == 0, second.stderr[-3000:]
    log = (logs / "run" / "out.log").read_text()
    for name in ("epoch_3.pt", "epoch_4.pt", "tmp.pt"):
        assert f"Not resuming from {folder / name}: " in log, name
    assert f"=> resuming checkpoint '{folder / 'epoch_latest.pt'}' (epoch 2)" in log
    assert torch.load(folder / "epoch_3.pt", weights_only=True)["epoch"] == 3
