"""Held-out evaluation sets of the synthetic world, in SugarCrepe's on-disk format.

Each split pairs an unseen image with its true caption and a hard negative caption:

- ``swap_att``: two objects swap colours (same bag of words; only binding separates them);
- ``replace_att``: one object gets a colour absent from the image;
- ``replace_obj``: one object gets a shape absent from the image;
- ``add_obj``: an absent object (a shape the image lacks) is added to the caption.

Two kinds of sets (``novel``):

- *seen* (``novel=False``): scenes and negatives use trained pairs only; no negative names a
  held-out pair.
- *novel* (``novel=True``): every scene shows held-out pairs, alternately two of them (a diagonal
  of the held-out block) and exactly one. ``swap_att``, ``replace_att`` and ``replace_obj`` change
  a held-out object into *another held-out pair* (novel against novel), so the caption and its
  negative name equally many never-seen pairs and no image-blind rule separates them
  (``blind.py``). ``add_obj`` adds a trained pair: its negative is longer by construction, a cue
  inherent to the category, reported beside its accuracy.

Novel sets also hold two single-phrase probes in ``<root>/probes/`` (same item format):

- ``novel_half``: a held-out object's phrase against the phrase that gives it the colour (or the
  shape) of another object of the image, itself a held-out pair ("a red bar" vs "a blue bar" when
  the image shows a red bar and a blue ring, and red bar and blue bar are both held out): binding
  of a never-seen pair, never-seen against never-seen;
- ``phrase_probe``: a phrase against its swap with another object of the image, balanced between
  items whose true phrase is held out and the false one trained (``kind`` ``novel_true``) and the
  reverse (``familiar_true``), equal counts. A familiarity preference wins one half and loses the
  other; the halves' accuracies differ by the model's familiarity bias.

Layout (the eval suite's contract): ``<root>/val2017/<file>.jpg``,
``<root>/sugarcrepe/<split>.json`` and ``<root>/probes/<name>.json`` =
``{"<id>": {"filename", "caption", "negative_caption"[, "kind"]}, ...}``, plus
``<root>/retrieval.json`` = ``[{"filename", "caption", "match", "objects"}]`` for image<->text
retrieval, where items with equal ``match`` (the same objects; positions are never captioned) count
as interchangeable answers; ``objects`` (shape, colour, cell, offset) locate each named object for
the attention measurement (``attention.py``).
"""
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from .world import Pair, Scene, WorldSpec, join_phrases, phrase, render, sample_scene, scene_key


@dataclass(frozen=True)
class Candidate:
    """One possible negative: its objects in caption order, the image's pairs it alters and the
    pairs it names instead."""
    pairs: Tuple[Pair, ...]
    changed: Tuple[Pair, ...]
    new: Tuple[Pair, ...]

    @property
    def caption(self) -> str:
        return caption_of(self.pairs)


def caption_of(pairs: Sequence[Pair]) -> str:
    return join_phrases([phrase(colour, shape) for colour, shape in pairs])


def _ordered(scene: Scene) -> List[Pair]:
    return [scene.objects[i].pair for i in scene.order]


def swap_att(scene: Scene, spec: WorldSpec) -> List[Candidate]:
    """Swap the colours of two objects that differ in both shape and colour."""
    pairs, out = _ordered(scene), []
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            (ci, si), (cj, sj) = pairs[i], pairs[j]
            if ci != cj and si != sj:
                swapped = list(pairs)
                swapped[i], swapped[j] = (cj, si), (ci, sj)
                out.append(Candidate(tuple(swapped), (pairs[i], pairs[j]), ((cj, si), (ci, sj))))
    return out


