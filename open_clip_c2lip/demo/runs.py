"""Train one demo model through the real ``open_clip_train`` entry point and read its log back.

The run is a subprocess ``python -m open_clip_c2lip.train ...`` (the plugin's explicit entry, i.e.
upstream ``open_clip_train.main`` with the C2LIP hooks); progress comes from tailing its log.
"""
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

# "Train Epoch: 0 [ 640/8192 (8%)] ... LR: 0.000500 Logit Scale: 10.123 Contrastive_loss: 5.1 (5.3) Loss: ..."
_TRAIN_LINE = re.compile(r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<total>\d+)")
_LR = re.compile(r"LR: (?P<lr>[-+.\deE]+)")
_SCALE = re.compile(r"Logit Scale: (?P<scale>[-+.\deE]+)")
# open_clip prints each loss as "Name: current (average)"; the current value is the curve.
_LOSS = re.compile(r"(?P<name>[A-Z][a-z_]*loss|Loss): (?P<value>[-+.\deEnaif]+) \(")


@dataclass
class RunSpec:
    """One training run of the demo: name, loss flags and the shared schedule."""
    name: str
    loss_args: List[str]
    train_data: str
    train_num_samples: int
    batch_size: int
    lr: float
    warmup: int
    seed: int
    workers: int = 1
    epochs: int = 1
    extra_args: List[str] = field(default_factory=list)
    save_frequency: Optional[int] = None  # epochs between checkpoints (default: only the last)

    @property
    def steps(self) -> int:
        # open_clip_train: batches per epoch = ceil(samples / batch), rounded up to a multiple of workers.
        batches = -(-self.train_num_samples // self.batch_size)
        workers = max(1, self.workers)
        return -(-batches // workers) * workers * self.epochs

    def command(self, logs_dir: str) -> List[str]:
        return [
            sys.executable, "-m", "open_clip_c2lip.train",
            "--model", "C2LIP-Tiny",
            "--train-data", self.train_data,
            "--dataset-type", "webdataset",
            "--train-num-samples", str(self.train_num_samples),
            "--batch-size", str(self.batch_size),
            "--epochs", str(self.epochs),
            "--lr", str(self.lr),
            "--warmup", str(self.warmup),
            "--workers", str(self.workers),
            "--seed", str(self.seed),
            "--precision", "fp32",
            "--log-every-n-steps", "5",
            "--save-frequency", str(self.save_frequency or self.epochs),
            "--zeroshot-frequency", "0",
            "--logs", logs_dir,
            "--name", self.name,
            *self.extra_args,
            *self.loss_args,  # last, so runs that differ only in their loss differ only in this tail
        ]


@dataclass
class TrainLog:
    """Curves parsed from an open_clip_train log: one entry per logged step."""
    steps: List[int] = field(default_factory=list)
    lr: List[float] = field(default_factory=list)
    logit_scale: List[float] = field(default_factory=list)
    losses: Dict[str, List[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "logit_scale": self.logit_scale, "losses": self.losses}


def parse_train_log(lines: Sequence[str], batch_size: int, steps_per_epoch: int) -> TrainLog:
    """Curves from open_clip_train's ``Train Epoch`` lines (1-based global step)."""
    log = TrainLog()
    for line in lines:
        match = _TRAIN_LINE.search(line)
        if not match:
            continue
        seen = int(match["seen"])
        step = int(match["epoch"]) * steps_per_epoch + -(-seen // batch_size)
        log.steps.append(step)
        lr, scale = _LR.search(line), _SCALE.search(line)
        log.lr.append(float(lr["lr"]) if lr else float("nan"))
        log.logit_scale.append(float(scale["scale"]) if scale else float("nan"))
        for loss in _LOSS.finditer(line):
            log.losses.setdefault(loss["name"].lower(), []).append(float(loss["value"]))
    return log


def _tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class _Progress:
    """Advances a tqdm bar from the new lines of a growing log (reads each byte once)."""

    def __init__(self, bar, console: Path, batch_size: int, steps_per_epoch: int):
        self.bar, self.console = bar, console
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.offset, self.partial = 0, ""

    def update(self) -> None:
        if not self.console.is_file():
            return
        with open(self.console, errors="replace") as f:
            f.seek(self.offset)
            text = self.partial + f.read()
            self.offset = f.tell()
        *lines, self.partial = text.split("\n")
        log = parse_train_log(lines, self.batch_size, self.steps_per_epoch)
        step = min(log.steps[-1], self.bar.total) if log.steps else self.bar.n
        if step != self.bar.n:  # redraw only on progress
            if "loss" in log.losses:
                self.bar.set_postfix(loss=f"{log.losses['loss'][-1]:.3f}", refresh=False)
            self.bar.update(step - self.bar.n)


# Training subprocesses still running (runs may train in threads): killed on the way out by ``stop_all``.
_LIVE: Set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def stop_all() -> None:
    """Kill every training subprocess this process started and is still running; no new run starts."""
    _STOPPING.set()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for process in live:
        if process.poll() is None:
            process.kill()
            process.wait()


def train(spec: RunSpec, logs_dir: str, progress: bool = True, poll_s: float = 1.0,
          env: Optional[Dict[str, str]] = None, position: Optional[int] = None) -> Path:
    """Run ``spec`` to completion; returns the final checkpoint path. Raises with the log tail on failure.

    ``position``: tqdm bar line, for runs trained concurrently from threads.
    """
    from tqdm import tqdm
    run_dir = Path(logs_dir) / spec.name
    if run_dir.exists():  # open_clip_train refuses to reuse an experiment folder
        shutil.rmtree(run_dir)
    Path(logs_dir).mkdir(parents=True, exist_ok=True)
    console = Path(logs_dir) / f"{spec.name}.console.log"
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    bar = tqdm(total=spec.steps, desc=f"train {spec.name} (seed {spec.seed})", unit="step", disable=not progress,
               position=position, leave=position is None)
    tail = _Progress(bar, console, spec.batch_size, spec.steps // spec.epochs)
    with open(console, "w") as out:
        with _LIVE_LOCK:  # checked under the lock, so stop_all cannot miss a run starting right now
            if _STOPPING.is_set():
                bar.close()
                raise RuntimeError(f"training run {spec.name!r} not started: the demo is stopping")
            process = subprocess.Popen(spec.command(logs_dir), stdout=out, stderr=subprocess.STDOUT, env=run_env)
            _LIVE.add(process)
        try:
            while process.poll() is None:
                time.sleep(poll_s)
                tail.update()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(process)
            tail.update()
            bar.close()
    if process.returncode != 0:
        raise RuntimeError(f"training run {spec.name!r} failed (exit {process.returncode}); "
                           f"command: {' '.join(spec.command(logs_dir))}\nlast lines of {console}:\n{_tail(console)}")
    checkpoint = run_dir / "checkpoints" / f"epoch_{spec.epochs}.pt"
    if not checkpoint.is_file():
        raise RuntimeError(f"training run {spec.name!r} finished without {checkpoint}\n{_tail(console)}")
    return checkpoint


def read_train_log(spec: RunSpec, logs_dir: str) -> TrainLog:
    """Curves of a finished run from ``<logs>/<name>/out.log``."""
    path = Path(logs_dir) / spec.name / "out.log"
    if not path.is_file():
        raise FileNotFoundError(f"no open_clip_train log at {path}")
    return parse_train_log(path.read_text(errors="replace").splitlines(), spec.batch_size,
                           spec.steps // spec.epochs)
