"""open_clip_c2lip.integration.train_main through real ``python -m open_clip_train.main`` runs (CPU, fp32,
C2LIP-Tiny, ``--seed 0``): interrupted saves, requeues, two runs into one folder, refused runs' exit
status, C2LIP settings in checkpoints. Plus the drift checks of the upstream code the hook relies on.

Every training run trains 3 epochs of 2 steps on the same 8-row CSV (synthetic captions and images).
Requeued runs must end *bit-identical* to the uninterrupted reference: the data order is a function of
seed and epoch (``open_clip_c2lip.integration.data_order``), ``--aug-cfg scale='(1.0, 1.0)'`` on square images
makes the random crop the whole image, and ``--workers 0`` single-threaded CPU kernels are
deterministic, so a resume from epoch k's checkpoint (weights + AdamW state) redoes exactly the same
steps. Faults are injected into the child process by a ``sitecustomize`` that replaces ``torch.save``
for one checkpoint name: ``pause`` (half the bytes written, then wait to be killed) or ``enospc`` (the
real ``torch.save`` into a file whose ``write`` fails with "No space left on device" half-way).
"""
import inspect
import json
import os
import re
import signal
import site
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import open_clip_c2lip  # noqa: F401  (hooks, as in training)
from open_clip_c2lip.fileio.atomic import PARTIAL_SUFFIX
from open_clip_c2lip.integration import run_lock, train_main

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"
RUN_TIMEOUT = 300
EPOCHS = 3

_SITECUSTOMIZE = r'''
import os, site
if os.environ.get("C2LIP_TEST_PATCHES_SITE"):  # the plugin's .pth, when it is not installed in this env
    site.addsitedir(os.environ["C2LIP_TEST_PATCHES_SITE"])
_spec = os.environ.get("C2LIP_TEST_SAVE_FAULT")
if _spec:
    import errno, io, time, torch
    _mode, _target, _nth = _spec.split(":")  # e.g. "enospc:tmp.pt:2": the 2nd save of tmp.pt fails
    _seen = [0]
    _real_save = torch.save

    class _FullDisk(io.RawIOBase):
        def __init__(self, raw, limit):
            self.raw, self.limit, self.written = raw, limit, 0
        def writable(self):
            return True
        def write(self, data):
            if self.written + len(data) > self.limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.raw.write(data)
        def flush(self):
            self.raw.flush()

    def _faulty_save(obj, f, *args, **kwargs):
        name = os.path.basename(os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", ""))
        if name != _target and not name.startswith("." + _target + "."):  # plain path / atomic partial
            return _real_save(obj, f, *args, **kwargs)
        _seen[0] += 1
        if _seen[0] != int(_nth):
            return _real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        _real_save(obj, buffer)
        data = buffer.getvalue()
        out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        if _mode == "enospc":
            return _real_save(obj, _FullDisk(out, len(data) // 2))
        out.write(data[: len(data) // 2])
        out.flush()
        open(os.environ["C2LIP_TEST_SAVE_READY"], "w").close()
        time.sleep(600)

    torch.save = _faulty_save
'''


# ------------------------------------------------------------------------------------------ harness

def build_csv(root: Path) -> Path:
    """8 synthetic square images, captions of two colour-object phrases, those phrases as concepts."""
    import pandas as pd
    from PIL import Image

    colours = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink"]
    things = ["dog", "ball", "cat", "car", "hat", "cup", "lamp", "chair"]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        first, second = f"a {colours[i]} {things[i]}", f"a {colours[(i + 3) % 8]} {things[(i + 5) % 8]}"
        path = root / f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.NEAREST).save(path, quality=95)
        rows.append({"filepath": str(path), "title": f"{first} next to {second}", "concepts": json.dumps([first, second])})
    table = root / "train.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def child_env(root: Path, plugin: bool = True, fault: str = None, ready: Path = None) -> dict:
    shim = root / "sitecustomize_dir"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join([str(shim), str(REPO)]))
    for key in ("OPEN_CLIP_C2LIP_DISABLE", "C2LIP_TEST_SAVE_FAULT", "C2LIP_TEST_SAVE_READY", "C2LIP_TEST_PATCHES_SITE"):
        env.pop(key, None)
    if not plugin:
        env["OPEN_CLIP_C2LIP_DISABLE"] = "1"
    elif not any((Path(p) / "open_clip_c2lip.pth").is_file() for p in site.getsitepackages()):
        env["C2LIP_TEST_PATCHES_SITE"] = str(REPO / "patches")
    if fault:
        env["C2LIP_TEST_SAVE_FAULT"] = fault
        env["C2LIP_TEST_SAVE_READY"] = str(ready)
    return env


