"""Held-out evaluation sets of the synthetic world, in SugarCrepe's on-disk format.

Each split pairs an unseen image with its true caption and a hard negative caption:

- ``swap_att``: two objects swap colours (same bag of words; only binding separates them);
- ``replace_att``: one object gets a colour absent from the image;
- ``replace_obj``: one object gets a shape absent from the image;
- ``add_obj``: an absent object (a shape the image lacks) is added to the caption.

Layout (the eval suite's contract): ``<root>/val2017/<file>.jpg`` and
``<root>/sugarcrepe/<split>.json`` = ``{"0": {"filename", "caption", "negative_caption"}, ...}``,
plus ``<root>/retrieval.json`` = ``[{"filename", "caption", "match"}]`` for image<->text retrieval,
where items with equal ``match`` (the same objects; positions are never captioned) count as
interchangeable answers.
"""
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import AbstractSet, Callable, Dict, List, Optional, Sequence

from .world import Obj, Scene, WorldSpec, join_phrases, render, sample_scene

NegativeFn = Callable[[Scene, WorldSpec, random.Random], Optional[str]]


def swap_att(scene: Scene, spec: WorldSpec, rng: random.Random) -> Optional[str]:
    """Swap the colours of two objects that differ in both shape and colour."""
    pairs = [(i, j) for i in range(len(scene.objects)) for j in range(i + 1, len(scene.objects))
             if scene.objects[i].colour != scene.objects[j].colour
             and scene.objects[i].shape != scene.objects[j].shape]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    objects = list(scene.objects)
    objects[i] = replace(scene.objects[i], colour=scene.objects[j].colour)
    objects[j] = replace(scene.objects[j], colour=scene.objects[i].colour)
    return scene.caption(objects)


def _replace_with_absent(scene: Scene, attribute: str, values, rng: random.Random) -> Optional[str]:
    """Give one object a value of ``attribute`` ('colour' or 'shape') that no object of the image has."""
    absent = [v for v in values if v not in {getattr(o, attribute) for o in scene.objects}]
    if not absent:
        return None
    i = rng.randrange(len(scene.objects))
    objects = list(scene.objects)
    objects[i] = replace(objects[i], **{attribute: rng.choice(absent)})
    return scene.caption(objects)


def replace_att(scene: Scene, spec: WorldSpec, rng: random.Random) -> Optional[str]:
    """Give one object a colour that no object of the image has."""
    return _replace_with_absent(scene, "colour", spec.colours, rng)


def replace_obj(scene: Scene, spec: WorldSpec, rng: random.Random) -> Optional[str]:
    """Give one object a shape that no object of the image has."""
    return _replace_with_absent(scene, "shape", spec.shapes, rng)


def add_obj(scene: Scene, spec: WorldSpec, rng: random.Random) -> Optional[str]:
    """Insert an object whose shape the image lacks at a random position of the caption."""
    absent = [s for s in spec.shapes if s not in {o.shape for o in scene.objects}]
    if not absent:
        return None
    phrases = [scene.objects[i].phrase for i in scene.order]
    extra = Obj(rng.choice(absent), rng.choice(spec.colours), cell=-1)
    phrases.insert(rng.randint(0, len(phrases)), extra.phrase)
    return join_phrases(phrases)


NEGATIVES: Dict[str, NegativeFn] = {
    "swap_att": swap_att,
    "replace_att": replace_att,
    "replace_obj": replace_obj,
    "add_obj": add_obj,
}


def write_eval_sets(root: str, spec: WorldSpec, num_images: int, seed: int,
                    splits: Sequence[str] = tuple(NEGATIVES), exclude: Optional[AbstractSet] = None,
                    progress: bool = False) -> Dict[str, int]:
    """Render ``num_images`` scenes under ``root`` and write one SugarCrepe JSON per split.

    Scenes whose ``scene_key`` is in ``exclude`` (the training scenes) are redrawn, so every image
    is unseen. A scene that cannot host a split's negative (e.g. every colour already used) is left
    out of that split only; returns the item count of each split, of ``retrieval`` and of
    ``redrawn`` scenes.
    """
    from .build import scene_key
    exclude = exclude or set()
    unknown = [s for s in splits if s not in NEGATIVES]
    if unknown:
        raise ValueError(f"unknown eval splits {unknown}; known: {sorted(NEGATIVES)}")
    root_path = Path(root)
    (root_path / "val2017").mkdir(parents=True, exist_ok=True)
    (root_path / "sugarcrepe").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items: Dict[str, Dict[str, dict]] = {split: {} for split in splits}
    retrieval: List[dict] = []
    scenes = range(num_images)
    if progress:
        from tqdm import tqdm
        scenes = tqdm(scenes, desc="eval images", unit="img")
    redrawn = 0
    for index in scenes:
        scene = sample_scene(spec, rng)
        while scene_key(scene) in exclude:
            redrawn += 1
            if redrawn > 100 * max(1, num_images):
                raise RuntimeError("cannot draw unseen scenes: the world is too small for its training set")
            scene = sample_scene(spec, rng)
        filename = f"{index:012d}.jpg"
        render(scene, spec).save(root_path / "val2017" / filename, quality=95)
        caption = scene.caption()
        # images with the same objects (positions aside) are equally right answers for a caption
        retrieval.append({"filename": filename, "caption": caption,
                          "match": join_phrases(sorted(o.phrase for o in scene.objects))})
        for split in splits:
            negative = NEGATIVES[split](scene, spec, rng)
            if negative is not None:
                if negative == caption:
                    raise AssertionError(f"{split} negative equals the caption for {filename}: {caption!r}")
                items[split][str(index)] = {"filename": filename, "caption": caption,
                                            "negative_caption": negative}
    for split, split_items in items.items():
        if not split_items:  # e.g. replace_att when every scene shows every colour: no file, count 0
            continue
        with open(root_path / "sugarcrepe" / f"{split}.json", "w") as f:
            json.dump(split_items, f, indent=1)
    with open(root_path / "retrieval.json", "w") as f:
        json.dump(retrieval, f, indent=1)
    counts = {split: len(split_items) for split, split_items in items.items()}
    counts["retrieval"] = len(retrieval)
    counts["redrawn"] = redrawn
    return counts
