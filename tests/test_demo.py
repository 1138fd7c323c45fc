"""Tests for the embedded demo (open_clip_c2lip.demo): world, held-out sets (incl. held-out colour-shape
pairs and surface cues), metrics, seed statistics, attention mass, log parsing, and real ``--quick``
runs end to end (world -> shards + spaCy concepts -> two open_clip_train runs -> eval -> results),
twice with one seed (same seed -> same numbers)."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

from open_clip_c2lip.demo import evalsets
from open_clip_c2lip.demo.build import brace_pattern
from open_clip_c2lip.demo.world import scene_key
from open_clip_c2lip.demo.report import comparison_table
from open_clip_c2lip.demo.retrieval import recall_at_k
from open_clip_c2lip.demo.runs import RunSpec, parse_train_log
from open_clip_c2lip.demo.world import (COLOURS, SHAPES, Obj, Scene, WorldSpec, balanced_scenes, held_out_pairs,
                                        render, sample_scene)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SPEC = WorldSpec()


def _scenes(count, seed=0, spec=SPEC):
    rng = random.Random(seed)
    return [sample_scene(spec, rng) for _ in range(count)]


def _words(caption):
    return sorted(caption.replace(",", " ").replace(" and ", " ").split())


# ------------------------------------------------------------------------------------------------
# world

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
        caption = scene.caption()
        phrases = caption.replace(" and ", ", ").split(", ")
        assert sorted(phrases) == sorted(o.phrase for o in scene.objects)
    assert Obj("circle", "orange", 0).phrase == "an orange circle"


def test_render_paints_each_object_in_its_cell_only():
    spec = SPEC
    cell = spec.image_size // spec.grid
    for scene in _scenes(30, seed=3):
        pixels = np.asarray(render(scene, spec))
        assert pixels.shape == (spec.image_size, spec.image_size, 3)
        painted = set()
        for obj in scene.objects:
            row, col = divmod(obj.cell, spec.grid)
            block = pixels[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell].reshape(-1, 3)
            colour_pixels = (block == np.array(COLOURS[obj.colour])).all(-1).sum()
            assert colour_pixels >= 20, (obj, colour_pixels)
            # jitter moves the object inside its cell only: all of its colour is in the cell
            assert colour_pixels == (pixels == np.array(COLOURS[obj.colour])).all(-1).sum()
            painted.add(obj.cell)
        for index in set(range(spec.grid ** 2)) - painted:  # empty cells are pure background
            row, col = divmod(index, spec.grid)
            block = pixels[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell]
            assert (block == np.array(spec.background)).all()


def test_shapes_differ_in_pixels():
    spec = WorldSpec(shapes=tuple(SHAPES), max_objects=1, min_objects=1, colours=("red",), held_out_pairs=0)
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
        WorldSpec(shapes=("circle", "square"), colours=("red", "blue"), max_objects=3)
    with pytest.raises(ValueError, match="distinct_colours"):
        WorldSpec(colours=("red", "blue"), distinct_colours=True, max_objects=3)
    with pytest.raises(ValueError, match="held_out_pairs"):
        WorldSpec(held_out_pairs=5)
    with pytest.raises(ValueError, match="no room"):
        WorldSpec(jitter=40)


def test_held_out_pairs_never_reach_training_and_counts_stay_uniform():
    held = held_out_pairs(SPEC, 3)
    assert held == held_out_pairs(SPEC, 3) and len(held) == SPEC.held_out_pairs
    assert len({c for c, _ in held}) == len({s for _, s in held}) == len(held)  # one per colour and shape
    assert any(held_out_pairs(SPEC, seed) != held for seed in range(4, 10))  # the world seed changes them
    rng = random.Random(0)
    scenes = [sample_scene(SPEC, rng, avoid=held) for _ in range(3000)]
    seen_pairs = {(o.colour, o.shape) for s in scenes for o in s.objects}
    assert not seen_pairs & held
    # every other pair is seen, so each held-out pair's colour and shape are both known
    assert seen_pairs == {(c, s) for c in SPEC.colours for s in SPEC.shapes} - held
    # the constraint rejects more 4-object scenes, but the count is drawn before rejection: uniform
    counts = np.bincount([len(s.objects) for s in scenes], minlength=SPEC.max_objects + 1)[SPEC.min_objects:]
    assert counts.min() > 0.9 * counts.mean(), counts
    required = [sample_scene(SPEC, rng, require=held) for _ in range(200)]
    assert all({(o.colour, o.shape) for o in s.objects} & held for s in required)


# ------------------------------------------------------------------------------------------------
# held-out sets

def _objects_of_caption(caption):
    return sorted(tuple(p.split()[1:]) for p in caption.replace(" and ", ", ").split(", "))


# A looser world than the default, where every split's negative can be built.
LOOSE = WorldSpec(shapes=("circle", "square", "triangle", "cross", "ring"), colours=("red", "green", "blue", "yellow"),
                  min_objects=2, max_objects=4, distinct_colours=False, grid=4, jitter=0, held_out_pairs=0)


def test_negatives_change_what_each_split_promises():
    rng = random.Random(0)
    made = {name: 0 for name in evalsets.NEGATIVES}
    for scene in _scenes(300, seed=5, spec=LOOSE):
        caption = scene.caption()
        truth = sorted((o.colour, o.shape) for o in scene.objects)
        colours, shapes = {o.colour for o in scene.objects}, {o.shape for o in scene.objects}
        for name, make in evalsets.NEGATIVES.items():
            negative = make(scene, LOOSE, rng)
            if negative is None:
                continue
            made[name] += 1
            claimed = _objects_of_caption(negative)
            assert negative != caption and claimed != truth
            if name == "swap_att":
                assert _words(negative) == _words(caption)  # same bag of words: only binding differs
                assert sorted(c for c, _ in claimed) == sorted(o.colour for o in scene.objects)
                assert sum(a != b for a, b in zip(claimed, truth)) >= 1
            elif name == "replace_att":
                assert len(claimed) == len(truth) and len({c for c, _ in claimed} - colours) == 1
            elif name == "replace_obj":
                assert len(claimed) == len(truth) and len({s for _, s in claimed} - shapes) == 1
            elif name == "add_obj":
                assert len(claimed) == len(truth) + 1 and len({s for _, s in claimed} - shapes) == 1
    assert all(count > 50 for count in made.values()), made


def test_add_obj_never_repeats_a_colour_word():
    rng = random.Random(2)
    made = 0
    for scene in _scenes(200, seed=4):
        negative = evalsets.add_obj(scene, SPEC, rng)
        if negative is None:
            assert len(scene.objects) == len(SPEC.shapes)
            continue
        made += 1
        colours = [c for c, _ in _objects_of_caption(negative)]
        assert len(set(colours)) == len(colours) == len(scene.objects) + 1
    assert made > 100


def test_held_out_negatives_change_the_held_out_object():
    held = held_out_pairs(SPEC, 0)
    rng = random.Random(1)
    for scene in [sample_scene(SPEC, rng, require=held) for _ in range(200)]:
        focus = [i for i, o in enumerate(scene.objects) if (o.colour, o.shape) in held]
        truth = _objects_of_caption(scene.caption())
        held_phrases = {tuple(scene.objects[i].phrase.split()[1:]) for i in focus}
        for name in ("swap_att", "replace_att", "replace_obj"):
            negative = evalsets.NEGATIVES[name](scene, SPEC, rng, focus)
            if negative is None:
                continue
            claimed = _objects_of_caption(negative)
            assert claimed != truth
            # the negative no longer claims (at least) one of the image's held-out objects
            assert held_phrases - set(claimed), (name, scene.caption(), negative)


def test_eval_sets_load_in_the_eval_suite(tmp_path):
    from open_clip_c2lip import eval as c2eval
    train_keys = {scene_key(s) for s in _scenes(50, seed=9)}
    counts = evalsets.write_eval_sets(str(tmp_path), SPEC, 40, seed=9, exclude=train_keys)
    assert counts["retrieval"] == 40 and counts["redrawn_train"] >= 1  # same seed: training scenes come back
    splits = [split for split in evalsets.NEGATIVES if counts[split]]
    assert splits == ["swap_att", "replace_att", "replace_obj", "add_obj"]
    for split in splits:
        data = json.loads((tmp_path / "sugarcrepe" / f"{split}.json").read_text())
        assert len(data) == counts[split] > 0
        for key, item in data.items():
            assert key.isdigit() and set(item) == {"filename", "caption", "negative_caption"}
            assert (tmp_path / "val2017" / item["filename"]).is_file()
    images, texts = c2eval.Vocabulary(), c2eval.Vocabulary()
    scorer = c2eval.load_sugarcrepe(tmp_path, images, texts, splits=splits)
    retrieval = json.loads((tmp_path / "retrieval.json").read_text())
    assert len(images) == len({i["filename"] for i in retrieval})
    assert callable(scorer)


def test_eval_images_are_distinct_and_duplicates_counted(tmp_path):
    # a tiny world (2 cells, 2 shapes, 2 colours, no jitter) forces duplicate draws
    spec = WorldSpec(shapes=("square", "ring"), colours=("red", "blue"), grid=2, min_objects=1, max_objects=2,
                     jitter=0, held_out_pairs=0)
    counts = evalsets.write_eval_sets(str(tmp_path), spec, 20, seed=0)
    assert counts["redrawn_duplicate"] > 0
    items = json.loads((tmp_path / "retrieval.json").read_text())
    keys = [frozenset((o["shape"], o["colour"], o["cell"], tuple(o["offset"])) for o in i["objects"]) for i in items]
    assert len(set(keys)) == len(keys) == 20
    with pytest.raises(RuntimeError, match="distinct unseen scenes"):
        evalsets.write_eval_sets(str(tmp_path / "too_many"), spec, 200, seed=0)


def test_text_only_scorers_find_no_surface_cue(tmp_path):
    held = held_out_pairs(SPEC, 0)
    rng = random.Random(0)
    train = balanced_scenes(SPEC, 4000, rng, avoid=held)
    per_count = np.bincount([len(s.objects) for s in train])[SPEC.min_objects:]
    assert per_count.max() - per_count.min() <= 1
    keys = {scene_key(s) for s in train}
    evalsets.write_eval_sets(str(tmp_path / "seen"), SPEC, 400, seed=1, exclude=keys, avoid=held, held_out=held)
    evalsets.write_eval_sets(str(tmp_path / "unseen"), SPEC, 400, seed=2, exclude=keys, require=held, held_out=held)
    for root in ("seen", "unseen"):  # no negative names a held-out pair
        for path in (tmp_path / root / "sugarcrepe").glob("*.json"):
            for item in json.loads(path.read_text()).values():
                new = evalsets.phrase_pairs(item["negative_caption"]) - evalsets.phrase_pairs(item["caption"])
                assert not new & held
    captions = [s.caption() for s in train]
    seen = evalsets.text_only_accuracy(captions, str(tmp_path / "seen"))
    unseen = evalsets.text_only_accuracy(captions, str(tmp_path / "unseen"))
    assert set(seen) == set(unseen) == set(evalsets.NEGATIVES)
    for split, values in seen.items():  # training counts are uniform and phrases balanced: no cue
        assert 0.4 <= values["count"] <= 0.6 and 0.35 <= values["phrases"] <= 0.65, (split, values)
    for split in ("swap_att", "replace_att", "replace_obj"):  # the unseen pair itself is the anti-cue
        assert unseen[split]["phrases"] < 0.2, (split, unseen[split])
    # no held-out caption string (nor any caption naming a held-out pair) occurs in training
    unseen_captions = {i["caption"] for i in json.loads((tmp_path / "unseen" / "retrieval.json").read_text())}
    assert not unseen_captions & set(captions)
    held_phrases = {Obj(s, c, 0).phrase for c, s in held}
    assert not {p for c in captions for p in evalsets.caption_phrases(c)} & held_phrases


def test_text_only_scorers_on_a_known_case(tmp_path):
    (tmp_path / "sugarcrepe").mkdir()
    items = {"0": {"filename": "a.jpg", "caption": "a red bar and a blue ring",
                   "negative_caption": "a red bar, a blue ring and a green pole"},
             "1": {"filename": "b.jpg", "caption": "a red bar and a blue ring",
                   "negative_caption": "a red ring and a blue bar"}}
    (tmp_path / "sugarcrepe" / "add_obj.json").write_text(json.dumps(items))
    train = ["a red bar and a blue ring"] * 3 + ["a red bar, a blue ring and a green pole"]
    result = evalsets.text_only_accuracy(train, str(tmp_path))["add_obj"]
    # count: 2 objects seen 3x, 3 objects 1x -> item 0 right; item 1 same count -> half
    assert result["count"] == pytest.approx((1 + 0.5) / 2)
    # phrases: 'a red ring' / 'a blue bar' unseen -> item 1 right; item 0: mean log freq of
    # (red bar 4, blue ring 4) vs (4, 4, green pole 1): the caption wins
    assert result["phrases"] == pytest.approx(1.0) and result["n"] == 2


def test_unknown_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown eval splits"):
        evalsets.write_eval_sets(str(tmp_path), SPEC, 2, seed=0, splits=["swap_obj"])


# ------------------------------------------------------------------------------------------------
# metrics, logs, report

def _naive_recall(similarity, groups):
    n = len(groups)
    i2t = sum(groups[max(range(n), key=lambda j: similarity[i][j])] == groups[i] for i in range(n)) / n
    t2i = sum(groups[max(range(n), key=lambda i: similarity[i][j])] == groups[j] for j in range(n)) / n
    return i2t, t2i


def test_recall_matches_naive_loops():
    gen = torch.Generator().manual_seed(0)
    for trial in range(5):
        similarity = torch.randn(30, 30, generator=gen)
        similarity += 2.0 * torch.eye(30) * (trial / 4)
        groups = [i % 25 for i in range(30)]  # a few duplicated captions
        got = recall_at_k(similarity, groups, k=1)
        i2t, t2i = _naive_recall(similarity.tolist(), groups)
        assert got["image_to_text_R@1"] == pytest.approx(i2t)
        assert got["text_to_image_R@1"] == pytest.approx(t2i)
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(3, 4), [0, 1, 2])


# The exact f-string of open_clip_train.train.train_one_epoch, filled in.
_LOG_LINE = ("2025-01-01,00:00:00 | INFO | Train Epoch: {epoch} [{seen:>4}/1280 ({pct:.0f}%)] Data (t): 0.001 "
             "Batch (t): 0.250, 256.000/s, 256.000/s/gpu LR: {lr:5f} Logit Scale: {scale:.3f} "
             "Contrastive_loss: {con:#.5g} (6.0000) Npc_loss: {npc:#.5g} (3.0000) Xac_loss: 0.012000 (0.012000) "
             "Loss: {total:#.5g} (9.0000)")


def test_parse_train_log_reads_open_clip_lines():
    lines = ["2025 | INFO | Start epoch 0"]
    expected = []
    for epoch in range(2):
        for batch in (1, 10, 20):
            step = epoch * 20 + batch
            values = dict(con=7.0 - step * 0.01, npc=3.0 - step * 0.001, lr=1e-3 * step / 40, scale=10 + step / 10)
            values["total"] = values["con"] + values["npc"] + 0.012
            lines.append(_LOG_LINE.format(epoch=epoch, seen=batch * 64, pct=batch * 5, **values))
            expected.append((step, values))
    log = parse_train_log(lines, batch_size=64, steps_per_epoch=20)
    assert log.steps == [step for step, _ in expected]
    assert log.losses["contrastive_loss"] == pytest.approx([v["con"] for _, v in expected], abs=1e-4)
    assert log.losses["npc_loss"] == pytest.approx([v["npc"] for _, v in expected], abs=1e-5)
    assert log.losses["loss"] == pytest.approx([v["total"] for _, v in expected], abs=1e-4)
    assert log.lr == pytest.approx([v["lr"] for _, v in expected], abs=1e-6)
    assert log.logit_scale == pytest.approx([v["scale"] for _, v in expected], abs=1e-3)


def test_progress_reads_a_growing_log_incrementally(tmp_path):
    from tqdm import tqdm
    from open_clip_c2lip.demo.runs import _Progress
    log = tmp_path / "run.console.log"
    line = _LOG_LINE.format(epoch=0, seen=640, pct=50, con=5.0, npc=1.0, lr=1e-3, scale=10.0, total=6.0)
    bar = tqdm(total=20, disable=False, file=open(os.devnull, "w"))
    progress = _Progress(bar, log, batch_size=64, steps_per_epoch=20)
    progress.update()  # no file yet
    assert bar.n == 0
    log.write_text("starting\n" + line[:40])  # a line still being written is not parsed
    progress.update()
    assert bar.n == 0
    with open(log, "a") as f:
        f.write(line[40:] + "\n")
    progress.update()
    assert bar.n == 10
    with open(log, "a") as f:
        f.write(line.replace(" 640/1280", "1280/1280") + "\n")
    progress.update()
    assert bar.n == 20 and progress.offset == log.stat().st_size


def test_run_steps_follow_open_clip_rounding():
    spec = RunSpec("x", ["--siglip"], "a.tar", train_num_samples=1000, batch_size=64, lr=1e-3, warmup=1, seed=0)
    assert spec.steps == 16  # ceil(1000 / 64)
    spec.workers = 3
    assert spec.steps == 18  # rounded up to a multiple of workers
    assert spec.command("logs")[:3] == [sys.executable, "-m", "open_clip_c2lip.train"]


def test_failed_training_run_raises_with_its_log(tmp_path):
    from open_clip_c2lip.demo.runs import train
    spec = RunSpec("broken", ["--siglip"], "missing.tar", train_num_samples=8, batch_size=4, lr=1e-3, warmup=1,
                   seed=0, extra_args=["--no-such-flag"])
    with pytest.raises(RuntimeError, match=r"(?s)'broken' failed.*no-such-flag"):
        train(spec, str(tmp_path), progress=False)


def test_cli_rejects_bad_settings():
    from open_clip_c2lip.demo.cli import parse_args
    from open_clip_c2lip.demo.cli import PRESETS
    from open_clip_c2lip.demo.variants import default_study
    args = parse_args(["--quick"])
    assert (args.steps, args.batch_size, args.world) == (PRESETS["quick"].steps, PRESETS["quick"].batch_size, SPEC)
    assert args.seeds == [0] and args.variants == ["siglip", "c2lip"] and not args.study
    assert parse_args(["--steps", "7"]).steps == 7
    study = parse_args(["--seeds", "0", "1", "2"])
    assert study.study and study.seeds == [0, 1, 2] and study.variants == default_study()
    assert {"siglip", "c2lip", "c2lip_span", "npc_only", "xac_only"} <= set(study.variants)
    for bad in (["--num-train", "10", "--batch-size", "64"], ["--shapes", "square", "bar"], ["--steps", "0"],
                ["--seeds", "1", "1"], ["--parallel", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_variants_differ_only_in_their_loss_tail():
    from open_clip_c2lip.demo.cli import parse_args, settings_of
    from open_clip_c2lip.demo.study import expected_seconds, run_specs
    args = parse_args(["--seeds", "0", "1", "--variants", "siglip", "c2lip", "c2lip_span", "npc_only", "xac_only",
                       "dup_ignore"])
    specs = run_specs(settings_of(args), 1, "x.tar")
    commands = {}
    for name, spec in specs.items():
        command = spec.command("logs")
        at = command.index("--name")
        commands[name] = command[:at] + command[at + 2:]
        assert command[command.index("--seed") + 1] == "1"
    common = commands["siglip"][:-1]
    tails = {name: command[len(common):] for name, command in commands.items()}
    assert all(command[:len(common)] == common for command in commands.values())

    def flag(name, key):
        return tails[name][tails[name].index(key) + 1]
    assert flag("c2lip", "--c2lip-concept-mode") == "text" and flag("c2lip_span", "--c2lip-concept-mode") == "span"
    assert float(flag("npc_only", "--c2lip-xac-weight")) == 0 and float(flag("npc_only", "--c2lip-npc-weight")) == 1
    # the ablations differ from c2lip (text mode, the authors' default) in one flag each
    for name, changed in (("npc_only", "--c2lip-xac-weight"), ("xac_only", "--c2lip-npc-weight"),
                          ("dup_ignore", "--c2lip-duplicate-concepts")):
        differing = [key for key in tails[name] if key.startswith("--") and
                     (key not in tails["c2lip"] or flag(name, key) != flag("c2lip", key))]
        assert differing == [changed], (name, differing)
    assert float(flag("xac_only", "--c2lip-npc-weight")) == 0 and float(flag("xac_only", "--c2lip-xac-weight")) == 0.01
    assert expected_seconds(settings_of(args)) > 0


def test_brace_pattern():
    paths = [f"/d/train-{i:06d}.tar" for i in range(3)]
    assert brace_pattern(paths) == "/d/train-{000000..000002}.tar"
    assert brace_pattern(paths[:1]) == "/d/train-000000.tar"
    import braceexpand
    assert list(braceexpand.braceexpand(brace_pattern(paths))) == paths


def test_comparison_table_has_a_row_per_metric():
    run = {"sugarcrepe": {"swap_att": {"acc": 0.5, "n": 10}},
           "retrieval": {"image_to_text_R@1": 0.25, "text_to_image_R@1": 0.125, "n": 8},
           "curves": {"losses": {"contrastive_loss": [7.0, 3.0]}}}
    table = comparison_table({"siglip": run, "c2lip": run}, ["swap_att"])
    lines = table.splitlines()
    assert lines[0] == "| metric | n | siglip | c2lip |"
    assert "| swap_att acc | 10 | 50.0 | 50.0 |" in lines
    assert "| image→text R@1 | 8 | 25.0 | 25.0 |" in lines
    assert any("7.00 → 3.00" in line for line in lines)


# ------------------------------------------------------------------------------------------------
# seed statistics, aggregation, attention mass

def test_t_quantiles_match_published_table():
    from open_clip_c2lip.demo.stats import _t_quantile_bisect, t_quantile
    # two-sided 95 % critical values of Student's t (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2)
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}
    for dof, value in table.items():
        assert _t_quantile_bisect(0.975, dof) == pytest.approx(value, abs=1e-3)
        assert t_quantile(0.975, dof) == pytest.approx(value, abs=1e-3)
    assert _t_quantile_bisect(0.5, 3) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_paired_interval_matches_scipy_ttest_rel():
    scipy_stats = pytest.importorskip("scipy.stats")
    from open_clip_c2lip.demo.stats import paired_difference
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 8):
        control = rng.uniform(0.4, 0.9, n)
        treated = control + rng.normal(0.05, 0.1, n)
        got = paired_difference(list(treated), list(control))
        interval = scipy_stats.ttest_rel(treated, control).confidence_interval(0.95)
        assert got["mean"] == pytest.approx(float(np.mean(treated - control)))
        assert got["std"] == pytest.approx(float(np.std(treated - control, ddof=1)))
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((interval.low, interval.high))
        assert got["significant"] == bool(interval.low > 0 or interval.high < 0)
    one = paired_difference([0.7], [0.5])
    assert one["mean"] == pytest.approx(0.2) and one["ci_low"] is None and one["significant"] is None
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])


def _record(metrics):
    return {"metrics": metrics, "curves": {"steps": [1, 2], "losses": {"contrastive_loss": [5.0, 4.0]}}}


def test_aggregate_pairs_seeds_and_skips_incomplete_ones(tmp_path):
    from open_clip_c2lip.demo.report import difference_table, plot_study, seed_table, study_table
    from open_clip_c2lip.demo.study import aggregate, metric_names
    seeds = {
        0: {"runs": {"siglip": _record({"a/swap_att": 0.5}), "c2lip": _record({"a/swap_att": 0.7})}},
        1: {"runs": {"siglip": _record({"a/swap_att": 0.6}), "c2lip": _record({"a/swap_att": 0.9})}},
        2: {"runs": {"siglip": _record({"a/swap_att": 0.55}), "c2lip": _record({"a/swap_att": 0.65})}},
        3: {"runs": {"siglip": _record({"a/swap_att": 0.1})}},  # c2lip unfinished: seed left out
    }
    summary = aggregate(seeds, ["siglip", "c2lip"])
    assert summary["seeds"] == [0, 1, 2]
    siglip = summary["per_variant"]["siglip"]["a/swap_att"]
    assert siglip["mean"] == pytest.approx(0.55) and siglip["std"] == pytest.approx(0.05)
    diff = summary["vs_baseline"]["c2lip"]["a/swap_att"]
    d = np.array([0.2, 0.3, 0.1])
    half = 4.302653 * d.std(ddof=1) / np.sqrt(3)
    assert diff["mean"] == pytest.approx(0.2)
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-6)
    metrics = metric_names(seeds)
    assert "| a/swap_att | 55.0 ± 5.0 | 75.0 ± 13.2 |" in study_table(summary, ["siglip", "c2lip"], metrics)
    # d = 0.2 ± 0.1 over 3 seeds: the interval [-4.8, +44.8] points includes 0, so it is not bold
    assert "| a/swap_att | +20.0 [-4.8, +44.8] |" in difference_table(summary, ["siglip", "c2lip"], metrics)
    assert seed_table(seeds, ["siglip", "c2lip"], metrics).count("\n") == 2 + 6
    plot_study(tmp_path / "study.png", seeds, summary, ["siglip", "c2lip"], metrics)
    assert (tmp_path / "study.png").stat().st_size > 10_000


def test_report_only_rebuilds_tables_of_a_study_stopped_early(tmp_path):
    from open_clip_c2lip.demo.cli import main
    seeds = {str(seed): {"runs": {"siglip": _record({"a/swap_att": 0.5 + seed / 10}),
                                  "c2lip": _record({"a/swap_att": 0.7 + seed / 20})}, "text_only": {}}
             for seed in range(3)}
    seeds["0"]["runs"]["npc_only"] = _record({"a/swap_att": 0.9})  # only one seed finished npc_only
    saved = {"command": "python -m open_clip_c2lip.demo --seeds 0 1 2", "finished": False, "elapsed_s": 60.0,
             "settings": {"variants": ["siglip", "c2lip", "npc_only"], "steps": 3, "batch_size": 2,
                          "num_train": 4, "num_eval": 2},
             "machine": "test", "load_average_start": [1.0], "load_average_now": [2.0], "seeds": seeds}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    results = main(["--report-only", "--output-dir", str(tmp_path)])
    assert results["report"]["variants"] == ["siglip", "c2lip"] and not results["finished"]
    assert results["summary"]["seeds"] == [0, 1, 2]
    text = (tmp_path / "results.md").read_text()
    assert "Report of 7 of 9 planned runs" in text and "| 0 | npc_only |" in text  # per-seed rows keep it
    assert (tmp_path / "results.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["--report-only", "--output-dir", str(tmp_path / "nothing")])


def test_object_patches_cover_the_cell():
    from open_clip_c2lip.demo.attention import object_patches
    assert object_patches(0, 2, 4, 4, 64) == [0, 1, 4, 5]
    assert object_patches(3, 2, 4, 4, 64) == [10, 11, 14, 15]
    assert object_patches(5, 4, 4, 4, 64) == [5]
    cells = [object_patches(c, 2, 4, 4, 64) for c in range(4)]
    assert sorted(p for c in cells for p in c) == list(range(16))  # a partition of the patches


def test_attention_mass_counts_the_named_object(tmp_path, monkeypatch):
    from open_clip_c2lip import viz
    from open_clip_c2lip.demo import attention
    spec = SPEC
    counts = evalsets.write_eval_sets(str(tmp_path), spec, 6, seed=0)
    items = json.loads((tmp_path / "retrieval.json").read_text())
    # the fake below knows each phrase's cell in the first image only, so measure that one (limit=1)
    cell_of = {Obj(o["shape"], o["colour"], o["cell"]).phrase: o["cell"] for o in items[0]["objects"]}

    def fake_maps(model, image, concepts, tokenizer, temperature=1.0):
        maps = torch.zeros(len(concepts), 4, 4)
        for index, concept in enumerate(concepts):  # all mass on the first patch of the object's cell
            first = attention.object_patches(cell_of[concept], spec.grid, 4, 4, spec.image_size)[0]
            maps[index].view(-1)[first] = 1.0
        return maps

    monkeypatch.setattr(viz, "concept_attention_maps", fake_maps)
    preprocess = lambda image: torch.zeros(3, 64, 64)
    result = attention.attention_mass(torch.nn.Linear(1, 1), preprocess, None, tmp_path, spec.grid, spec.image_size,
                                      limit=1)
    n = len(items[0]["objects"])
    assert result == pytest.approx({"mass": 1.0, "uniform": 0.25, "ratio": 4.0, "top1": 1.0, "n": n})
    monkeypatch.setattr(viz, "concept_attention_maps",
                        lambda model, image, concepts, tokenizer, temperature=1.0: torch.full((len(concepts), 4, 4), 1 / 16))
    uniform = attention.attention_mass(torch.nn.Linear(1, 1), preprocess, None, tmp_path, spec.grid, spec.image_size)
    assert uniform["ratio"] == pytest.approx(1.0) and uniform["n"] == sum(len(i["objects"]) for i in items)
    some = next(iter(held_out_pairs(spec, 0)))
    only = attention.attention_mass(torch.nn.Linear(1, 1), preprocess, None, tmp_path, spec.grid, spec.image_size,
                                    only_pairs=[some])
    assert only["n"] == sum((o["colour"], o["shape"]) == some for i in items for o in i["objects"])
    assert counts["retrieval"] == 6


# ------------------------------------------------------------------------------------------------
# end to end

def _quick(out, seed=0):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "open_clip_c2lip.demo", "--quick", "--seed", str(seed),
                           "--output-dir", str(out), "--no-progress"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    proc, results = _quick(out, seed=3)
    return out, proc, results


def test_quick_demo_end_to_end(quick_run):
    out, proc, results = quick_run
    assert results["finished"] and list(results["seeds"]) == ["3"]
    seed = results["seeds"]["3"]
    assert set(seed["runs"]) == {"siglip", "c2lip"}
    assert (out / "results.png").stat().st_size > 10_000 and (out / "attention.png").stat().st_size > 10_000
    assert "| unseen_pairs/swap_att |" in (out / "results.md").read_text()
    assert "expected" in proc.stdout and "| metric | siglip | c2lip |" in proc.stdout
    world = out / "seed_3" / "world"
    shards = sorted((world / "shards").glob("train-*.tar"))
    assert shards
    from open_clip_c2lip.fileio.tar import read_shard
    samples = [s for path in shards for s in read_shard(str(path))]
    assert len(samples) == results["settings"]["num_train"]
    held = {tuple(p) for p in seed["held_out_pairs"]}
    assert held == set(held_out_pairs(WorldSpec(**{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in results["world"].items()}), 3))
    for sample in samples:  # spaCy's noun chunks recover exactly the generator's objects
        meta = json.loads(sample["json"])
        phrases = {Obj(o["shape"], o["colour"], o["cell"]).phrase for o in meta["objects"]}
        assert sorted(meta["concepts"]) == sorted(phrases), (sample["txt"], meta)
        assert not {(o["colour"], o["shape"]) for o in meta["objects"]} & held
    for set_name in ("seen_pairs", "unseen_pairs"):
        sugarcrepe = {path.stem: json.loads(path.read_text())
                      for path in (world / "eval" / set_name / "sugarcrepe").glob("*.json")}
        assert set(sugarcrepe) == set(evalsets.NEGATIVES)
        for name, run in seed["runs"].items():
            for split, items in sugarcrepe.items():
                assert run["evaluation"][set_name]["sugarcrepe"][split]["n"] == len(items)
                assert 0.0 <= run["metrics"][f"{set_name}/{split}"] <= 1.0
    for run in seed["runs"].values():
        assert run["metrics"]["unseen_pairs/attn_ratio"] > 0 and run["evaluation"]["unseen_pairs"]["attention"]["n"] > 0
    for name, run in seed["runs"].items():
        assert Path(run["checkpoint"]).is_file()
        losses = run["curves"]["losses"]
        assert run["curves"]["steps"][-1] == results["settings"]["steps"]
        assert losses["contrastive_loss"][-1] < losses["contrastive_loss"][0], (name, losses)
    c2lip_losses = seed["runs"]["c2lip"]["curves"]["losses"]
    assert {"contrastive_loss", "npc_loss", "xac_loss"} <= set(c2lip_losses)
    assert "npc_loss" not in seed["runs"]["siglip"]["curves"]["losses"]
    # same data, seed and schedule; only the loss flags differ
    commands = {}
    for name, run in seed["runs"].items():
        command = list(run["command"])
        at = command.index("--name")
        assert command[at + 1] == name
        commands[name] = command[:at] + command[at + 2:]
    assert commands["siglip"][-1] == "--siglip"
    common = commands["siglip"][:-1]
    assert commands["c2lip"][:len(common)] == common and commands["c2lip"][len(common)] == "--c2lip-loss"
    # a single seed has no interval, the summary still pairs the two runs
    diff = results["summary"]["vs_baseline"]["c2lip"]["unseen_pairs/swap_att"]
    assert diff["ci_low"] is None and diff["mean"] == pytest.approx(
        seed["runs"]["c2lip"]["metrics"]["unseen_pairs/swap_att"] - seed["runs"]["siglip"]["metrics"]["unseen_pairs/swap_att"])


def test_quick_demo_same_seed_same_numbers(quick_run, tmp_path):
    """Two ``--quick --seed 3`` runs: same world files, same logged losses, same metrics."""
    first_out, _, first = quick_run
    _, second = _quick(tmp_path / "again", seed=3)
    for name, run in first["seeds"]["3"]["runs"].items():
        again = second["seeds"]["3"]["runs"][name]
        assert again["curves"]["losses"] == run["curves"]["losses"], name
        assert again["metrics"] == run["metrics"], name
    assert second["seeds"]["3"]["eval_counts"] == first["seeds"]["3"]["eval_counts"]


def test_false_negative_share_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo_false_negatives", REPO / "scripts" / "demo_false_negatives.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = WorldSpec(shapes=("square",), colours=("red",), min_objects=1, max_objects=1, held_out_pairs=0)
    assert module.false_negative_share(one, frozenset(), batch_size=4, batches=2) == 1.0  # same object everywhere
    # two objects from 2 shapes x 2 colours, all distinct: image i shows concept c with probability 1/2
    two = WorldSpec(shapes=("square", "ring"), colours=("red", "blue"), min_objects=2, max_objects=2, held_out_pairs=0)
    assert module.false_negative_share(two, frozenset(), batch_size=16, batches=20) == pytest.approx(0.5, abs=0.05)


def _load_sweep():
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo_sweep", REPO / "scripts" / "demo_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_grid_points_are_c2lip_with_their_xac_flags(monkeypatch):
    """scripts/demo_sweep.py: each T:W point is the text-mode c2lip command with only the xac
    temperature and weight changed; malformed points and the evaluation seeds are refused."""
    import argparse

    from open_clip_c2lip.demo import variants
    module = _load_sweep()
    monkeypatch.setattr(variants, "VARIANTS", dict(variants.VARIANTS))
    assert module.grid_point("5:0.1") == (5.0, 0.1)
    for bad in ("5", "5:x", "1:2:3"):
        with pytest.raises(argparse.ArgumentTypeError, match="TEMPERATURE:WEIGHT"):
            module.grid_point(bad)
    names = module.register([(5.0, 0.1), (1.0, 1.0)])
    assert names == ["xac_t5_w0.1", "xac_t1_w1"]
    settings = variants.LossSettings()
    default = variants.VARIANTS["c2lip"].loss_args(settings)
    point = variants.VARIANTS["xac_t5_w0.1"].loss_args(settings)
    changed = {default[i - 1]: (default[i], point[i]) for i in range(len(default)) if default[i] != point[i]}
    assert changed == {"--c2lip-xac-temperature": ("1.0", "5.0"), "--c2lip-xac-weight": ("0.01", "0.1")}
    for seeds in (["0", "100"], ["100"]):
        with pytest.raises(SystemExit):
            module.main(["--grid", "5:0.1", "--seeds", *seeds, "--quick", "--output-dir", "unused"])


def test_readme_eval_command_runs_on_the_demo_output(quick_run, tmp_path):
    """The documented demo -> eval command (docs/evaluation.md), with its DIR and seed filled in,
    evaluates the demo's checkpoint and reproduces the demo's own numbers."""
    import re
    import shlex

    from open_clip_c2lip.eval.cli import main as eval_main
    out, _, results = quick_run
    readme = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    line = next(m.group(0) for m in re.finditer(r"^python -m open_clip_c2lip\.eval --model C2LIP-Tiny .*$",
                                                readme, re.MULTILINE) if "DIR/" in m.group(0))
    argv = [a.replace("DIR", str(out)).replace("seed_0", "seed_3") for a in shlex.split(line)[3:]]
    argv[argv.index("--output") + 1] = str(tmp_path / "r.json")
    evaluation = eval_main(argv)
    ours = json.loads((tmp_path / "r.json").read_text())
    demo = results["seeds"]["3"]["runs"]["c2lip"]["evaluation"]["unseen_pairs"]["sugarcrepe"]
    assert ours and evaluation
    for split, value in demo.items():
        if split != "_average":
            assert ours["sugarcrepe"][split]["acc"] == pytest.approx(value["acc"]), split
