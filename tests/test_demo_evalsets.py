"""open_clip_c2lip.demo.evalsets: negatives, the novel-against-novel rule, probes and the on-disk sets."""
import json
import random
from collections import Counter

import pytest

from open_clip_c2lip.demo import evalsets
from open_clip_c2lip.demo.world import WorldSpec, balanced_scenes, held_out_pairs, sample_scene, scene_key

SPEC = WorldSpec()
# A looser world than the default, where every split's negative can be built.
LOOSE = WorldSpec(shapes=("circle", "square", "triangle", "cross", "ring"), colours=("red", "green", "blue", "yellow"),
                  min_objects=2, max_objects=4, distinct_colours=False, grid=4, jitter=0, held_out_block=0)


def _scenes(count, seed=0, spec=SPEC, **options):
    rng = random.Random(seed)
    return [sample_scene(spec, rng, **options) for _ in range(count)]


def _words(caption):
    return sorted(caption.replace(",", " ").replace(" and ", " ").split())


def _pairs(caption):
    return sorted(tuple(p.split()[1:]) for p in evalsets.caption_phrases(caption))


def test_negatives_change_what_each_split_promises():
    rng = random.Random(0)
    made = Counter()
    for scene in _scenes(300, seed=5, spec=LOOSE):
        caption = scene.caption()
        truth = sorted(o.pair for o in scene.objects)
        colours, shapes = {o.colour for o in scene.objects}, {o.shape for o in scene.objects}
        for name in evalsets.NEGATIVES:
            negative = evalsets.make_negative(name, scene, LOOSE, rng)
            if negative is None:
                continue
            made[name] += 1
            claimed = _pairs(negative)
            assert negative != caption and claimed != truth
            if name == "swap_att":
                assert _words(negative) == _words(caption)  # same bag of words: only binding differs
                assert sum(a != b for a, b in zip(claimed, truth)) >= 1
            elif name == "replace_att":
                assert len(claimed) == len(truth) and len({c for c, _ in claimed} - colours) == 1
            elif name == "replace_obj":
                assert len(claimed) == len(truth) and len({s for _, s in claimed} - shapes) == 1
            elif name == "add_obj":
                assert len(claimed) == len(truth) + 1 and len({s for _, s in claimed} - shapes) == 1
    assert all(made[name] > 50 for name in evalsets.NEGATIVES), made
    with pytest.raises(ValueError, match="unknown eval split"):
        evalsets.make_negative("swap_obj", scene, LOOSE, rng)


def test_candidates_are_every_negative_of_their_kind():
    scene = sample_scene(LOOSE, random.Random(7), count=3)
    n, shapes, colours = 3, len({o.shape for o in scene.objects}), len({o.colour for o in scene.objects})
    swaps = sum(a.colour != b.colour and a.shape != b.shape
                for i, a in enumerate(scene.objects) for b in scene.objects[i + 1:])
    assert len(evalsets.swap_att(scene, LOOSE)) == swaps
    assert len(evalsets.replace_att(scene, LOOSE)) == n * (len(LOOSE.colours) - colours)
    assert len(evalsets.replace_obj(scene, LOOSE)) == n * (len(LOOSE.shapes) - shapes)
    assert len(evalsets.add_obj(scene, LOOSE)) == (len(LOOSE.shapes) - shapes) * len(LOOSE.colours) * (n + 1)


def test_add_obj_never_repeats_a_colour_word():
    rng = random.Random(2)
    made = 0
    for scene in _scenes(200, seed=4):
        negative = evalsets.make_negative("add_obj", scene, SPEC, rng)
        if negative is None:
            assert len(scene.objects) == len(SPEC.shapes)
            continue
        made += 1
        colours = [c for c, _ in _pairs(negative)]
        assert len(set(colours)) == len(colours) == len(scene.objects) + 1
    assert made > 100


def test_novel_negatives_turn_held_out_pairs_into_held_out_pairs():
    held = held_out_pairs(SPEC, 0)
    rng = random.Random(1)
    made = Counter()
    for required in (1, 2):
        for scene in _scenes(300, seed=required, require=held, required=required):
            shown = {o.pair for o in scene.objects}
            for name in ("swap_att", "replace_att", "replace_obj"):
                negative = evalsets.make_negative(name, scene, SPEC, rng, held, novel=True)
                if negative is None:
                    continue
                made[name, required] += 1
                named = set(_pairs(negative))
                removed, added = shown - named, named - shown
                assert removed and removed <= held and added <= held, (name, scene.caption(), negative)
                # caption and negative name equally many never-seen pairs
                assert len(named & held) == len(shown & held)
            negative = evalsets.make_negative("add_obj", scene, SPEC, rng, held, novel=True)
            if negative is not None:
                assert not (set(_pairs(negative)) - shown) & held
    # swaps need both held-out objects of a diagonal; a recolouring needs the other block colour absent
    assert made["swap_att", 2] > 250 and made["swap_att", 1] == 0
    assert made["replace_att", 1] > 50 and made["replace_obj", 1] > 50 and made["replace_att", 2] == 0


def test_seen_negatives_never_name_a_held_out_pair():
    held = held_out_pairs(SPEC, 0)
    rng = random.Random(3)
    for scene in _scenes(300, seed=3, avoid=held):
        for name in evalsets.NEGATIVES:
            negative = evalsets.make_negative(name, scene, SPEC, rng, held)
            assert negative is None or not set(_pairs(negative)) & held