def _replace(scene: Scene, values: Sequence[str], index: int) -> List[Candidate]:
    """Give one object a value of attribute ``index`` (0 colour, 1 shape) that no object of the image has."""
    pairs = _ordered(scene)
    absent = [v for v in values if v not in {p[index] for p in pairs}]
    out = []
    for i, old in enumerate(pairs):
        for value in absent:
            new = (value, old[1]) if index == 0 else (old[0], value)
            out.append(Candidate(tuple(pairs[:i] + [new] + pairs[i + 1:]), (old,), (new,)))
    return out


def replace_att(scene: Scene, spec: WorldSpec) -> List[Candidate]:
    """Give one object a colour that no object of the image has."""
    return _replace(scene, spec.colours, 0)


def replace_obj(scene: Scene, spec: WorldSpec) -> List[Candidate]:
    """Give one object a shape that no object of the image has."""
    return _replace(scene, spec.shapes, 1)


def add_obj(scene: Scene, spec: WorldSpec) -> List[Candidate]:
    """Insert an object whose shape the image lacks at any position of the caption.

    With distinct colours (every training caption names each colour at most once) the added
    object takes a colour the image lacks too, so a repeated colour word cannot give it away.
    """
    pairs = _ordered(scene)
    shapes = [s for s in spec.shapes if s not in {p[1] for p in pairs}]
    colours = [c for c in spec.colours if not spec.distinct_colours or c not in {p[0] for p in pairs}]
    return [Candidate(tuple(pairs[:at] + [(colour, shape)] + pairs[at:]), (), ((colour, shape),))
            for shape in shapes for colour in colours for at in range(len(pairs) + 1)]


# split -> every negative of that kind a scene admits
NEGATIVES: Dict[str, Callable[[Scene, WorldSpec], List[Candidate]]] = {
    "swap_att": swap_att,
    "replace_att": replace_att,
    "replace_obj": replace_obj,
    "add_obj": add_obj,
}


def allowed(candidate: Candidate, held_out: AbstractSet[Pair], novel: bool) -> bool:
    """The set's rule: in a novel set a negative that alters objects must alter held-out objects into
    held-out pairs (novel against novel); otherwise it names no held-out pair at all."""
    if novel and candidate.changed:
        return all(p in held_out for p in candidate.changed + candidate.new)
    return not set(candidate.new) & set(held_out)


class FrequencyBalance:
    """Keeps a frequency prior at chance: per split, about as many negatives whose new pairs are more
    frequent in training than the pairs they replace as negatives whose new pairs are rarer.

    ``pair_counts``: training frequency of each pair. Each negative is drawn from the side (mean
    add-one smoothed log frequency of its pairs below / above the caption's) that has fewer
    negatives so far, when the scene offers one there, else from the other side.
    """

    def __init__(self, pair_counts: Mapping[Pair, int]):
        self.pair_counts = pair_counts
        self.sides: Dict[str, List[int]] = {}

    def mean_log(self, pairs: Sequence[Pair]) -> float:
        """Mean add-one smoothed log training frequency of ``pairs`` (the phrase prior's score)."""
        return sum(math.log(self.pair_counts.get(pair, 0) + 1) for pair in pairs) / len(pairs)

    def pick(self, split: str, caption: Sequence[Pair], options: Sequence[Candidate],
             rng: random.Random) -> Candidate:
        counts = self.sides.setdefault(split, [0, 0])  # [rarer, more frequent]
        base = self.mean_log(caption)
        shifts = [self.mean_log(c.pairs) - base for c in options]
        sides = [[c for c, d in zip(options, shifts) if d < 0], [c for c, d in zip(options, shifts) if d > 0]]
        want = 0 if counts[0] <= counts[1] else 1
        for side in (want, 1 - want):
            if sides[side]:
                counts[side] += 1
                return rng.choice(sides[side])
        return rng.choice(options)  # every option as frequent as what it replaces


