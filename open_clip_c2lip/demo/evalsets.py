"""Held-out evaluation sets of the synthetic world, in SugarCrepe's on-disk format.

Each split pairs an unseen image with its true caption and a hard negative caption:

- ``swap_att``: two objects swap colours (same bag of words; only binding separates them);
- ``replace_att``: one object gets a colour absent from the image;
- ``replace_obj``: one object gets a shape absent from the image;
- ``add_obj``: an absent object (a shape the image lacks) is added to the caption.

Layout (the eval suite's contract): ``<root>/val2017/<file>.jpg`` and
``<root>/sugarcrepe/<split>.json`` = ``{"0": {"filename", "caption", "negative_caption"}, ...}``,
plus ``<root>/retrieval.json`` = ``[{"filename", "caption", "match", "objects"}]`` for image<->text
retrieval, where items with equal ``match`` (the same objects; positions are never captioned) count
as interchangeable answers; ``objects`` (shape, colour, cell, offset) locate each named object for
the attention measurement (``attention.py``).
"""
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import AbstractSet, Callable, Dict, FrozenSet, List, Optional, Sequence

from .world import Obj, Pair, Scene, WorldSpec, join_phrases, render, sample_scene, scene_key

# (scene, spec, rng, focus) -> negative caption or None. ``focus``: indices of the objects the
# negative must change (the held-out-pair objects of a compositional split); None = any object.
NegativeFn = Callable[[Scene, WorldSpec, random.Random, Optional[Sequence[int]]], Optional[str]]


def swap_att(scene: Scene, spec: WorldSpec, rng: random.Random,
             focus: Optional[Sequence[int]] = None) -> Optional[str]:
    """Swap the colours of two objects that differ in both shape and colour (one of them in ``focus``)."""
    pairs = [(i, j) for i in range(len(scene.objects)) for j in range(i + 1, len(scene.objects))
             if scene.objects[i].colour != scene.objects[j].colour
             and scene.objects[i].shape != scene.objects[j].shape
             and (focus is None or i in focus or j in focus)]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    objects = list(scene.objects)
    objects[i] = replace(scene.objects[i], colour=scene.objects[j].colour)
    objects[j] = replace(scene.objects[j], colour=scene.objects[i].colour)
    return scene.caption(objects)


def _replace_with_absent(scene: Scene, attribute: str, values, rng: random.Random,
                         focus: Optional[Sequence[int]]) -> Optional[str]:
    """Give one object (of ``focus``) a value of ``attribute`` ('colour' or 'shape') that no object of the image has."""
    absent = [v for v in values if v not in {getattr(o, attribute) for o in scene.objects}]
    if not absent:
        return None
    i = rng.choice(list(focus)) if focus is not None else rng.randrange(len(scene.objects))
    objects = list(scene.objects)
    objects[i] = replace(objects[i], **{attribute: rng.choice(absent)})
    return scene.caption(objects)


def replace_att(scene: Scene, spec: WorldSpec, rng: random.Random,
                focus: Optional[Sequence[int]] = None) -> Optional[str]:
    """Give one object a colour that no object of the image has."""
    return _replace_with_absent(scene, "colour", spec.colours, rng, focus)


def replace_obj(scene: Scene, spec: WorldSpec, rng: random.Random,
                focus: Optional[Sequence[int]] = None) -> Optional[str]:
    """Give one object a shape that no object of the image has."""
    return _replace_with_absent(scene, "shape", spec.shapes, rng, focus)


def add_obj(scene: Scene, spec: WorldSpec, rng: random.Random,
            focus: Optional[Sequence[int]] = None) -> Optional[str]:
    """Insert an object whose shape the image lacks at a random position of the caption
    (``focus`` is unused: the caption's own objects stay as they are).

    With distinct colours (every training caption names each colour at most once) the added
    object takes a colour the image lacks too, so a repeated colour word cannot give it away.
    """
    shapes = [s for s in spec.shapes if s not in {o.shape for o in scene.objects}]
    colours = spec.colours
    if spec.distinct_colours:
        colours = [c for c in spec.colours if c not in {o.colour for o in scene.objects}]
    if not shapes or not colours:
        return None
    phrases = [scene.objects[i].phrase for i in scene.order]
    extra = Obj(rng.choice(shapes), rng.choice(colours), cell=-1)
    phrases.insert(rng.randint(0, len(phrases)), extra.phrase)
    return join_phrases(phrases)


def phrase_pairs(caption: str) -> FrozenSet[Pair]:
    """(colour, shape) of every object phrase of a world caption."""
    return frozenset(tuple(p.split()[1:3]) for p in caption_phrases(caption))


def _negative(make: NegativeFn, scene: Scene, spec: WorldSpec, rng: random.Random,
              focus: Optional[Sequence[int]], held_out: AbstractSet[Pair], tries: int = 50) -> Optional[str]:
    """``make``'s negative, redrawn (up to ``tries`` times) until it names no held-out pair the image
    lacks; None if none does."""
    present = {(o.colour, o.shape) for o in scene.objects}
    for _ in range(tries):
        negative = make(scene, spec, rng, focus)
        if negative is None or not (phrase_pairs(negative) - present) & held_out:
            return negative
    return None


