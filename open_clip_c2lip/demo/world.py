"""A seeded synthetic world of coloured shapes with captions that list them.

Each scene puts a few objects (shape x colour) on distinct cells of a square grid; with the default
64 px image and 2 x 2 grid every object fills four 16 px ViT patches. Captions list every object in
random order ("a red bar, a green ring and a blue square"). A bag-of-words model can match
such captions by their words alone but cannot tell which colour belongs to which shape, the
binding failure C2LIP targets.

Each world withholds a block of colour-shape pairs from training (``held_out_pairs``): ``k``
colours x ``k`` shapes, all ``k^2`` combinations. Two objects of the block in one image (different
colours and shapes) swap into two other pairs of the block, so a binding test on held-out pairs can
pit a never-seen pair against a never-seen pair (``evalsets.py``).
"""
import itertools
import random
from dataclasses import asdict, dataclass, field
from typing import AbstractSet, Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 190),
    "orange": (245, 130, 20),
    "cyan": (30, 200, 210),
    "pink": (245, 120, 180),
}


def _circle(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    draw.ellipse(box, fill=fill)


def _square(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    draw.rectangle(box, fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _cross(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    arm = max(1, (x1 - x0 + 1) // 3)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    draw.rectangle((cx - arm // 2, y0, cx - arm // 2 + arm - 1, y1), fill=fill)
    draw.rectangle((x0, cy - arm // 2, x1, cy - arm // 2 + arm - 1), fill=fill)


def _ring(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    width = max(1, (box[2] - box[0] + 1) // 5)
    draw.ellipse(box, outline=fill, width=width)


def _bar(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    thickness = max(1, (y1 - y0 + 1) // 3)
    cy = (y0 + y1) // 2
    draw.rectangle((x0, cy - thickness // 2, x1, cy - thickness // 2 + thickness - 1), fill=fill)


def _pole(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    thickness = max(1, (x1 - x0 + 1) // 3)
    cx = (x0 + x1) // 2
    draw.rectangle((cx - thickness // 2, y0, cx - thickness // 2 + thickness - 1, y1), fill=fill)


def _dot(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    radius = max(1, (x1 - x0 + 1) // 6)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)


def _diamond(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)


# Shape name -> drawing function. Names are single nouns spaCy parses as noun-chunk heads.
SHAPES = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "bar": _bar,
    "pole": _pole,
    "dot": _dot,
    "diamond": _diamond,
}


@dataclass(frozen=True)
class WorldSpec:
    """What a world may contain; the default is the demo's world (see benchmarks/demo.md).

    The ``held_out_block`` x ``held_out_block`` colour-shape pairs of :func:`held_out_pairs` (one
    block per world seed) never occur in any training image or caption; the evaluation reports
    scenes that contain them separately (compositional generalization).
    """
    # Shapes whose pixel masks differ a lot (square / bar / pole / ring), so shapes are as easy to
    # see as colours; 32 px objects (a 2 x 2 grid on the 64 px image, 4 ViT patches per object)
    # make them easier still. The object count varies (2-4) so a caption's length says nothing
    # about whether it matches (benchmarks/demo.md: world selection on validation seeds).
    shapes: Tuple[str, ...] = ("square", "bar", "pole", "ring")
    colours: Tuple[str, ...] = ("red", "green", "blue", "yellow")
    image_size: int = 64
    grid: int = 2
    min_objects: int = 2
    max_objects: int = 4
    margin: int = 2
    # each object is shifted by up to ``jitter`` px right/down inside its cell (0: every object of a
    # cell is drawn at the same place); more distinct scenes from the same 2 x 2 grid
    jitter: int = 6
    background: Tuple[int, int, int] = (128, 128, 128)
    # Shapes and colours never repeat within a scene, so every object is named unambiguously by
    # its shape and a colour swap keeps the caption's bag of words.
    distinct_shapes: bool = True
    distinct_colours: bool = True
    # k: k colours x k shapes are held out together (k^2 pairs); every colour and shape keeps at
    # least one trained partner outside the block, so k < min(#colours, #shapes)
    held_out_block: int = 2

    def __post_init__(self):
        unknown = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colours if c not in COLOURS]
        if unknown:
            raise ValueError(f"unknown shapes/colours {unknown}; known: {sorted(SHAPES)} / {sorted(COLOURS)}")
        if len(set(self.shapes)) != len(self.shapes) or len(set(self.colours)) != len(self.colours):
            raise ValueError(f"shapes and colours must not repeat, got {self.shapes} / {self.colours}")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= grid^2, got "
                             f"{self.min_objects}, {self.max_objects}, grid {self.grid}")
        if self.distinct_shapes and self.max_objects > len(self.shapes):
            raise ValueError(f"distinct_shapes needs at least max_objects={self.max_objects} shapes")
        if self.distinct_colours and self.max_objects > len(self.colours):
            raise ValueError(f"distinct_colours needs at least max_objects={self.max_objects} colours")
        if not 0 <= 2 * self.margin + self.jitter < self.image_size // self.grid - 4:
            raise ValueError(f"margin {self.margin} and jitter {self.jitter} leave no room for an object in a "
                             f"{self.image_size // self.grid} px cell")
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} is not a multiple of grid {self.grid}")
        if not 0 <= self.held_out_block < min(len(self.shapes), len(self.colours)):
            raise ValueError(f"held_out_block must be in [0, min(#shapes, #colours) - 1] (each held-out colour and "
                             f"shape keeps a trained partner), got {self.held_out_block}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


Pair = Tuple[str, str]  # (colour, shape)


def held_out_blocks(spec: WorldSpec) -> List[FrozenSet[Pair]]:
    """Every possible held-out set of ``spec``: ``C(#colours, k) * C(#shapes, k)`` blocks (36 for the
    default 4 x 4 world and k = 2), in a fixed seeded order."""
    k = spec.held_out_block
    blocks = [frozenset(itertools.product(colours, shapes))
              for colours in itertools.combinations(spec.colours, k)
              for shapes in itertools.combinations(spec.shapes, k)]
    random.Random("held-out blocks").shuffle(blocks)
    return blocks


def held_out_pairs(spec: WorldSpec, seed: int) -> FrozenSet[Pair]:
    """The (colour, shape) pairs withheld from training in world ``seed``: block ``seed mod B`` of
    :func:`held_out_blocks` (``B`` blocks), so ``B`` consecutive world seeds hold out ``B``
    different sets. Empty when ``spec.held_out_block`` is 0."""
    if spec.held_out_block == 0:
        return frozenset()
    blocks = held_out_blocks(spec)
    return blocks[seed % len(blocks)]

@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    cell: int
    offset: Tuple[int, int] = (0, 0)  # (dx, dy) px inside the cell, each in [0, spec.jitter]

    @property
    def phrase(self) -> str:
        return phrase(self.colour, self.shape)

    @property
    def pair(self) -> Pair:
        return (self.colour, self.shape)


def phrase(colour: str, shape: str) -> str:
    """The object phrase of a caption: 'a red bar', 'an orange ring'."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


@dataclass
class Scene:
    objects: List[Obj] = field(default_factory=list)
    order: List[int] = field(default_factory=list)  # caption order, indices into objects

    def caption(self, objects: Sequence[Obj] = None) -> str:
        """Caption listing ``objects`` (default: this scene's) in the scene's caption order."""
        objects = self.objects if objects is None else objects
        return join_phrases([objects[i].phrase for i in self.order])


def join_phrases(phrases: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _draw(spec: WorldSpec, rng: random.Random, count: int) -> Scene:
    cells = rng.sample(range(spec.grid * spec.grid), count)
    shapes = rng.sample(spec.shapes, count) if spec.distinct_shapes else rng.choices(spec.shapes, k=count)
    colours = rng.sample(spec.colours, count) if spec.distinct_colours else rng.choices(spec.colours, k=count)
    offsets = [(rng.randint(0, spec.jitter), rng.randint(0, spec.jitter)) if spec.jitter else (0, 0)
               for _ in range(count)]
    objects = [Obj(s, c, cell, o) for s, c, cell, o in zip(shapes, colours, cells, offsets)]
    order = list(range(count))
    rng.shuffle(order)
    return Scene(objects, order)


def scene_pairs(scene: Scene) -> FrozenSet[Pair]:
    return frozenset(o.pair for o in scene.objects)


def sample_scene(spec: WorldSpec, rng: random.Random, avoid: AbstractSet[Pair] = frozenset(),
                 require: AbstractSet[Pair] = frozenset(), max_tries: int = 10_000,
                 count: Optional[int] = None, required: Optional[int] = None) -> Scene:
    """Draw one scene: object count, cells, attributes and caption order.

    ``avoid``: no object may be one of these (colour, shape) pairs (training scenes avoid the
    held-out pairs); ``require``: at least one object must be one of them (held-out evaluation
    scenes), exactly ``required`` objects when that is given. ``count``: the object count
    (default: uniform on [min_objects, max_objects]). Rejection sampling; raises if ``max_tries``
    draws all fail.
    """
    # the count is drawn once, outside the rejection loop, so it stays uniform on
    # [min_objects, max_objects] whatever the constraints reject (a caption's length is no cue)
    if count is None:
        count = rng.randint(spec.min_objects, spec.max_objects)
    elif not spec.min_objects <= count <= spec.max_objects:
        raise ValueError(f"count {count} outside [{spec.min_objects}, {spec.max_objects}]")
    if required is not None and not 1 <= required <= count:
        raise ValueError(f"required {required} outside [1, count={count}]")
    for _ in range(max_tries):
        scene = _draw(spec, rng, count)
        pairs = scene_pairs(scene)
        hits = len(pairs & require)
        if pairs & avoid or (require and not hits) or (required is not None and hits != required):
            continue
        return scene
    wanted = f"{required} of" if required is not None else "one of"
    raise ValueError(f"no scene of {count} objects of {spec} avoids {sorted(avoid)} and contains {wanted} "
                     f"{sorted(require)}")


def balanced_scenes(spec: WorldSpec, num: int, rng: random.Random,
                    avoid: AbstractSet[Pair] = frozenset()) -> List[Scene]:
    """``num`` scenes whose object counts are as equal as possible (they differ by at most one), in
    random order: the training set, where the frequency of a caption length must carry no cue."""
    span = spec.max_objects - spec.min_objects + 1
    counts = [spec.min_objects + i % span for i in range(num)]
    rng.shuffle(counts)
    return [sample_scene(spec, rng, avoid=avoid, count=count) for count in counts]


def render(scene: Scene, spec: WorldSpec) -> Image.Image:
    """RGB image ``[size, size]`` of the scene, one object per grid cell."""
    image = Image.new("RGB", (spec.image_size, spec.image_size), spec.background)
    draw = ImageDraw.Draw(image)
    cell_size = spec.image_size // spec.grid
    for obj in scene.objects:
        row, col = divmod(obj.cell, spec.grid)
        size = cell_size - 2 * spec.margin - spec.jitter
        x0 = col * cell_size + spec.margin + obj.offset[0]
        y0 = row * cell_size + spec.margin + obj.offset[1]
        x1, y1 = x0 + size - 1, y0 + size - 1
        SHAPES[obj.shape](draw, (x0, y0, x1, y1), COLOURS[obj.colour])
    return image


SceneKey = FrozenSet[Tuple[str, str, int, Tuple[int, int]]]


def scene_key(scene: Scene) -> SceneKey:
    """What makes two images identical: the set of (shape, colour, cell, offset)."""
    return frozenset((o.shape, o.colour, o.cell, o.offset) for o in scene.objects)