def make_negative(split: str, scene: Scene, spec: WorldSpec, rng: random.Random,
                  held_out: AbstractSet[Pair] = frozenset(), novel: bool = False,
                  balance: Optional[FrequencyBalance] = None) -> Optional[str]:
    """A negative caption of ``split`` drawn from those :func:`allowed` (uniformly, or by
    ``balance``); None if none is."""
    if split not in NEGATIVES:
        raise ValueError(f"unknown eval split {split!r}; known: {sorted(NEGATIVES)}")
    options = [c for c in NEGATIVES[split](scene, spec) if allowed(c, held_out, novel)]
    if not options:
        return None
    chosen = balance.pick(split, _ordered(scene), options, rng) if balance is not None else rng.choice(options)
    return chosen.caption


# ------------------------------------------------------------------------------------------------
# single-phrase probes

PROBES = ("novel_half", "phrase_probe")
PROBE_KINDS = {(True, True): "novel_half", (True, False): "novel_true", (False, True): "familiar_true"}


def phrase_swaps(scene: Scene) -> List[Tuple[Pair, Pair]]:
    """(true pair, false pair) for every object and every other object of the image that differs in
    colour and shape: the object with the other's colour, and with the other's shape."""
    out = []
    for a in scene.objects:
        for b in scene.objects:
            if a.colour != b.colour and a.shape != b.shape:
                out += [(a.pair, (b.colour, a.shape)), (a.pair, (a.colour, b.shape))]
    return out


def probe_items(scene: Scene, held_out: AbstractSet[Pair], rng: random.Random) -> Dict[str, Tuple[str, str]]:
    """At most one (true phrase, false phrase) per probe kind of ``PROBE_KINDS`` for this scene."""
    by_kind: Dict[str, List[Tuple[Pair, Pair]]] = {}
    for true, false in phrase_swaps(scene):
        kind = PROBE_KINDS.get((true in held_out, false in held_out))
        if kind:
            by_kind.setdefault(kind, []).append((true, false))
    return {kind: tuple(phrase(*p) for p in rng.choice(options)) for kind, options in sorted(by_kind.items())}


def _balanced(items: Dict[str, List[dict]], rng: random.Random) -> List[dict]:
    """Equally many items of each kind (a seeded subset of the larger ones), in image order."""
    size = min(len(v) for v in items.values())
    kept = [item for kind in sorted(items) for item in rng.sample(items[kind], size)]
    return sorted(kept, key=lambda item: (item["filename"], item["kind"]))


# ------------------------------------------------------------------------------------------------
# writing a set

