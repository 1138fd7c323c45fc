"""The demo as a study: worlds x training seeds x variants, trained, evaluated and saved run by run.

World seed ``W`` draws the world (scenes, held-out colour-shape block, evaluation sets); training
seed ``T`` is ``open_clip_train --seed T`` (initialisation and data order). Every variant of a
``(W, T)`` shares the world's shards and the training seed. Runs are independent ``open_clip_train``
subprocesses, ``parallel`` at a time (1 torch thread each), scheduled world by world so a study cut
short leaves complete worlds. Each finished run's record is saved next to its logs
(``world_W/metrics/<variant>_t<T>.json``) and a rerun with the same settings reuses it (and the
world on disk), so the study resumes where it stopped.
"""
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..fileio.atomic import write_text
from .analysis import run_name
from .blind import blind_accuracy
from .build import WorldFiles, build_world
from .evalsets import NEGATIVES
from .runs import RunSpec, read_train_log, stop_all, train
from .variants import VARIANTS, LossSettings
from .world import WorldSpec

# Seconds per optimizer step of batch 64 on one core of the 2-core dev box, nearly idle
# (benchmarks/demo.md); without xac a text-mode step costs about a SigLIP step. Only used to print
# the expected run time.
STEP_COST_S = {"xac": 0.37, "text": 0.35, "span": 0.35, "siglip": 0.35}

ATTENTION_IMAGES = 200


@dataclass
class StudySettings:
    worlds: List[int]
    train_seeds: List[int]
    variants: List[str]
    world: WorldSpec
    num_train: int
    num_eval: int
    steps: int
    batch_size: int
    lr: float
    warmup: int
    wd: float
    loss: LossSettings = field(default_factory=LossSettings)
    workers: int = 1
    parallel: int = 1

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def run_specs(settings: StudySettings, train_seed: int, train_pattern: str) -> Dict[str, RunSpec]:
    """One ``RunSpec`` per variant for one world and training seed: identical data, seed and
    schedule; only the loss flags differ. Keys: ``analysis.run_name(variant, train_seed)``."""
    # No random resized crop: it would shift objects off the patch grid (benchmarks/demo.md); every run
    # gets the same input. open_clip_train picks AdamW beta2/eps by model name ("vit" -> 0.98 / 1e-6,
    # else 0.999 / 1e-8); C2LIP-Tiny is a ViT whose name does not say so: pass the ViT values.
    extra_args = ["--aug-cfg", "scale=(1.0,1.0)", "--beta2", "0.98", "--eps", "1e-6", "--wd", str(settings.wd)]
    specs = {}
    for variant in settings.variants:
        name = run_name(variant, train_seed)
        specs[name] = RunSpec(name=name, loss_args=VARIANTS[variant].loss_args(settings.loss),
                              train_data=train_pattern, train_num_samples=settings.steps * settings.batch_size,
                              batch_size=settings.batch_size, lr=settings.lr, warmup=settings.warmup,
                              seed=train_seed, workers=settings.workers, extra_args=extra_args)
    return specs


def step_cost(args: List[str]) -> float:
    if "--c2lip-loss" not in args:
        return STEP_COST_S["siglip"]
    if args[args.index("--c2lip-concept-mode") + 1] == "span":
        return STEP_COST_S["span"]
    return STEP_COST_S["xac" if float(args[args.index("--c2lip-xac-weight") + 1]) else "text"]


def expected_seconds(settings: StudySettings, done: int = 0) -> float:
    """Rough wall time on an idle 2-core box of the runs not ``done`` yet (training dominates; world
    and evaluation ~30 s per world)."""
    per_run = [step_cost(VARIANTS[v].loss_args(settings.loss)) * settings.steps * settings.batch_size / 64
               for v in settings.variants]
    runs = len(settings.worlds) * len(settings.train_seeds) * len(settings.variants)
    left = max(0, runs - done)
    parallel = max(1, min(settings.parallel, 2, left or 1))
    return left * (sum(per_run) / len(per_run)) / parallel + 30.0 * len(settings.worlds) * left / max(runs, 1)


