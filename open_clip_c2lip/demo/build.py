"""Build the demo world on disk: training shards (with spaCy concepts) and held-out eval sets.

Training data goes through the project's own data tools, as a user's data would:
``shards.write_shards`` writes ``jpg`` / ``txt`` / ``json`` shards, then the concepts CLI
(``python -m open_clip_c2lip.concepts``, called in-process) adds each caption's spaCy noun phrases
to the ``json`` member. The generator never writes concepts itself.
"""
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import FrozenSet, Iterator, List, Set, Tuple

from .evalsets import write_eval_sets
from .world import Scene, WorldSpec, render, sample_scene

SceneKey = FrozenSet[Tuple[str, str, int]]


def scene_key(scene: Scene) -> SceneKey:
    """What makes two images identical: the set of (shape, colour, cell)."""
    return frozenset((o.shape, o.colour, o.cell) for o in scene.objects)


@dataclass
class WorldFiles:
    train_pattern: str  # brace pattern of the training shards, for --train-data
    num_train: int
    eval_root: str
    eval_counts: dict


def _train_samples(scenes: List[Scene], spec: WorldSpec, progress: bool) -> Iterator[dict]:
    from tqdm import tqdm
    for index, scene in enumerate(tqdm(scenes, desc="train images", unit="img", disable=not progress)):
        yield {
            "key": f"{index:09d}",
            "jpg": render(scene, spec),
            "txt": scene.caption(),
            # ground truth for inspection only; training reads the spaCy concepts added below
            "json": {"objects": [{"shape": o.shape, "colour": o.colour, "cell": o.cell} for o in scene.objects]},
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


def build_world(output_dir, spec: WorldSpec, num_train: int, num_eval: int, seed: int,
                samples_per_shard: int = 1000, progress: bool = True) -> WorldFiles:
    """Write ``<output_dir>/shards_raw``, ``<output_dir>/shards`` (with concepts) and ``<output_dir>/eval``.

    Training scenes come from ``seed``; the held-out scenes from a separate stream, excluding any
    scene that also occurs in training, so every evaluation image is unseen.
    """
    from .. import concepts, shards
    output_dir = Path(output_dir)
    for stale in ("shards_raw", "shards", "eval"):  # a previous, larger world must not leak in
        if (output_dir / stale).is_dir():
            shutil.rmtree(output_dir / stale)
    rng = random.Random(seed)
    train_scenes = [sample_scene(spec, rng) for _ in range(num_train)]
    seen: Set[SceneKey] = {scene_key(s) for s in train_scenes}
    raw_paths = shards.write_shards(_train_samples(train_scenes, spec, progress), str(output_dir / "shards_raw"),
                                    prefix="train", samples_per_shard=samples_per_shard)
    argv = [*raw_paths, "--output-dir", str(output_dir / "shards"), "--overwrite"]
    if not progress:
        argv.append("--quiet")
    status = concepts.main(argv)
    if status:
        raise RuntimeError(f"concept extraction failed (exit {status}) on {output_dir / 'shards_raw'}")
    train_paths = [str(output_dir / "shards" / Path(p).name) for p in raw_paths]
    eval_root = output_dir / "eval"
    counts = write_eval_sets(str(eval_root), spec, num_eval, seed=seed + 1_000_003, exclude=seen, progress=progress)
    return WorldFiles(brace_pattern(train_paths), num_train, str(eval_root), counts)
