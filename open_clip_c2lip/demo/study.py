"""The demo as a seed study: per seed one world, every variant trained on it, evaluated, aggregated.

Seed ``S`` is both the world seed (scenes, held-out colour-shape pairs, evaluation sets) and the
training seed (``open_clip_train --seed S``: initialisation and data order). Every variant of a seed
shares its world and shards. Runs are independent ``open_clip_train`` subprocesses, ``parallel`` at
a time (1 torch thread each); each finished run's metrics are saved next to its logs
(``seed_S/metrics/<variant>.json``) and ``results.json`` is rewritten after every run, so a study cut
short keeps its finished rows, and a rerun with the same settings reuses them.
"""
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .build import WorldFiles, build_world
from .evalsets import NEGATIVES, text_only_accuracy
from .runs import RunSpec, read_train_log, stop_all, train
from .stats import mean_std, paired_difference
from .variants import BASELINE, VARIANTS, LossSettings
from .world import WorldSpec

# Seconds per optimizer step of batch 64 on one core of the 2-core dev box, nearly idle (load 1.7;
# benchmarks/demo.md); text mode costs about the same as span here because a batch of this world has
# only ~12 distinct concept texts, each encoded once. Only used to print the expected run time.
STEP_COST_S = {"text": 0.37, "span": 0.35, "siglip": 0.35}


ATTENTION_IMAGES = 200


@dataclass
class StudySettings:
    seeds: List[int]
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


def run_specs(settings: StudySettings, seed: int, train_pattern: str) -> Dict[str, RunSpec]:
    """One ``RunSpec`` per variant: identical data, seed and schedule; only the loss flags differ."""
    # No random resized crop: it would shift objects off the patch grid (benchmarks/demo.md); every run
    # gets the same input. open_clip_train picks AdamW beta2/eps by model name ("vit" -> 0.98 / 1e-6,
    # else 0.999 / 1e-8); C2LIP-Tiny is a ViT whose name does not say so: pass the ViT values.
    extra_args = ["--aug-cfg", "scale=(1.0,1.0)", "--beta2", "0.98", "--eps", "1e-6", "--wd", str(settings.wd)]
    return {name: RunSpec(name=name, loss_args=VARIANTS[name].loss_args(settings.loss), train_data=train_pattern,
                          train_num_samples=settings.steps * settings.batch_size, batch_size=settings.batch_size,
                          lr=settings.lr, warmup=settings.warmup, seed=seed, workers=settings.workers,
                          extra_args=extra_args)
            for name in settings.variants}


def expected_seconds(settings: StudySettings) -> float:
    """Rough wall time on an idle 2-core box (training dominates; world and eval ~20 s per seed)."""
    per_seed = 0.0
    for name in settings.variants:
        args = VARIANTS[name].loss_args(settings.loss)
        mode = "siglip" if "--c2lip-loss" not in args else args[args.index("--c2lip-concept-mode") + 1]
        per_seed += STEP_COST_S[mode] * settings.steps * settings.batch_size / 64
    parallel = max(1, min(settings.parallel, 2, len(settings.variants) * len(settings.seeds)))
    return len(settings.seeds) * (per_seed / parallel + 20.0)


