"""A seeded synthetic world of coloured shapes with captions that list them.

Each scene puts a few objects (shape x colour) on distinct cells of a square grid; with the default
64 px image and 4 x 4 grid every object fills one 16 px ViT patch. Captions list every object in
random order ("a red bar, a green ring and a blue square"). A bag-of-words model can match
such captions by their words alone but cannot tell which colour belongs to which shape, the
binding failure C2LIP targets.
"""
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

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
    """What a world may contain; the default is the demo's world (see benchmarks/demo.md)."""
    # Shapes whose pixel masks differ a lot, so they are as easy to see as colours; every scene
    # shows each colour exactly once, so neither the set of colours nor the object count is a
    # shortcut and captions differ only in which shapes are present and which colour each has
    # (benchmarks/demo.md explains why the looser worlds failed).
    shapes: Tuple[str, ...] = ("square", "bar", "pole", "ring")
    colours: Tuple[str, ...] = ("red", "green", "blue")
    image_size: int = 64
    grid: int = 4
    min_objects: int = 3
    max_objects: int = 3
    margin: int = 2
    background: Tuple[int, int, int] = (128, 128, 128)
    # Shapes never repeat within a scene, so every object is named unambiguously by its shape.
    distinct_shapes: bool = True
    distinct_colours: bool = True

    def __post_init__(self):
        unknown = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colours if c not in COLOURS]
        if unknown:
            raise ValueError(f"unknown shapes/colours {unknown}; known: {sorted(SHAPES)} / {sorted(COLOURS)}")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= grid^2, got "
                             f"{self.min_objects}, {self.max_objects}, grid {self.grid}")
        if self.distinct_shapes and self.max_objects > len(self.shapes):
            raise ValueError(f"distinct_shapes needs at least max_objects={self.max_objects} shapes")
        if self.distinct_colours and self.max_objects > len(self.colours):
            raise ValueError(f"distinct_colours needs at least max_objects={self.max_objects} colours")
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} is not a multiple of grid {self.grid}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    cell: int

    @property
    def phrase(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape}"


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


def sample_scene(spec: WorldSpec, rng: random.Random) -> Scene:
    """Draw one scene: object count, cells, attributes and caption order."""
    count = rng.randint(spec.min_objects, spec.max_objects)
    cells = rng.sample(range(spec.grid * spec.grid), count)
    shapes = rng.sample(spec.shapes, count) if spec.distinct_shapes else rng.choices(spec.shapes, k=count)
    colours = rng.sample(spec.colours, count) if spec.distinct_colours else rng.choices(spec.colours, k=count)
    objects = [Obj(s, c, cell) for s, c, cell in zip(shapes, colours, cells)]
    order = list(range(count))
    rng.shuffle(order)
    return Scene(objects, order)


def render(scene: Scene, spec: WorldSpec) -> Image.Image:
    """RGB image ``[size, size]`` of the scene, one object per grid cell."""
    image = Image.new("RGB", (spec.image_size, spec.image_size), spec.background)
    draw = ImageDraw.Draw(image)
    cell_size = spec.image_size // spec.grid
    for obj in scene.objects:
        row, col = divmod(obj.cell, spec.grid)
        x0, y0 = col * cell_size + spec.margin, row * cell_size + spec.margin
        x1, y1 = x0 + cell_size - 1 - 2 * spec.margin, y0 + cell_size - 1 - 2 * spec.margin
        SHAPES[obj.shape](draw, (x0, y0, x1, y1), COLOURS[obj.colour])
    return image
