"""Build the demo world on disk: training shards (with spaCy concepts) and held-out eval sets.

Training data goes through the project's own data tools, as a user's data would:
``shards.write_shards`` writes ``jpg`` / ``txt`` / ``json`` shards, then the concepts CLI
(``python -m open_clip_c2lip.concepts``) adds each caption's spaCy noun phrases to the ``json``
member. The generator never writes concepts itself.
"""
import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

from ..fileio.atomic import write_text
from .evalsets import write_eval_sets
from .world import Scene, SceneKey, WorldSpec, balanced_scenes, held_out_pairs, render, scene_key

# Held-out evaluation sets: name -> what its scenes contain.
EVAL_SETS = {
    "seen_pairs": "new scenes of colour-shape pairs seen in training (new layouts and combinations)",
    "unseen_pairs": "scenes with one or two held-out colour-shape pairs, never seen in training "
                    "(compositional generalization); negatives turn a held-out pair into another "
                    "held-out pair (novel against novel)",
}


@dataclass
class WorldFiles:
    train_pattern: str  # brace pattern of the training shards, for --train-data
    num_train: int
    eval_roots: Dict[str, str]  # EVAL_SETS name -> SugarCrepe-format root
    eval_counts: Dict[str, dict]
    held_out: List[Tuple[str, str]]  # (colour, shape) pairs absent from training
    train_captions: List[str]


def _train_samples(scenes: List[Scene], spec: WorldSpec, progress: bool) -> Iterator[dict]:
    from tqdm import tqdm
    for index, scene in enumerate(tqdm(scenes, desc="train images", unit="img", disable=not progress)):
        yield {
            "key": f"{index:09d}",
            "jpg": render(scene, spec),
            "txt": scene.caption(),
            # ground truth for inspection only; training reads the spaCy concepts added below
            "json": {"objects": [{"shape": o.shape, "colour": o.colour, "cell": o.cell, "offset": list(o.offset)}
                                 for o in scene.objects]},
        }


def brace_pattern(paths: List[str]) -> str:
    """webdataset brace pattern ``dir/prefix-{000000..000007}.tar`` of consecutively numbered shards."""
    if not paths:
        raise ValueError("no shards were written")
    first, last = Path(paths[0]), Path(paths[-1])
    prefix, first_index = first.stem.rsplit("-", 1)
    last_index = last.stem.rsplit("-", 1)[1]
    if len(paths) == 1:
        return str(first)
    return str(first.parent / f"{prefix}-{{{first_index}..{last_index}}}.tar")


# Bump when the generator's output for a given spec and seed changes: a world on disk with another
# version is rebuilt, not reused.
WORLD_VERSION = 2


def _manifest(spec: WorldSpec, num_train: int, num_eval: int, seed: int, samples_per_shard: int) -> dict:
    return {"version": WORLD_VERSION, "seed": seed, "spec": spec.to_dict(), "num_train": num_train,
            "num_eval": num_eval, "samples_per_shard": samples_per_shard}


def load_world(output_dir, spec: WorldSpec, num_train: int, num_eval: int, seed: int,
               samples_per_shard: int = 1000) -> Optional[WorldFiles]:
    """The world ``build_world`` finished earlier in ``output_dir`` with these arguments, else None."""
    path = Path(output_dir) / "world.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("manifest") != json.loads(json.dumps(_manifest(spec, num_train, num_eval, seed, samples_per_shard))):
        return None
    files = saved["files"]
    return WorldFiles(files["train_pattern"], files["num_train"], files["eval_roots"], files["eval_counts"],
                      [tuple(p) for p in files["held_out"]], files["train_captions"])


def build_world(output_dir, spec: WorldSpec, num_train: int, num_eval: int, seed: int,
                samples_per_shard: int = 1000, progress: bool = True, reuse: bool = False) -> WorldFiles:
    """Write ``<output_dir>/shards_raw``, ``<output_dir>/shards`` (with concepts) and one SugarCrepe-format
    root per :data:`EVAL_SETS` under ``<output_dir>/eval``; ``<output_dir>/world.json`` last.

    Training scenes come from ``seed`` and avoid the world's held-out colour-shape pairs; each
    held-out set comes from its own stream, excluding any scene that also occurs in training or
    earlier in the set, so every evaluation image is unseen and distinct. ``reuse``: return the
    world already there when its ``world.json`` says it was built with these arguments.
    """
    from ..fileio import shards
    output_dir = Path(output_dir)
    if reuse:
        world = load_world(output_dir, spec, num_train, num_eval, seed, samples_per_shard)
        if world is not None:
            return world
    if (output_dir / "world.json").is_file():
        (output_dir / "world.json").unlink()
    for stale in ("shards_raw", "shards", "eval"):  # a previous, larger world must not leak in
        if (output_dir / stale).is_dir():
            shutil.rmtree(output_dir / stale)
    held_out = held_out_pairs(spec, seed)
    rng = random.Random(seed)
    train_scenes = balanced_scenes(spec, num_train, rng, avoid=held_out)
    seen: Set[SceneKey] = {scene_key(s) for s in train_scenes}
    pair_counts = Counter(o.pair for s in train_scenes for o in s.objects)
    raw_paths = shards.write_shards(_train_samples(train_scenes, spec, progress), str(output_dir / "shards_raw"),
                                    prefix="train", samples_per_shard=samples_per_shard)
    # the public entry point, as a user annotates their data
    command = [sys.executable, "-m", "open_clip_c2lip.concepts", *raw_paths, "--output-dir",
               str(output_dir / "shards"), "--overwrite"] + ([] if progress else ["--quiet"])
    status = subprocess.run(command).returncode
    if status:
        raise RuntimeError(f"concept extraction failed (exit {status}) on {output_dir / 'shards_raw'}: "
                           f"{' '.join(command)}")
    train_paths = [str(output_dir / "shards" / Path(p).name) for p in raw_paths]
    roots, counts = {}, {}
    for index, name in enumerate(EVAL_SETS):
        if name == "unseen_pairs" and not held_out:
            continue
        roots[name] = str(output_dir / "eval" / name)
        counts[name] = write_eval_sets(roots[name], spec, num_eval, seed=seed + 1_000_003 * (index + 1),
                                       exclude=seen, held_out=held_out, novel=name == "unseen_pairs",
                                       pair_counts=pair_counts, progress=progress)
    world = WorldFiles(brace_pattern(train_paths), num_train, roots, counts, sorted(held_out),
                       [s.caption() for s in train_scenes])
    record = {"manifest": _manifest(spec, num_train, num_eval, seed, samples_per_shard),
              "files": {**asdict(world), "held_out": [list(p) for p in world.held_out]}}
    write_text(str(output_dir / "world.json"), json.dumps(record, indent=1))  # last: only a complete world is reused
    return world