def flatten_metrics(per_set: Dict[str, Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """``{"<eval set>/<metric>": value}`` from one run's per-eval-set results."""
    flat = {}
    for set_name, results in per_set.items():
        for split, value in results["sugarcrepe"].items():
            if split != "_average":
                flat[f"{set_name}/{split}"] = value["acc"]
        flat[f"{set_name}/i2t_R@1"] = results["retrieval"]["image_to_text_R@1"]
        flat[f"{set_name}/t2i_R@1"] = results["retrieval"]["text_to_image_R@1"]
        flat[f"{set_name}/chance_R@1"] = results["retrieval"]["chance_R@1"]
        if "attention" in results:
            for key in ("ratio", "top1"):
                flat[f"{set_name}/attn_{key}"] = results["attention"][key]
    return flat


def evaluate_run(checkpoint: Path, world: WorldFiles, spec: WorldSpec, progress: bool = False) -> Dict[str, Any]:
    """SugarCrepe-format accuracies (``open_clip_c2lip.eval``), retrieval R@1 and attention mass of one
    checkpoint on each held-out set. Attention mass: on the first ``ATTENTION_IMAGES`` images of
    ``unseen_pairs``, for their held-out-pair objects (one forward pass per image: the costly part)."""
    from .. import eval as c2eval
    from .attention import attention_mass
    from .retrieval import evaluate_retrieval
    model, preprocess, tokenizer = c2eval.load_model("C2LIP-Tiny", str(checkpoint))
    results = {}
    for set_name, root in world.eval_roots.items():
        splits = [s for s in NEGATIVES if world.eval_counts[set_name][s] > 0]
        scores = c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe"], root,
                                 options={"sugarcrepe": {"splits": splits}}, progress=progress)
        results[set_name] = {
            "sugarcrepe": scores["sugarcrepe"],
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


def run_study(settings: StudySettings, output_dir, progress: bool = True,
              on_update: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Build each seed's world, train and evaluate every variant on it; returns ``{"seeds": {seed: ...}}``.

    ``on_update(partial)`` is called after every finished run with the results so far.
    """
    from tqdm import tqdm
    output_dir = Path(output_dir)
    seeds: Dict[int, Dict[str, Any]] = {}
    worlds: Dict[int, WorldFiles] = {}
    world_locks = {seed: threading.Lock() for seed in settings.seeds}
    lock = threading.Lock()

    def world_of(seed: int) -> WorldFiles:
        """Built by the first run of the seed that needs it (other threads keep training meanwhile)."""
        with world_locks[seed]:
            if seed not in worlds:
                start = time.perf_counter()
                world = build_world(output_dir / f"seed_{seed}" / "world", settings.world, settings.num_train,
                                    settings.num_eval, seed, progress=False)
                record = {"held_out_pairs": [list(p) for p in world.held_out], "eval_counts": world.eval_counts,
                          "text_only": {name: text_only_accuracy(world.train_captions, root)
                                        for name, root in world.eval_roots.items()},
                          "world_s": time.perf_counter() - start, "runs": {}}
                with lock:
                    seeds[seed] = record
                worlds[seed] = world
            return worlds[seed]

    # variant-major order: every seed's baseline and C2LIP first, so a study cut short still pairs them
    jobs = [(seed, name) for name in settings.variants for seed in settings.seeds]
    bars = _Bars(max(1, settings.parallel))
    overall = tqdm(total=len(jobs), desc="study runs", unit="run", disable=not progress, position=0)

    def job(seed: int, name: str) -> None:
        seed_dir = output_dir / f"seed_{seed}"
        world = world_of(seed)
        spec = run_specs(settings, seed, world.train_pattern)[name]
        logs_dir = str(seed_dir / "logs")
        saved = seed_dir / "metrics" / f"{name}.json"
        command = spec.command(logs_dir)
        if saved.is_file():
            previous = json.loads(saved.read_text())
            if previous.get("command") == command and Path(previous.get("checkpoint", "")).is_file():
                record = previous
                record["reused"] = True
            else:
                record = None
        else:
            record = None
        if record is None:
            position = bars.take()
            try:
                start = time.perf_counter()
                checkpoint = train(spec, logs_dir, progress=progress, position=position)
                train_s = time.perf_counter() - start
            finally:
                bars.give(position)
            start = time.perf_counter()
            evaluation = evaluate_run(checkpoint, world, settings.world)
            record = {"variant": name, "seed": seed, "command": command, "checkpoint": str(checkpoint),
                      "train_s": train_s, "eval_s": time.perf_counter() - start,
                      "metrics": flatten_metrics(evaluation), "evaluation": evaluation,
                      "curves": read_train_log(spec, logs_dir).to_dict()}
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(record, indent=1))
        with lock:
            seeds[seed]["runs"][name] = record
            overall.update(1)
            if on_update is not None:
                on_update({"seeds": {s: seeds[s] for s in settings.seeds if s in seeds}})

    pool = ThreadPoolExecutor(max_workers=max(1, settings.parallel))
    failures = []
    try:
        futures = {pool.submit(job, seed, name): (seed, name) for seed, name in jobs}
        for future, (seed, name) in futures.items():
            try:
                future.result()
            except Exception as error:  # keep the other runs going; fail at the end
                failures.append((seed, name, error))
    except BaseException:  # SIGTERM / Ctrl-C: stop queued runs and kill the running ones
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        raise
    finally:
        pool.shutdown(wait=True)
        overall.close()
    if failures:
        listed = ", ".join(f"seed {seed} {name}" for seed, name, _ in failures)
        raise RuntimeError(f"{len(failures)} of {len(jobs)} study runs failed ({listed}); first error: "
                           f"{failures[0][2]}") from failures[0][2]
    return {"seeds": {s: seeds[s] for s in settings.seeds}}


def metric_names(seeds: Dict[int, Dict[str, Any]]) -> List[str]:
    """Metrics present in every finished run, in first-seen order."""
    names: List[str] = []
    for seed in seeds.values():
        for run in seed["runs"].values():
            for name in run["metrics"]:
                if name not in names:
                    names.append(name)
    return names


def aggregate(seeds: Dict[int, Dict[str, Any]], variants: Sequence[str], baseline: str = BASELINE) -> Dict[str, Any]:
    """Per variant and metric: mean ± std over the seeds where every variant finished; per non-baseline
    variant the paired difference to ``baseline`` with its 95 % t interval."""
    complete = [s for s, seed in seeds.items() if all(v in seed["runs"] for v in variants)]
    summary: Dict[str, Any] = {"seeds": complete, "per_variant": {}, "vs_baseline": {}}
    for metric in metric_names(seeds):
        for variant in variants:
            values = [seeds[s]["runs"][variant]["metrics"].get(metric) for s in complete]
            if any(v is None for v in values):
                continue
            summary["per_variant"].setdefault(variant, {})[metric] = dict(mean_std(values), values=values)
        if baseline not in variants:
            continue
        control = [seeds[s]["runs"][baseline]["metrics"].get(metric) for s in complete]
        for variant in variants:
            if variant == baseline:
                continue
            treated = [seeds[s]["runs"][variant]["metrics"].get(metric) for s in complete]
            summary["vs_baseline"].setdefault(variant, {})[metric] = paired_difference(treated, control)
    return summary