def train_args(table: Path, logs: Path, name: str, *extra) -> list:
    return ["--logs", str(logs), "--name", name, "--model", "C2LIP-Tiny", "--c2lip-loss", "--device", "cpu",
            "--seed", "0", "--report-to", "none", "--warmup", "0", "--lr-scheduler", "const", "--lr", "1e-3",
            "--save-frequency", "1", "--train-data", str(table), "--dataset-type", "csv", "--csv-separator", ",",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--c2lip-concepts-key", "concepts",
            "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--aug-cfg", "scale=(1.0, 1.0)",
            "--epochs", str(EPOCHS), *extra]


class Proc:
    """A child process, output in a file."""

    started = []

    def __init__(self, root: Path, label: str, argv: list, env: dict):
        self.label, self.log = label, root / f"{label}.out"
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT, cwd=str(root))
        self.pid = self.proc.pid
        Proc.started.append(self)

    @classmethod
    def train(cls, root, label, args, module="open_clip_train.main", **env_kwargs):
        return cls(root, label, [sys.executable, "-m", module, *args], child_env(root, **env_kwargs))

    def wait(self, timeout=RUN_TIMEOUT) -> "Proc":
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._out.close()
        self.returncode, self.output = self.proc.returncode, self.log.read_text()
        return self

    def ok(self) -> "Proc":
        self.wait()
        assert self.returncode == 0, f"{self.label}: exit {self.returncode}\n{self.output[-5000:]}"
        return self

    @classmethod
    def kill_all(cls):
        for proc in cls.started:
            if proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait()
        cls.started.clear()


def wait_for(path: Path, proc: Proc, timeout=RUN_TIMEOUT):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.proc.poll() is None, f"{proc.label} ended before {path.name}:\n{proc.log.read_text()[-5000:]}"
        assert time.time() < deadline, f"{proc.label}: no {path.name} after {timeout} s"
        time.sleep(0.05)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bit_identical(a: Path, b: Path):
    ca, cb = load(a), load(b)
    assert ca["epoch"] == cb["epoch"] == EPOCHS
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    different = [k for k in ca["state_dict"] if not torch.equal(ca["state_dict"][k], cb["state_dict"][k])]
    assert not different, f"{b} differs from {a} in {len(different)} tensors, e.g. {different[:3]}"
    state_a, state_b = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[i][k], state_b[i][k]) for i in state_a for k in state_a[i])