def flatten_metrics(per_set: Dict[str, Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """``{"<eval set>/<metric>": value}`` from one run's per-eval-set results."""
    flat = {}
    for set_name, results in per_set.items():
        for split, value in results["sugarcrepe"].items():
            if split != "_average":
                flat[f"{set_name}/{split}"] = value["acc"]
        for probe, value in results.get("probes", {}).items():
            flat[f"{set_name}/{probe}"] = value["acc"]
        kinds = results.get("probes", {}).get("phrase_probe", {}).get("kinds", {})
        for kind, part in kinds.items():
            flat[f"{set_name}/probe_{kind}"] = part["acc"]
        if {"novel_true", "familiar_true"} <= set(kinds):
            # > 0: the model prefers the familiar phrase of a pair more often than the unfamiliar one
            flat[f"{set_name}/familiarity_bias"] = kinds["familiar_true"]["acc"] - kinds["novel_true"]["acc"]
        flat[f"{set_name}/i2t_R@1"] = results["retrieval"]["image_to_text_R@1"]
        flat[f"{set_name}/t2i_R@1"] = results["retrieval"]["text_to_image_R@1"]
        flat[f"{set_name}/chance_R@1"] = results["retrieval"]["chance_R@1"]
        if "attention" in results:
            for key in ("ratio", "top1"):
                flat[f"{set_name}/attn_{key}"] = results["attention"][key]
    return flat


def evaluate_run(checkpoint: Path, world: WorldFiles, spec: WorldSpec, progress: bool = False) -> Dict[str, Any]:
    """Pair-choice accuracies (SugarCrepe splits through ``open_clip_c2lip.eval``, probes through
    ``choices.py``), retrieval R@1 and attention mass of one checkpoint on each held-out set.
    Attention mass: on the first ``ATTENTION_IMAGES`` images of ``unseen_pairs``, for their held-out
    objects (one forward pass per image: the costly part)."""
    from .. import eval as c2eval
    from .attention import attention_mass
    from .choices import evaluate_probes
    from .retrieval import evaluate_retrieval
    model, preprocess, tokenizer = c2eval.load_model("C2LIP-Tiny", str(checkpoint))
    results = {}
    for set_name, root in world.eval_roots.items():
        splits = [s for s in NEGATIVES if world.eval_counts[set_name].get(s)]
        scores = c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe"], root,
                                 options={"sugarcrepe": {"splits": splits}}, progress=progress)
        results[set_name] = {
            "sugarcrepe": scores["sugarcrepe"],
            "probes": evaluate_probes(model, preprocess, tokenizer, root, progress=progress),
            "retrieval": evaluate_retrieval(model, preprocess, tokenizer, root, progress=progress),
        }
        if set_name == "unseen_pairs":
            results[set_name]["attention"] = attention_mass(
                model, preprocess, tokenizer, root, spec.grid, spec.image_size, temperature=1.0,
                only_pairs=world.held_out, limit=ATTENTION_IMAGES)
    return results


class _Bars:
    """tqdm positions for concurrent training bars."""

    def __init__(self, count: int):
        self.free = list(range(1, count + 1))
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            return self.free.pop(0) if self.free else 0

    def give(self, position: int) -> None:
        with self.lock:
            if position:
                self.free.append(position)
                self.free.sort()


def world_dir(output_dir, world: int) -> Path:
    return Path(output_dir) / f"world_{world}"


def saved_run(path: Path, command: List[str]) -> Optional[Dict[str, Any]]:
    """The record of a finished run at ``path`` if it ran ``command`` and its checkpoint is still there."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("command") != command or not Path(record.get("checkpoint", "")).is_file():
        return None
    return record


def finished_runs(settings: StudySettings, output_dir) -> int:
    """How many of the study's runs a rerun would reuse (their commands need only the shard pattern,
    read from each world's ``world.json``)."""
    from .build import load_world
    done = 0
    for w in settings.worlds:
        world = load_world(world_dir(output_dir, w) / "world", settings.world, settings.num_train,
                           settings.num_eval, w)
        if world is None:
            continue
        for t in settings.train_seeds:
            for name, spec in run_specs(settings, t, world.train_pattern).items():
                logs = str(world_dir(output_dir, w) / "logs")
                done += saved_run(world_dir(output_dir, w) / "metrics" / f"{name}.json", spec.command(logs)) is not None
    return done


def run_study(settings: StudySettings, output_dir, progress: bool = True, environment: str = "",
              on_update: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Build each world, train and evaluate every variant with every training seed on it; returns
    ``{world seed: {"held_out_pairs", "eval_counts", "blind", "world_s", "runs": {run name: record}}}``.

    ``environment`` (``environment.markdown()``) is stored with every run trained now.
    ``on_update(worlds)`` is called after every finished run with the results so far.
    """
    from tqdm import tqdm
    output_dir = Path(output_dir)
    worlds: Dict[int, Dict[str, Any]] = {}
    files: Dict[int, WorldFiles] = {}
    world_locks = {w: threading.Lock() for w in settings.worlds}
    lock = threading.Lock()

    def world_of(w: int) -> WorldFiles:
        """Built (or reused) by the first run of the world that needs it; other threads keep training."""
        with world_locks[w]:
            if w not in files:
                start = time.perf_counter()
                built = build_world(world_dir(output_dir, w) / "world", settings.world, settings.num_train,
                                    settings.num_eval, w, progress=False, reuse=True)
                record = {"held_out_pairs": [list(p) for p in built.held_out], "eval_counts": built.eval_counts,
                          "blind": {name: blind_accuracy(built.train_captions, root)
                                    for name, root in built.eval_roots.items()},
                          "world_s": time.perf_counter() - start, "runs": {}}
                with lock:
                    worlds[w] = record
                files[w] = built
            return files[w]

    # world-major: a study cut short leaves whole worlds (every variant and training seed)
    jobs = [(w, t, v) for w in settings.worlds for t in settings.train_seeds for v in settings.variants]
    bars = _Bars(max(1, settings.parallel))
    overall = tqdm(total=len(jobs), desc="study runs", unit="run", disable=not progress, position=0)

    def job(w: int, t: int, variant: str) -> None:
        world = world_of(w)
        name = run_name(variant, t)
        spec = run_specs(settings, t, world.train_pattern)[name]
        logs_dir = str(world_dir(output_dir, w) / "logs")
        saved = world_dir(output_dir, w) / "metrics" / f"{name}.json"
        command = spec.command(logs_dir)
        record = saved_run(saved, command)
        if record is not None:
            record["reused"] = True
        else:
            position = bars.take()
            try:
                start = time.perf_counter()
                checkpoint = train(spec, logs_dir, progress=progress, position=position)
                train_s = time.perf_counter() - start
            finally:
                bars.give(position)
            start = time.perf_counter()
            evaluation = evaluate_run(checkpoint, world, settings.world)
            record = {"variant": variant, "world": w, "train_seed": t, "command": command,
                      "checkpoint": str(checkpoint), "train_s": train_s, "eval_s": time.perf_counter() - start,
                      "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average": list(os.getloadavg()),
                      "environment": environment, "metrics": flatten_metrics(evaluation),
                      "evaluation": evaluation, "curves": read_train_log(spec, logs_dir).to_dict()}
            saved.parent.mkdir(parents=True, exist_ok=True)
            write_text(str(saved), json.dumps(record, indent=1))  # a resumed study never sees half a record
        with lock:
            worlds[w]["runs"][name] = record
            overall.update(1)
            if on_update is not None:
                on_update({s: worlds[s] for s in settings.worlds if s in worlds})

    pool = ThreadPoolExecutor(max_workers=max(1, settings.parallel))
    failures = []
    try:
        futures = {pool.submit(job, *key): key for key in jobs}
        for future, (w, t, variant) in futures.items():
            try:
                future.result()
            except Exception as error:  # keep the other runs going; fail at the end
                failures.append((w, t, variant, error))
    except BaseException:  # SIGTERM / Ctrl-C: stop queued runs and kill the running ones
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        raise
    finally:
        pool.shutdown(wait=True)
        overall.close()
    if failures:
        listed = ", ".join(f"world {w} {run_name(v, t)}" for w, t, v, _ in failures)
        raise RuntimeError(f"{len(failures)} of {len(jobs)} study runs failed ({listed}); first error: "
                           f"{failures[0][3]}") from failures[0][3]
    return {w: worlds[w] for w in settings.worlds}