def write_eval_sets(root: str, spec: WorldSpec, num_images: int, seed: int,
                    splits: Sequence[str] = tuple(NEGATIVES), exclude: Optional[AbstractSet] = None,
                    held_out: AbstractSet[Pair] = frozenset(), novel: bool = False,
                    pair_counts: Optional[Mapping[Pair, int]] = None, progress: bool = False) -> Dict[str, int]:
    """Render ``num_images`` distinct scenes under ``root`` and write one SugarCrepe JSON per split.

    Scenes whose ``scene_key`` is in ``exclude`` (the training scenes) or already in this set are
    redrawn, so every image is unseen and occurs once. ``novel=False``: scenes avoid the
    ``held_out`` pairs; ``novel=True``: even-numbered scenes show two held-out pairs (one when the
    block is 1 x 1), odd-numbered ones exactly one, and the probes are written too. Negatives follow
    :func:`allowed`, balanced on the training ``pair_counts`` when given (:class:`FrequencyBalance`).
    A scene that cannot host a split's negative is left out of that split only.
    Returns the item count of each split and probe, of ``retrieval``, of ``redrawn_train`` scenes
    (seen in training) and ``redrawn_duplicate`` scenes (drawn twice here).
    """
    exclude = exclude or set()
    unknown = [s for s in splits if s not in NEGATIVES]
    if unknown:
        raise ValueError(f"unknown eval splits {unknown}; known: {sorted(NEGATIVES)}")
    if novel and not held_out:
        raise ValueError("a novel set needs held-out pairs")
    held_out = frozenset(held_out)
    block = len({c for c, _ in held_out})
    root_path = Path(root)
    for folder in ("val2017", "sugarcrepe") + (("probes",) if novel else ()):
        (root_path / folder).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items: Dict[str, Dict[str, dict]] = {split: {} for split in splits}
    probes: Dict[str, List[dict]] = {kind: [] for kind in PROBE_KINDS.values()}
    retrieval: List[dict] = []
    scenes = range(num_images)
    if progress:
        from tqdm import tqdm
        scenes = tqdm(scenes, desc=f"eval images ({root_path.name})", unit="img")
    drawn: set = set()
    redrawn = {"train": 0, "duplicate": 0}
    balance = FrequencyBalance(pair_counts) if pair_counts is not None else None
    for index in scenes:
        options: dict = {"avoid": held_out}
        if novel:
            required = min(2, block) if index % 2 == 0 else 1
            options = {"require": held_out, "required": required,
                       "count": rng.randint(max(spec.min_objects, required), spec.max_objects)}
        while True:
            scene = sample_scene(spec, rng, **options)
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
        # images with the same objects (positions aside) are equally right answers for a caption
        retrieval.append({"filename": filename, "caption": caption,
                          "match": join_phrases(sorted(o.phrase for o in scene.objects)),
                          "objects": [{"shape": o.shape, "colour": o.colour, "cell": o.cell,
                                       "offset": list(o.offset)} for o in scene.objects]})
        for split in splits:
            negative = make_negative(split, scene, spec, rng, held_out, novel, balance)
            if negative is not None:
                if negative == caption:
                    raise AssertionError(f"{split} negative equals the caption for {filename}: {caption!r}")
                items[split][str(index)] = {"filename": filename, "caption": caption,
                                            "negative_caption": negative}
        if novel:
            for kind, (true, false) in probe_items(scene, held_out, rng).items():
                probes[kind].append({"filename": filename, "caption": true, "negative_caption": false,
                                     "kind": kind})
    for split, split_items in items.items():
        if not split_items:  # e.g. replace_att when every scene shows every colour: no file, count 0
            continue
        with open(root_path / "sugarcrepe" / f"{split}.json", "w") as f:
            json.dump(split_items, f, indent=1)
    counts = {split: len(split_items) for split, split_items in items.items()}
    if novel:
        written = {"novel_half": probes["novel_half"]}
        halves = {kind: probes[kind] for kind in ("novel_true", "familiar_true")}
        written["phrase_probe"] = _balanced(halves, rng) if all(halves.values()) else []
        for name, probe in written.items():
            counts[name] = len(probe)
            if probe:
                with open(root_path / "probes" / f"{name}.json", "w") as f:
                    json.dump({str(i): item for i, item in enumerate(probe)}, f, indent=1)
    with open(root_path / "retrieval.json", "w") as f:
        json.dump(retrieval, f, indent=1)
    counts["retrieval"] = len(retrieval)
    counts["redrawn_train"] = redrawn["train"]
    counts["redrawn_duplicate"] = redrawn["duplicate"]
    return counts


def caption_phrases(caption: str) -> List[str]:
    """The object phrases of a world caption ('a red bar, a blue ring and ...' -> ['a red bar', ...])."""
    return caption.replace(" and ", ", ").split(", ")


def phrase_pairs(caption: str) -> FrozenSet[Pair]:
    """(colour, shape) of every object phrase of a world caption."""
    return frozenset(tuple(p.split()[1:3]) for p in caption_phrases(caption))


def item_files(root) -> Dict[str, Path]:
    """Every pair-choice file of a set: ``{split or probe name: path}``, SugarCrepe splits first."""
    root = Path(root)
    files = {p.stem: p for p in sorted((root / "sugarcrepe").glob("*.json"))}
    files.update({p.stem: p for p in sorted((root / "probes").glob("*.json"))})
    return files