def checkpoint_names(folder: Path) -> list:
    return sorted(p.name for p in (folder / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------------ runs

def upstream_leftovers(reference: Path, folder: Path) -> dict:
    """The run folder open_clip_train 3.3.0 leaves when killed or out of disk space while saving (it
    writes ``epoch_N.pt`` and ``tmp.pt`` in place): complete ``epoch_1.pt`` (the reference's), a
    truncated ``epoch_2.pt`` (80 %, as the issue's 69.7 of 87.5 MB), a 0-byte ``epoch_3.pt``, a
    partial ``tmp.pt``. Upstream's own ``--resume latest`` takes ``tmp.pt`` (the last name)."""
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "epoch_1.pt").write_bytes((reference / "epoch_1.pt").read_bytes())
    epoch_2 = (reference / "epoch_2.pt").read_bytes()
    (checkpoints / "epoch_2.pt").write_bytes(epoch_2[: len(epoch_2) * 4 // 5])
    (checkpoints / "epoch_3.pt").write_bytes(b"")
    (checkpoints / "tmp.pt").write_bytes(epoch_2[: len(epoch_2) // 2])
    return {p.name: p.stat().st_size for p in checkpoints.iterdir()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_main")
    table = build_csv(root)
    logs = root / "logs"
    found = {"root": root, "logs": logs, "table": table}
    try:
        # phase 1: the reference; a run killed while saving epoch 2; a full disk while --save-most-recent
        # writes tmp.pt of epoch 2
        reference = Proc.train(root, "reference", train_args(table, logs, "reference", "--save-most-recent"))
        killed = Proc.train(root, "killed", train_args(table, logs, "killed", "--resume", "latest"),
                            fault="pause:epoch_2.pt:1", ready=root / "killed.ready")
        full = Proc.train(root, "full_disk", train_args(table, logs, "full", "--save-most-recent", "--resume", "latest"),
                          fault="enospc:tmp.pt:2")
        wait_for(root / "killed.ready", killed)
        # a second training into the folder the paused run holds, as a requeue would (--resume latest),
        # and one without --resume
        log_size = (logs / "killed" / "out.log").stat().st_size
        found["intruder"] = Proc.train(root, "intruder", train_args(table, logs, "killed", "--resume", "latest")).wait()
        found["intruder_new"] = Proc.train(root, "intruder_new", train_args(table, logs, "killed")).wait()
        found["killed_log_unchanged"] = (logs / "killed" / "out.log").stat().st_size == log_size
        found["killed_pid"] = killed.pid
        killed.proc.send_signal(signal.SIGKILL)
        killed.wait()
        found["killed_checkpoints"] = checkpoint_names(logs / "killed")
        found["full_disk"] = full.wait()
        found["full_checkpoints"] = checkpoint_names(logs / "full")
        found["reference"] = reference.ok()
        found["upstream_checkpoints"] = upstream_leftovers(logs / "reference" / "checkpoints", logs / "upstream")

        # phase 2: requeues (the same commands)
        requeue = Proc.train(root, "requeue", train_args(table, logs, "killed", "--resume", "latest"))
        upstream_requeue = Proc.train(root, "upstream_requeue", train_args(table, logs, "upstream", "--resume", "latest"))
        full_requeue = Proc.train(root, "full_requeue",
                                  train_args(table, logs, "full", "--save-most-recent", "--resume", "latest"))
        found["requeue"], found["upstream_requeue"], found["full_requeue"] = (
            requeue.ok(), upstream_requeue.ok(), full_requeue.ok())
    finally:
        Proc.kill_all()
    return found


@pytest.mark.slow
def test_killed_save_then_requeue_ends_equal_to_uninterrupted(runs):
    """SIGKILL while epoch_2.pt is half written: no epoch_2.pt, only the partial; the requeue resumes
    from epoch 1, reports the partial, and ends bit-identical to the uninterrupted run."""
    names = runs["killed_checkpoints"]
    partials = [n for n in names if n.endswith(PARTIAL_SUFFIX)]
    assert [n for n in names if not n.endswith(PARTIAL_SUFFIX)] == ["epoch_1.pt"] and len(partials) == 1
    log = runs["requeue"].output
    assert f"{partials[0]} " in log and "is the leftover of a save that was interrupted" in log
    assert "=> resuming checkpoint" in log and "checkpoints/epoch_1.pt' (epoch 1)" in log
    logs = runs["logs"]
    assert_bit_identical(logs / "reference" / "checkpoints" / "epoch_3.pt", logs / "killed" / "checkpoints" / "epoch_3.pt")


@pytest.mark.slow
def test_upstream_truncated_checkpoint_is_skipped_and_requeue_ends_equal(runs):
    """The issue's cases: what upstream's in-place saves leave (truncated epoch_2.pt, 0-byte epoch_3.pt,
    partial tmp.pt); the requeue names each, resumes from epoch 1 and ends bit-identical to the
    uninterrupted run, its own complete epoch_2.pt / epoch_3.pt replacing the damaged ones."""
    assert sorted(runs["upstream_checkpoints"]) == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt", "tmp.pt"]
    log = runs["upstream_requeue"].output
    for name, fault in (("epoch_2.pt", "is truncated"), ("epoch_3.pt", r"is empty \(0 bytes\)"), ("tmp.pt", "is truncated")):
        assert re.search(rf"resume: not usable: \S+/upstream/checkpoints/{re.escape(name)} {fault}", log), (name, log[-3000:])
    assert "checkpoints/epoch_1.pt' (epoch 1)" in log
    logs = runs["logs"]
    assert_bit_identical(logs / "reference" / "checkpoints" / "epoch_3.pt", logs / "upstream" / "checkpoints" / "epoch_3.pt")


@pytest.mark.slow
def test_full_disk_stops_the_run_and_the_requeue_ends_equal(runs):
    """ENOSPC half-way through tmp.pt of epoch 2 (--save-most-recent): the run fails (non-zero) naming
    the file and the full disk, leaves no tmp.pt or partial; ``epoch_latest.pt`` is still epoch 1 but
    epoch_2.pt is complete and newer, so the requeue resumes from epoch_2.pt and ends bit-identical."""
    full = runs["full_disk"]
    assert full.returncode != 0
    assert re.search(r"could not save checkpoint \S+/full/checkpoints/tmp\.pt \(no space left on device\)", full.output)
    assert runs["full_checkpoints"] == ["epoch_1.pt", "epoch_2.pt", "epoch_latest.pt"]
    log = runs["full_requeue"].output
    assert "newest complete checkpoint is" in log and "checkpoints/epoch_2.pt' (epoch 2)" in log
    logs = runs["logs"]
    assert_bit_identical(logs / "reference" / "checkpoints" / "epoch_3.pt", logs / "full" / "checkpoints" / "epoch_3.pt")
    assert_bit_identical(logs / "reference" / "checkpoints" / "epoch_latest.pt", logs / "full" / "checkpoints" / "epoch_latest.pt")


@pytest.mark.slow
def test_second_run_into_a_held_folder_is_refused(runs):
    """While the first run holds the folder: a requeue-like second run and one without --resume both
    exit with status 1 and one error line naming the holder, before writing anything."""
    for key in ("intruder", "intruder_new"):
        proc = runs[key]
        assert proc.returncode == 1, (key, proc.output[-3000:])
        assert re.search(rf"error: run folder \S+/killed is in use by another training: pid {runs['killed_pid']} on \S+, started ",
                         proc.output), proc.output[-3000:]
        assert "Traceback" not in proc.output
    assert runs["killed_log_unchanged"]


@pytest.mark.slow
def test_checkpoints_record_the_c2lip_settings(runs):
    """The reference run used every default --c2lip-* value: its checkpoints (read with weights_only=True)
    record exactly those, besides upstream's entries."""
    from open_clip_c2lip.integration import runtime

    for name in ("epoch_1.pt", "epoch_3.pt", "epoch_latest.pt"):
        checkpoint = load(runs["logs"] / "reference" / "checkpoints" / name)
        assert set(checkpoint) == {"epoch", "name", "state_dict", "optimizer", "c2lip"}
        assert checkpoint["c2lip"] == {"plugin_version": open_clip_c2lip.__version__,
                                       "config": runtime.C2LIPConfig().to_dict()}


_PLAIN_LOAD = r"""
import sys, torch, open_clip
assert "open_clip_c2lip" not in sys.modules
config, checkpoint = sys.argv[1:3]
raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
open_clip.add_model_config(config)
model = open_clip.create_model("C2LIP-Tiny", pretrained=checkpoint)
from clip_benchmark.models import load_clip
bench_model, _, _ = load_clip("open_clip", "C2LIP-Tiny", checkpoint, cache_dir=None, device="cpu")
same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), bench_model.state_dict().values()))
print("RESULT", sorted(raw), raw["c2lip"]["config"]["npc_weight"], float(model.logit_bias), same)
"""


@pytest.mark.slow
def test_checkpoint_with_settings_is_drop_in_for_plain_open_clip_and_clip_benchmark(runs):
    """With the plugin off: torch.load(weights_only=True), open_clip.create_model(pretrained=...) (strict)
    and clip_benchmark's loader all take the checkpoint with its "c2lip" entry."""
    pytest.importorskip("clip_benchmark")
    checkpoint = runs["logs"] / "reference" / "checkpoints" / "epoch_3.pt"
    proc = Proc(runs["root"], "plain_load", [sys.executable, "-c", _PLAIN_LOAD, str(TINY_CONFIG), str(checkpoint)],
                child_env(runs["root"], plugin=False)).ok()
    line = next(line for line in proc.output.splitlines() if line.startswith("RESULT"))
    expected_bias = float(load(checkpoint)["state_dict"]["logit_bias"])
    assert line == (f"RESULT ['c2lip', 'epoch', 'name', 'optimizer', 'state_dict'] 1.0 {expected_bias} True")


@pytest.mark.slow
def test_resume_with_other_settings_warns_naming_each(runs):
    """Resuming the finished reference run (nothing left to train) with two other --c2lip-* values, and
    without --c2lip-loss: each difference is named."""
    root, logs, table = runs["root"], runs["logs"], runs["table"]
    checkpoint = str(logs / "reference" / "checkpoints" / "epoch_3.pt")
    changed = Proc.train(root, "changed", train_args(table, logs, "changed", "--resume", checkpoint,
                                                     "--c2lip-npc-weight", "0.5", "--c2lip-concept-mode", "span"))
    plain_args = [a for a in train_args(table, logs, "plain", "--resume", checkpoint)
                  if a not in ("--c2lip-loss", "--c2lip-concepts-key", "concepts")] + ["--siglip"]
    plain = Proc.train(root, "plain", plain_args)
    changed, plain = changed.ok(), plain.ok()
    assert (f"WARNING | resuming {checkpoint} with other C2LIP settings than it was trained with: "
            f"--c2lip-npc-weight: checkpoint 1.0, this run 0.5; --c2lip-concept-mode: checkpoint 'text', "
            f"this run 'span'") in changed.output
    assert f"WARNING | {checkpoint} was trained with --c2lip-loss (--c2lip-npc-weight 1.0," in plain.output
    assert "this run continues it without --c2lip-loss" in plain.output


@pytest.mark.slow
def test_existing_experiment_exits_non_zero(runs):
    """A finished run's folder, started again without --resume: status 1 and one error line, through both
    entry points; upstream alone (plugin off) prints its refusal and exits 0."""
    root, logs, table = runs["root"], runs["logs"], runs["table"]
    upstream = [a for a in train_args(table, logs, "reference") if not a.startswith("--c2lip")
                and a != "concepts"] + ["--model", "RN50"]
    procs = {  # one after the other: run at once, all but one would find the folder locked by another
        "main": Proc.train(root, "exists_main", train_args(table, logs, "reference")).wait(),
        "c2lip_train": Proc.train(root, "exists_c2lip", train_args(table, logs, "reference"),
                                  module="open_clip_c2lip.train").wait(),
        "upstream": Proc.train(root, "exists_upstream", upstream, plugin=False).wait(),
    }
    for label in ("main", "c2lip_train"):
        proc = procs[label]
        assert proc.returncode == 1, (label, proc.output[-3000:])
        assert re.search(r"error: experiment \S+/reference already exists \(it has \S+/out\.log\); pass another "
                         r"--name, or --resume latest to continue it", proc.output), proc.output[-3000:]
    assert procs["upstream"].returncode == 0 and "Experiment already exists" in procs["upstream"].output


# ------------------------------------------------------------------------------------------ DDP

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_ranks_all_stop_when_the_folder_is_held_or_exists(tmp_path):
    """2-process torchrun (gloo, CPU): when rank 0 finds the folder locked (here by this test process)
    or an existing experiment, every rank exits non-zero promptly: none waits in a collective."""
    table = build_csv(tmp_path)
    logs = tmp_path / "logs"
    env = child_env(tmp_path)
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    launcher = Path(sys.executable).with_name("torchrun")
    launcher = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "torch.distributed.run"]

    def torchrun(label, name, *extra):
        argv = launcher + ["--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), "-m", "open_clip_train.main", "--",
                           *train_args(table, logs, name, "--dist-backend", "gloo", *extra)]
        return Proc(tmp_path, label, argv, env)

    held = logs / "held"
    run_lock.acquire(str(held))
    try:
        (logs / "exists").mkdir(parents=True)
        (logs / "exists" / "out.log").write_text("an earlier run\n")
        started = time.time()
        procs = [torchrun("ddp_held", "held", "--resume", "latest"), torchrun("ddp_exists", "exists")]
        for proc in procs:
            proc.wait(timeout=240)
        elapsed = time.time() - started
    finally:
        run_lock.release(str(held))
        Proc.kill_all()
    held_run, exists_run = procs
    assert held_run.returncode != 0 and exists_run.returncode != 0, (held_run.output[-3000:], exists_run.output[-3000:])
    assert re.search(rf"error: run folder {re.escape(str(held))} is in use by another training: pid {os.getpid()}",
                     held_run.output), held_run.output[-3000:]
    assert re.search(r"error: experiment \S+/exists already exists", exists_run.output), exists_run.output[-3000:]
    assert elapsed < 200  # no rank waited for a collective timeout
    assert not (held / "out.log").exists() and (logs / "exists" / "out.log").read_text() == "an earlier run\n"


# ------------------------------------------------------------------------------------------ upstream drift

def _main_source() -> str:
    import open_clip_train.main

    return inspect.getsource(open_clip_train.main)


def test_upstream_main_calls_what_the_hook_replaces_in_this_order():
    """The hook replaces main.py globals that ``main()`` looks up when it calls them; this fails when
    open_clip_train changes those calls (then the hook must be ported)."""
    import open_clip_train.main as upstream

    source = inspect.getsource(upstream.main)
    order = [
        "args = parse_args(args)",
        "device = init_distributed_device(args)",
        "if args.name is None:",
        "resume_latest = args.resume == 'latest'",
        "if os.path.exists(args.log_path) and not resume_latest:",
        "resume_from = os.path.join(checkpoint_path, LATEST_CHECKPOINT_NAME)",
        "resume_from = get_latest_checkpoint(checkpoint_path, remote=args.remote_sync is not None)",
        "resume_from = broadcast_object(args, resume_from)",
        "model, preprocess_train, preprocess_val = create_model_and_transforms(",
        "checkpoint = pt_load(args.resume, map_location='cpu')",
        "model.load_state_dict(sd)",
        "torch.save(\n                    checkpoint_dict,\n                    os.path.join(args.checkpoint_path, f\"epoch_{completed_epoch}.pt\"),",
        "torch.save(checkpoint_dict, tmp_save_path)",
        "os.replace(tmp_save_path, latest_save_path)",
    ]
    positions = [source.find(fragment) for fragment in order]
    assert all(p >= 0 for p in positions), [f for f, p in zip(order, positions) if p < 0]
    assert positions == sorted(positions)
    assert source.count("torch.save(") == 2  # main saves nothing else through torch.save
    # the name main.py gives a run without --name: default_run_name copies these lines
    for line in ["model_name_safe = args.model.replace('/', '-')",
                 'date_str = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")', "date_str = broadcast_object(args, date_str)",
                 "f\"model_{model_name_safe}\",", "f\"lr_{args.lr}\",", "f\"b_{args.batch_size}\",",
                 "f\"j_{args.workers}\",", "f\"p_{args.precision}\","]:
        assert line in source, line
    assert "log_filename = f'out-{args.rank}' if args.log_local else 'out.log'" in source
    assert upstream.LATEST_CHECKPOINT_NAME == train_main.LATEST_CHECKPOINT_NAME


def test_upstream_signatures_the_wrappers_take():
    import open_clip_train.distributed as distributed
    import open_clip_train.file_utils as file_utils
    import open_clip_train.main as upstream
    import open_clip_train.params as params

    def signature(function):
        return str(inspect.signature(getattr(function, "__wrapped__", function)))

    assert signature(upstream.get_latest_checkpoint) == "(path: str, remote: bool)"
    assert signature(file_utils.pt_load) == "(file_path, map_location=None)"
    assert signature(distributed.init_distributed_device) == "(args)"
    assert signature(params.parse_args) == "(args)"
    assert signature(distributed.is_master) == "(args, local=False)"
    assert signature(distributed.all_gather_object) == "(args, obj, dst=0)"
    assert signature(distributed.broadcast_object) == "(args, obj, src=0)"


def test_default_run_name_matches_upstream_format():
    import argparse

    args = argparse.Namespace(model="hf-hub:org/Model", lr=0.001, batch_size=4, workers=2, precision="amp", distributed=False)
    name = train_main.default_run_name(args)
    assert re.fullmatch(r"\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d-model_hf-hub:org-Model-lr_0.001-b_4-j_2-p_amp", name), name


def test_patch_is_idempotent_and_torch_proxy_delegates():
    import types

    import open_clip_train.main as upstream

    train_main.patch_train_main(upstream)
    first = {name: getattr(upstream, name) for name in
             ("torch", "get_latest_checkpoint", "pt_load", "init_distributed_device", "parse_args",
              "create_model_and_transforms")}
    train_main.patch_train_main(upstream)
    assert {name: getattr(upstream, name) for name in first} == first
    assert isinstance(upstream.torch, train_main.TorchForMain) and isinstance(upstream.torch, types.ModuleType)
    for name in ("get_latest_checkpoint", "pt_load", "init_distributed_device", "parse_args",
                 "create_model_and_transforms"):
        function = getattr(upstream, name)
        assert getattr(function, train_main.WRAPPED) and not getattr(function.__wrapped__, train_main.WRAPPED, False)
    assert upstream.torch.nn is torch.nn and upstream.torch.distributed is torch.distributed
    assert upstream.torch.load is torch.load and upstream.torch.save != torch.save


def test_disabled_plugin_leaves_main_untouched(tmp_path):
    probe = ("import open_clip_train.main as m, open_clip_train.params as p; "
             "print(type(m.torch).__name__, hasattr(m.get_latest_checkpoint, '__wrapped__'), "
             "hasattr(p.parse_args, '__wrapped__'))")
    env = child_env(tmp_path, plugin=False)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["module", "False", "False"], out.stderr


def test_c2lip_train_entry_point_exits_non_zero_when_upstream_refuses(tmp_path):
    """``python -m open_clip_c2lip.train`` turns upstream main's -1 (here: --remote-sync with --resume latest
    and --save-most-recent, which upstream refuses after the run folder checks) into exit status 1."""
    table = tmp_path / "unused.csv"
    args = train_args(table, tmp_path / "logs", "refused", "--resume", "latest", "--save-most-recent",
                      "--remote-sync", str(tmp_path / "remote"))
    proc = Proc.train(tmp_path, "refused", args, module="open_clip_c2lip.train").wait()
    assert proc.returncode == 1, proc.output[-3000:]
    assert "Error. Cannot use save-most-recent with remote_sync and resume latest." in proc.output


# ------------------------------------------------------------------------------------- --resume PATH faults

@pytest.fixture()
def resume_run(monkeypatch):
    """A C2LIP-Tiny model as main() built it, and ``_Run`` as ``init_distributed_device`` sets it."""
    import argparse
    import weakref

    import open_clip

    model = open_clip.create_model("C2LIP-Tiny")
    args = argparse.Namespace(model="C2LIP-Tiny", rank=0, save_most_recent=False, remote_sync=None, distributed=False)
    monkeypatch.setattr(train_main._Run, "args", args)
    monkeypatch.setattr(train_main._Run, "resume_latest", False)
    monkeypatch.setattr(train_main._Run, "model", weakref.ref(model))
    return model


def _load_with_hook(path):
    from open_clip_train.file_utils import pt_load

    return train_main.wrap_pt_load(pt_load)(str(path), map_location="cpu")


def test_resume_path_faults_end_with_one_error_line_naming_the_file(tmp_path, resume_run):
    """Missing file, a folder, an empty / truncated / text file, another architecture: each a
    ``SystemExit`` with one ``error:`` line naming the path and the fault; a good checkpoint loads."""
    good = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "run", "state_dict": resume_run.state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    other = {k: v for k, v in resume_run.state_dict().items() if not k.startswith("visual.")}
    other["text.token_embedding.weight"] = torch.zeros(7, 3)
    torch.save({"epoch": 1, "state_dict": other}, tmp_path / "other.pt")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "epoch_2.pt").write_bytes(data)
    expected = {
        "missing.pt": ["missing.pt: no such checkpoint file", "--resume latest"],
        "checkpoints": ["checkpoints is a folder (it holds epoch_2.pt)", "pass one checkpoint file"],
        "empty.pt": ["empty.pt is empty (0 bytes)"],
        "cut.pt": ["cut.pt is truncated"],
        "text.pt": ["text.pt is not a PyTorch checkpoint"],
        "other.pt": ["other.pt is not a checkpoint of --model C2LIP-Tiny", "missing from the checkpoint",
                     "text.token_embedding.weight: checkpoint [7, 3]"],
    }
    for name, fragments in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            _load_with_hook(tmp_path / name)
        message = str(exit_info.value.code)
        assert message.startswith("error: --resume") and "\n" not in message, message
        assert str(tmp_path / name) in message, message
        for fragment in fragments:
            assert fragment in message, (name, message)
    checkpoint = _load_with_hook(good)
    assert checkpoint["epoch"] == 1 and set(checkpoint["state_dict"]) == set(resume_run.state_dict())
    # DDP keys ("module.") and a bare state dict are checked as upstream loads them
    torch.save({f"module.{k}": v for k, v in resume_run.state_dict().items()}, tmp_path / "bare.pt")
    assert set(_load_with_hook(tmp_path / "bare.pt")) == {f"module.{k}" for k in resume_run.state_dict()}
    torch.save({"visual.nothing": torch.zeros(1)}, tmp_path / "bare_other.pt")
    with pytest.raises(SystemExit, match="bare_other.pt is not a checkpoint of --model C2LIP-Tiny"):
        _load_with_hook(tmp_path / "bare_other.pt")


def test_remote_resume_paths_are_left_to_upstream(tmp_path, resume_run):
    """A ``--remote-sync`` style URL is not checked on the local disk (upstream's fsspec reads it)."""
    calls = []

    def fake_pt_load(file_path, map_location=None):
        calls.append(file_path)
        return {"epoch": 1, "state_dict": resume_run.state_dict()}

    assert train_main.wrap_pt_load(fake_pt_load)("s3://bucket/run/epoch_1.pt")["epoch"] == 1
    assert calls == ["s3://bucket/run/epoch_1.pt"]


@pytest.mark.slow
def test_resume_of_another_architecture_stops_the_training_with_one_error_line(tmp_path):
    """Through ``python -m open_clip_train.main``: the checkpoint is checked against the model main()
    built (``create_model_and_transforms`` hook), before anything loads into it; exit status 1."""
    import open_clip

    table = build_csv(tmp_path)
    state = {k: v for k, v in open_clip.create_model("C2LIP-Tiny").state_dict().items()
             if not k.startswith("text.transformer.resblocks.2.")}
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "other.pt")
    args = train_args(table, tmp_path / "logs", "other_arch", "--resume", str(tmp_path / "other.pt"))
    proc = Proc.train(tmp_path, "other_arch", args).wait()
    assert proc.returncode == 1, proc.output[-3000:]
    assert "Traceback" not in proc.output, proc.output[-3000:]
    assert (f"error: --resume {tmp_path / 'other.pt'} is not a checkpoint of --model C2LIP-Tiny: "
            "12 of the model's") in proc.output, proc.output[-3000:]


def test_resume_errors_diff_applies_with_the_other_main_diffs(tmp_path):
    """``patches/open_clip_train-resume-errors.diff`` applies to the installed main.py, alone and after the
    run-lock and exit-status diffs, and the result compiles with the refusal lines in place."""
    from patch_fixtures import apply_diffs

    for order in (["open_clip_train-resume-errors.diff"],
                  ["open_clip_train-run-lock.diff", "open_clip_train-exit-status.diff",
                   "open_clip_train-resume-errors.diff"]):
        root = tmp_path / str(len(order))
        source = apply_diffs(root, "open_clip_train", "main.py", *order).read_text()
        compile(source, "main.py", "exec")
        assert "pass a checkpoint file, or --resume latest" in source
        assert "is not a checkpoint of --model {args.model}" in source