NEGATIVES: Dict[str, NegativeFn] = {
    "swap_att": swap_att,
    "replace_att": replace_att,
    "replace_obj": replace_obj,
    "add_obj": add_obj,
}


def write_eval_sets(root: str, spec: WorldSpec, num_images: int, seed: int,
                    splits: Sequence[str] = tuple(NEGATIVES), exclude: Optional[AbstractSet] = None,
                    avoid: AbstractSet[Pair] = frozenset(), require: AbstractSet[Pair] = frozenset(),
                    held_out: AbstractSet[Pair] = frozenset(), progress: bool = False) -> Dict[str, int]:
    """Render ``num_images`` distinct scenes under ``root`` and write one SugarCrepe JSON per split.

    Scenes whose ``scene_key`` is in ``exclude`` (the training scenes) or already in this set are
    redrawn, so every image is unseen and occurs once. ``avoid`` / ``require`` go to
    :func:`~.world.sample_scene`; with ``require`` (the held-out pairs) every negative changes an
    object of a required pair (``swap_att``, ``replace_*``), so the split asks about the unseen
    composition itself. No negative names a ``held_out`` pair the image lacks (else "never seen in
    training" would give the negative away). A scene that cannot host a split's negative is left out of that split only.
    Returns the item count of each split, of ``retrieval``, of ``redrawn_train`` scenes (seen in
    training) and ``redrawn_duplicate`` scenes (drawn twice here).
    """
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
        scenes = tqdm(scenes, desc=f"eval images ({root_path.name})", unit="img")
    drawn: set = set()
    redrawn = {"train": 0, "duplicate": 0}
    for index in scenes:
        while True:
            scene = sample_scene(spec, rng, avoid=avoid, require=require)
            key = scene_key(scene)
            if key not in exclude and key not in drawn:
                break
            redrawn["train" if key in exclude else "duplicate"] += 1
            if sum(redrawn.values()) > 100 * max(1, num_images):
                raise RuntimeError(f"cannot draw {num_images} distinct unseen scenes: the world is too small "
                                   f"for its training set ({root})")
        drawn.add(key)
        filename = f"{index:012d}.jpg"
        render(scene, spec).save(root_path / "val2017" / filename, quality=95)
        caption = scene.caption()
        focus = [i for i, o in enumerate(scene.objects) if (o.colour, o.shape) in require] if require else None
        # images with the same objects (positions aside) are equally right answers for a caption
        retrieval.append({"filename": filename, "caption": caption,
                          "match": join_phrases(sorted(o.phrase for o in scene.objects)),
                          "objects": [{"shape": o.shape, "colour": o.colour, "cell": o.cell,
                                       "offset": list(o.offset)} for o in scene.objects]})
        for split in splits:
            negative = _negative(NEGATIVES[split], scene, spec, rng, focus, held_out)
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
    counts["redrawn_train"] = redrawn["train"]
    counts["redrawn_duplicate"] = redrawn["duplicate"]
    return counts


def caption_phrases(caption: str) -> List[str]:
    """The object phrases of a world caption ('a red bar, a blue ring and ...' -> ['a red bar', ...])."""
    return caption.replace(" and ", ", ").split(", ")


def text_only_accuracy(train_captions: Sequence[str], root: str) -> Dict[str, Dict[str, float]]:
    """Accuracy of image-blind scorers fitted on the training captions, per split file under ``root``.

    A split solvable by a surface cue of the captions would show it here (well above 50 %):
    - ``count``: log of the training frequency of the caption's object count (length cue;
      frequencies within 1 % tie);
    - ``phrases``: mean log training frequency of its object phrases (add-one smoothed; a
      frequency cue, length-neutral). On held-out pairs it prefers the negative (the unseen pair
      never occurs in training), the bias a compositional model must overcome.
    Ties count one half. Returns ``{split: {"count": acc, "phrases": acc, "n": items}}``.
    """
    import math
    from collections import Counter
    counts = Counter(len(caption_phrases(c)) for c in train_captions)
    phrases = Counter(p for c in train_captions for p in caption_phrases(c))
    total_captions, total_phrases = sum(counts.values()), sum(phrases.values())
    vocabulary = len(phrases) + 1

    def count_score(caption: str) -> float:
        return math.log((counts[len(caption_phrases(caption))] + 1) / (total_captions + 1))

    def phrase_score(caption: str) -> float:
        parts = caption_phrases(caption)
        return sum(math.log((phrases[p] + 1) / (total_phrases + vocabulary)) for p in parts) / len(parts)

    results = {}
    for path in sorted((Path(root) / "sugarcrepe").glob("*.json")):
        items = list(json.loads(path.read_text()).values())
        accuracy = {}
        # count: frequencies within 1 % (counts balanced to within one caption) are a tie, not a cue
        for name, score, tolerance in (("count", count_score, 0.01), ("phrases", phrase_score, 0.0)):
            wins = 0.0
            for item in items:
                pos, neg = score(item["caption"]), score(item["negative_caption"])
                wins += 1.0 if pos > neg + tolerance else 0.0 if neg > pos + tolerance else 0.5
            accuracy[name] = wins / len(items) if items else None
        results[path.stem] = dict(accuracy, n=len(items))
    return results
