"""open_clip_c2lip.integration.run_lock: one process at a time holds a run folder; a dead holder (however
it died) never blocks; forked children do not keep the lock; file systems without flock only warn."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from open_clip_c2lip.integration import run_lock

REPO = Path(__file__).resolve().parents[1]

_HOLDER = r"""
import os, sys, time
from open_clip_c2lip.integration import run_lock
folder, ready, mode = sys.argv[1:4]
run_lock.acquire(folder)
if mode == "fork":  # a DataLoader-like child outlives its parent
    if os.fork() == 0:
        time.sleep(15)
        os._exit(0)
open(ready, "w").close()
if mode == "fork":
    os._exit(0)
time.sleep(600)
"""


def _start_holder(folder: Path, ready: Path, mode: str = "hold") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(ready), mode], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None or mode == "fork", proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.02)
    return proc


@pytest.fixture
def release_after(tmp_path):
    folders = []
    yield folders.append
    for folder in folders:
        run_lock.release(str(folder))


def test_second_process_is_refused_with_the_holders_details(tmp_path, release_after):
    folder = tmp_path / "logs" / "run"
    holder = _start_holder(folder, tmp_path / "ready")
    try:
        with pytest.raises(run_lock.RunFolderBusy) as busy:
            run_lock.acquire(str(folder))
        message = str(busy.value)
        assert f"run folder {folder} is in use by another training: pid {holder.pid} on " in message and ", started " in message
        assert "-c" in message and "pass another --name" in message
        assert (folder / run_lock.LOCK_NAME).read_text().startswith(f"pid {holder.pid} on ")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the dead holder's flock: the next run takes the folder over
    release_after(folder)
    assert run_lock.acquire(str(folder)) == str(folder / run_lock.LOCK_NAME)
    assert (folder / run_lock.LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
    # idempotent within the process
    assert run_lock.acquire(str(folder)) == str(folder / run_lock.LOCK_NAME)


def test_a_forked_child_does_not_keep_the_lock(tmp_path, release_after):
    """The holder forks a child (as DataLoader workers are) and exits: its lock is gone although the
    child, which inherited the descriptor, still runs."""
    folder = tmp_path / "run"
    holder = _start_holder(folder, tmp_path / "ready", mode="fork")
    assert holder.wait(timeout=60) == 0
    release_after(folder)
    run_lock.acquire(str(folder))


def test_lock_released_in_process(tmp_path):
    folder = tmp_path / "run"
    run_lock.acquire(str(folder))
    run_lock.release(str(folder))
    holder = _start_holder(folder, tmp_path / "ready")  # another process can take it now
    holder.kill()
    holder.wait()


def test_file_system_without_flock_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    with caplog.at_level("WARNING"):
        assert run_lock.acquire(str(tmp_path / "run")) is None
    assert "does not support flock" in caplog.text and str(tmp_path / "run") in caplog.text


# ------------------------------------------------------------------------------------------ upstream-ready diffs

_PATCHED_MAIN_RUNNER = r"""
import runpy, sys
assert "open_clip_c2lip" not in sys.modules
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_patched_main(tmp_path, main_path, logs, name, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPEN_CLIP_C2LIP_DISABLE="1", PYTHONUNBUFFERED="1")
    args = ["--logs", str(logs), "--name", name, "--model", "RN50", "--dataset-type", "synthetic",
            "--device", "cpu", "--report-to", "none", *extra]
    return subprocess.run([sys.executable, "-c", _PATCHED_MAIN_RUNNER, str(main_path), *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))


def test_lock_diff_interoperates_with_the_plugins_lock(tmp_path):
    """``lock_run_folder`` of the patched upstream main.py and ``run_lock`` take the same lock file:
    each refuses while the other holds it (even within one process: flock locks belong to open files)."""
    from patch_fixtures import apply_diffs, import_file

    patched = import_file(apply_diffs(tmp_path / "src", "open_clip_train", "main.py", "open_clip_train-run-lock.diff"),
                          "open_clip_train_main_lock_diff")
    folder = tmp_path / "logs" / "run"
    run_lock.acquire(str(folder))
    try:
        message = patched.lock_run_folder(str(folder))
        assert message.startswith(f"Experiment {folder} is in use by another run (") and "pid" in message
    finally:
        run_lock.release(str(folder))
    assert patched.lock_run_folder(str(folder)) is None
    with pytest.raises(run_lock.RunFolderBusy, match=rf"pid {os.getpid()} on "):
        run_lock.acquire(str(folder))


@pytest.mark.parametrize("with_exit_diff", [False, True])
def test_lock_diff_stops_a_second_run(tmp_path, with_exit_diff):
    """The patched upstream main (plugin off) into a folder another process holds: it refuses before
    writing anything; its exit status is 1 once the exit-status diff is applied too."""
    from patch_fixtures import apply_diffs

    diffs = ["open_clip_train-run-lock.diff"] + (["open_clip_train-exit-status.diff"] if with_exit_diff else [])
    main_path = apply_diffs(tmp_path / "src", "open_clip_train", "main.py", *diffs)
    folder = tmp_path / "logs" / "run"
    holder = _start_holder(folder, tmp_path / "ready")
    try:
        result = _run_patched_main(tmp_path, main_path, tmp_path / "logs", "run", "--resume", "latest")
    finally:
        holder.kill()
        holder.wait()
    assert f"Error. Experiment {folder} is in use by another run (pid {holder.pid} on" in result.stdout, result.stderr[-3000:]
    assert result.returncode == (1 if with_exit_diff else 0)
    assert sorted(p.name for p in folder.iterdir()) == [run_lock.LOCK_NAME]  # no out.log, params.txt, checkpoints


@pytest.mark.parametrize("with_exit_diff", [False, True])
def test_exit_diff_makes_an_existing_experiment_fail(tmp_path, with_exit_diff):
    from patch_fixtures import apply_diffs

    diffs = ["open_clip_train-exit-status.diff"] if with_exit_diff else []
    main_path = apply_diffs(tmp_path / "src", "open_clip_train", "main.py", *diffs)
    (tmp_path / "logs" / "run").mkdir(parents=True)
    (tmp_path / "logs" / "run" / "out.log").write_text("an earlier run\n")
    result = _run_patched_main(tmp_path, main_path, tmp_path / "logs", "run")
    assert "Error. Experiment already exists." in result.stdout, result.stderr[-3000:]
    assert result.returncode == (1 if with_exit_diff else 0)