def test_probe_kinds_follow_what_is_held_out():
    held = held_out_pairs(SPEC, 0)
    rng = random.Random(0)
    kinds = Counter()
    for required in (1, 2):
        for scene in _scenes(200, seed=10 + required, require=held, required=required):
            shown = {o.pair for o in scene.objects}
            colours, shapes = {c for c, _ in shown}, {s for _, s in shown}
            for kind, (true, false) in evalsets.probe_items(scene, held, rng).items():
                kinds[kind] += 1
                t, f = tuple(true.split()[1:]), tuple(false.split()[1:])
                assert t in shown and f not in shown and f[0] in colours and f[1] in shapes  # a swap: binding
                assert (t == f) is False and (t[0] == f[0]) != (t[1] == f[1])  # one attribute changed
                assert evalsets.PROBE_KINDS[t in held, f in held] == kind
    assert set(kinds) == {"novel_half", "novel_true", "familiar_true"} and min(kinds.values()) > 50


def _world(tmp_path, seed=0, num_eval=200):
    held = held_out_pairs(SPEC, seed)
    train = balanced_scenes(SPEC, 3000, random.Random(seed), avoid=held)
    keys = {scene_key(s) for s in train}
    counts = Counter(o.pair for s in train for o in s.objects)
    sets = {}
    for name, novel in (("seen", False), ("unseen", True)):
        sets[name] = evalsets.write_eval_sets(str(tmp_path / name), SPEC, num_eval, seed=seed + 1 + novel, exclude=keys,
                                              held_out=held, novel=novel, pair_counts=counts)
    return held, [s.caption() for s in train], sets


def test_written_sets_follow_their_rules(tmp_path):
    held, train_captions, counts = _world(tmp_path)
    assert set(evalsets.item_files(tmp_path / "seen")) == set(evalsets.NEGATIVES)
    assert set(evalsets.item_files(tmp_path / "unseen")) == set(evalsets.NEGATIVES) | set(evalsets.PROBES)
    retrieval = json.loads((tmp_path / "unseen" / "retrieval.json").read_text())
    novel = [sum((o["colour"], o["shape"]) in held for o in item["objects"]) for item in retrieval]
    assert novel == [2 if i % 2 == 0 else 1 for i in range(len(novel))]  # diagonal and single scenes alternate
    probe = json.loads((tmp_path / "unseen" / "probes" / "phrase_probe.json").read_text()).values()
    halves = Counter(item["kind"] for item in probe)
    assert halves["novel_true"] == halves["familiar_true"] == counts["unseen"]["phrase_probe"] // 2 > 30
    for name, path in evalsets.item_files(tmp_path / "unseen").items():
        items = json.loads(path.read_text())
        assert len(items) == counts["unseen"][name] > 0
        for item in items.values():
            assert (tmp_path / "unseen" / "val2017" / item["filename"]).is_file()
    # no evaluation caption occurs in training; no held-out pair does
    captions = {item["caption"] for item in retrieval}
    assert not captions & set(train_captions)
    assert not {p for c in train_captions for p in evalsets.phrase_pairs(c)} & held


def test_eval_sets_load_in_the_eval_suite(tmp_path):
    from open_clip_c2lip import eval as c2eval
    train_keys = {scene_key(s) for s in _scenes(50, seed=9)}
    counts = evalsets.write_eval_sets(str(tmp_path), SPEC, 40, seed=9, exclude=train_keys)
    assert counts["retrieval"] == 40 and counts["redrawn_train"] >= 1  # same seed: training scenes come back
    splits = [split for split in evalsets.NEGATIVES if counts[split]]
    assert splits == ["swap_att", "replace_att", "replace_obj", "add_obj"]
    images, texts = c2eval.Vocabulary(), c2eval.Vocabulary()
    assert callable(c2eval.load_sugarcrepe(tmp_path, images, texts, splits=splits))
    assert len(images) == len({i["filename"] for i in json.loads((tmp_path / "retrieval.json").read_text())})


def test_eval_images_are_distinct_and_duplicates_counted(tmp_path):
    # a tiny world (2 cells, 2 shapes, 2 colours, no jitter) forces duplicate draws
    spec = WorldSpec(shapes=("square", "ring"), colours=("red", "blue"), grid=2, min_objects=1, max_objects=2,
                     jitter=0, held_out_block=0)
    counts = evalsets.write_eval_sets(str(tmp_path), spec, 20, seed=0)
    assert counts["redrawn_duplicate"] > 0
    items = json.loads((tmp_path / "retrieval.json").read_text())
    keys = [frozenset((o["shape"], o["colour"], o["cell"], tuple(o["offset"])) for o in i["objects"]) for i in items]
    assert len(set(keys)) == len(keys) == 20
    with pytest.raises(RuntimeError, match="distinct unseen scenes"):
        evalsets.write_eval_sets(str(tmp_path / "too_many"), spec, 200, seed=0)


def test_bad_requests_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown eval splits"):
        evalsets.write_eval_sets(str(tmp_path), SPEC, 2, seed=0, splits=["swap_obj"])
    with pytest.raises(ValueError, match="needs held-out pairs"):
        evalsets.write_eval_sets(str(tmp_path), SPEC, 2, seed=0, novel=True)


def test_frequency_balance_alternates_sides():
    counts = {("red", "bar"): 100, ("blue", "bar"): 10, ("green", "bar"): 1000}
    balance = evalsets.FrequencyBalance(counts)
    caption = [("red", "bar")]
    options = [evalsets.Candidate(((c, "bar"),), (("red", "bar"),), ((c, "bar"),)) for c in ("blue", "green")]
    picked = [balance.pick("replace_att", caption, options, random.Random(0)).pairs[0][0] for _ in range(6)]
    assert picked == ["blue", "green"] * 3  # rarer first (tie), then the side with fewer so far
    only_rarer = options[:1]
    assert balance.pick("x", caption, only_rarer, random.Random(0)).pairs[0][0] == "blue"
    assert balance.pick("x", caption, only_rarer, random.Random(0)).pairs[0][0] == "blue"  # no other side: any
