"""open_clip_c2lip.demo.world: seeded scenes, captions, rendering and the held-out colour-shape block."""
import random

import numpy as np
import pytest

from open_clip_c2lip.demo.world import (COLOURS, SHAPES, Obj, Scene, WorldSpec, balanced_scenes, held_out_blocks,
                                        held_out_pairs, phrase, render, sample_scene, scene_pairs)

SPEC = WorldSpec()


def _scenes(count, seed=0, spec=SPEC, **options):
    rng = random.Random(seed)
    return [sample_scene(spec, rng, **options) for _ in range(count)]


def test_scenes_are_seeded_and_follow_the_spec():
    first, again, other = _scenes(200, 1), _scenes(200, 1), _scenes(200, 2)
    assert [s.caption() for s in first] == [s.caption() for s in again]
    assert [s.caption() for s in first] != [s.caption() for s in other]
    counts = set()
    for scene in first:
        counts.add(len(scene.objects))
        assert len({o.cell for o in scene.objects}) == len(scene.objects)  # never overlapping
        assert len({o.shape for o in scene.objects}) == len(scene.objects)  # shapes name objects
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        assert all(0 <= d <= SPEC.jitter for o in scene.objects for d in o.offset)
        assert {o.shape for o in scene.objects} <= set(SPEC.shapes)
        assert {o.colour for o in scene.objects} <= set(SPEC.colours)
        assert sorted(scene.order) == list(range(len(scene.objects)))
    assert counts == set(range(SPEC.min_objects, SPEC.max_objects + 1))


def test_caption_lists_every_object_once():
    for scene in _scenes(100):
        phrases = scene.caption().replace(" and ", ", ").split(", ")
        assert sorted(phrases) == sorted(o.phrase for o in scene.objects)
    assert Obj("circle", "orange", 0).phrase == phrase("orange", "circle") == "an orange circle"
    assert Obj("bar", "red", 0).pair == ("red", "bar")


def test_render_paints_each_object_in_its_cell_only():
    cell = SPEC.image_size // SPEC.grid
    for scene in _scenes(30, seed=3):
        pixels = np.asarray(render(scene, SPEC))
        assert pixels.shape == (SPEC.image_size, SPEC.image_size, 3)
        painted = set()
        for obj in scene.objects:
            row, col = divmod(obj.cell, SPEC.grid)
            block = pixels[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell].reshape(-1, 3)
            colour_pixels = (block == np.array(COLOURS[obj.colour])).all(-1).sum()
            assert colour_pixels >= 20, (obj, colour_pixels)
            # jitter moves the object inside its cell only: all of its colour is in the cell
            assert colour_pixels == (pixels == np.array(COLOURS[obj.colour])).all(-1).sum()
            painted.add(obj.cell)
        for index in set(range(SPEC.grid ** 2)) - painted:  # empty cells are pure background
            row, col = divmod(index, SPEC.grid)
            assert (pixels[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] == np.array(SPEC.background)).all()


def test_shapes_differ_in_pixels():
    spec = WorldSpec(shapes=tuple(SHAPES), max_objects=1, min_objects=1, colours=("red", "blue"), held_out_block=0)
    masks = {}
    for shape in spec.shapes:
        pixels = np.asarray(render(Scene([Obj(shape, "red", 0)], [0]), spec))
        masks[shape] = (pixels == np.array(COLOURS["red"])).all(-1)
    shapes = list(masks)
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            assert (masks[a] != masks[b]).sum() >= 10, (a, b)


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="unknown shapes"):
        WorldSpec(shapes=("circle", "blob"))
    with pytest.raises(ValueError, match="distinct_shapes"):
        WorldSpec(shapes=("circle", "square"), colours=("red", "blue"), max_objects=3, held_out_block=1)
    with pytest.raises(ValueError, match="distinct_colours"):
        WorldSpec(colours=("red", "blue"), distinct_colours=True, max_objects=3, held_out_block=1)
    with pytest.raises(ValueError, match="held_out_block"):
        WorldSpec(held_out_block=4)  # a held-out colour would have no trained shape left
    with pytest.raises(ValueError, match="no room"):
        WorldSpec(jitter=40)


def test_held_out_pairs_are_a_block_that_differs_between_consecutive_worlds():
    blocks = held_out_blocks(SPEC)
    assert len(blocks) == 36 == len(set(blocks))  # C(4, 2) colour pairs x C(4, 2) shape pairs
    for seed in range(36):
        held = held_out_pairs(SPEC, seed)
        colours, shapes = {c for c, _ in held}, {s for _, s in held}
        assert len(colours) == len(shapes) == 2 and held == {(c, s) for c in colours for s in shapes}
    # 36 consecutive world seeds hold out 36 different sets; the old one-per-colour-and-shape draw had 24
    assert len({held_out_pairs(SPEC, seed) for seed in range(200, 236)}) == 36
    assert held_out_pairs(SPEC, 3) == held_out_pairs(SPEC, 3 + 36)
    assert held_out_pairs(WorldSpec(held_out_block=0), 3) == frozenset()
    three = WorldSpec(shapes=("square", "bar", "pole", "ring", "cross"), colours=("red", "green", "blue", "yellow"),
                      held_out_block=3)
    assert len(held_out_blocks(three)) == 4 * 10 and len(held_out_pairs(three, 0)) == 9


def test_held_out_pairs_never_reach_training_and_counts_stay_balanced():
    held = held_out_pairs(SPEC, 3)
    scenes = balanced_scenes(SPEC, 3000, random.Random(0), avoid=held)
    seen = {p for s in scenes for p in scene_pairs(s)}
    assert not seen & held
    # every other pair is seen, so each held-out pair's colour and shape are both known
    assert seen == {(c, s) for c in SPEC.colours for s in SPEC.shapes} - held
    counts = np.bincount([len(s.objects) for s in scenes])[SPEC.min_objects:]
    assert counts.max() - counts.min() <= 1


def test_required_draws_exactly_that_many_held_out_objects():
    held = held_out_pairs(SPEC, 0)
    for required in (1, 2):
        scenes = _scenes(300, seed=required, require=held, required=required)
        assert all(len(scene_pairs(s) & held) == required for s in scenes)
    # two held-out objects of a 2 x 2 block always form a diagonal: the swap of their colours is the other one
    for scene in _scenes(100, seed=5, require=held, required=2):
        (c1, s1), (c2, s2) = sorted(scene_pairs(scene) & held)
        assert {(c1, s2), (c2, s1)} <= held and c1 != c2 and s1 != s2
    with pytest.raises(ValueError, match="required"):
        sample_scene(SPEC, random.Random(0), require=held, required=3, count=2)
