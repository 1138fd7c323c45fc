"""Tests for the embedded demo (open_clip_c2lip.demo): world, held-out sets, metrics, log parsing,
and one real ``--quick`` run end to end (world -> shards + spaCy concepts -> two open_clip_train
runs -> eval -> results)."""
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
from open_clip_c2lip.demo.build import brace_pattern, scene_key
from open_clip_c2lip.demo.report import comparison_table
from open_clip_c2lip.demo.retrieval import recall_at_k
from open_clip_c2lip.demo.runs import RunSpec, parse_train_log
from open_clip_c2lip.demo.world import COLOURS, SHAPES, Obj, Scene, WorldSpec, render, sample_scene

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
            painted.add(obj.cell)
        for index in set(range(spec.grid ** 2)) - painted:  # empty cells are pure background
            row, col = divmod(index, spec.grid)
            block = pixels[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell]
            assert (block == np.array(spec.background)).all()


def test_shapes_differ_in_pixels():
    spec = WorldSpec(shapes=tuple(SHAPES), max_objects=1, min_objects=1, colours=("red",))
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


# ------------------------------------------------------------------------------------------------
# held-out sets

def _objects_of_caption(caption):
    return sorted(tuple(p.split()[1:]) for p in caption.replace(" and ", ", ").split(", "))


# A looser world than the default, where every split's negative can be built.
LOOSE = WorldSpec(shapes=("circle", "square", "triangle", "cross", "ring"), colours=("red", "green", "blue", "yellow"),
                  min_objects=2, max_objects=4, distinct_colours=False)


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


def test_default_world_has_no_colour_or_count_shortcut():
    for scene in _scenes(100):
        assert sorted(o.colour for o in scene.objects) == sorted(SPEC.colours)
        assert evalsets.replace_att(scene, SPEC, random.Random(0)) is None  # no absent colour exists


def test_eval_sets_load_in_the_eval_suite(tmp_path):
    from open_clip_c2lip import eval as c2eval
    train_keys = {scene_key(s) for s in _scenes(50, seed=9)}
    counts = evalsets.write_eval_sets(str(tmp_path), SPEC, 40, seed=9, exclude=train_keys)
    assert counts["retrieval"] == 40 and counts["redrawn"] >= 40  # same seed: the first 40 are all redrawn
    assert counts["replace_att"] == 0 and not (tmp_path / "sugarcrepe" / "replace_att.json").exists()
    splits = [split for split in evalsets.NEGATIVES if counts[split]]
    assert splits == ["swap_att", "replace_obj", "add_obj"]
    for split in splits:
        data = json.loads((tmp_path / "sugarcrepe" / f"{split}.json").read_text())
        assert len(data) == counts[split] > 0
        for key, item in data.items():
            assert key.isdigit() and set(item) == {"filename", "caption", "negative_caption"}
            assert (tmp_path / "val2017" / item["filename"]).is_file()
    images, texts = c2eval.Vocabulary(), c2eval.Vocabulary()
    scorer = c2eval.load_sugarcrepe(tmp_path, images, texts, splits=splits)
    assert len(images) == len({i["filename"] for i in json.loads((tmp_path / "retrieval.json").read_text())})
    assert callable(scorer)


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
    args = parse_args(["--quick"])
    assert (args.steps, args.batch_size, args.world) == (40, 32, SPEC)
    assert parse_args(["--steps", "7"]).steps == 7
    for bad in (["--num-train", "10", "--batch-size", "64"], ["--shapes", "square", "bar"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


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
# end to end

def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "open_clip_c2lip.demo", "--quick", "--output-dir", str(out),
                           "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"siglip", "c2lip"}
    assert (out / "results.png").stat().st_size > 10_000
    assert (out / "results.md").read_text().count("\n|") >= 6
    assert "| swap_att acc |" in proc.stdout
    shards = sorted((out / "world" / "shards").glob("train-*.tar"))
    assert shards
    from open_clip_c2lip.shards import read_shard
    from open_clip_c2lip.demo.world import Obj
    samples = [s for path in shards for s in read_shard(str(path))]
    assert len(samples) == results["settings"]["num_train"]
    for sample in samples:  # spaCy's noun chunks recover exactly the generator's objects
        meta = json.loads(sample["json"])
        phrases = {Obj(o["shape"], o["colour"], o["cell"]).phrase for o in meta["objects"]}
        assert sorted(meta["concepts"]) == sorted(phrases), (sample["txt"], meta)
    sugarcrepe = {path.stem: json.loads(path.read_text())
                  for path in (out / "world" / "eval" / "sugarcrepe").glob("*.json")}
    assert set(sugarcrepe) == {"swap_att", "replace_obj", "add_obj"}
    for name, run in results["runs"].items():
        assert Path(run["checkpoint"]).is_file()
        losses = run["curves"]["losses"]
        assert run["curves"]["steps"][-1] == run["steps"]
        # both models learned: the contrastive loss fell well below its start
        assert losses["contrastive_loss"][-1] < 0.8 * losses["contrastive_loss"][0], (name, losses)
        assert set(run["sugarcrepe"]) == set(sugarcrepe) | {"_average"}
        for split, items in sugarcrepe.items():
            assert run["sugarcrepe"][split]["n"] == len(items)
            assert 0.0 <= run["sugarcrepe"][split]["acc"] <= 1.0
    c2lip_losses = results["runs"]["c2lip"]["curves"]["losses"]
    assert {"contrastive_loss", "npc_loss", "xac_loss"} <= set(c2lip_losses)
    assert "npc_loss" not in results["runs"]["siglip"]["curves"]["losses"]
    # same data, seed and schedule; only the loss flags differ
    commands = {}
    for name, run in results["runs"].items():
        command = list(run["command"])
        at = command.index("--name")
        assert command[at + 1] == name
        commands[name] = command[:at] + command[at + 2:]
    assert commands["siglip"][-1] == "--siglip"
    common = commands["siglip"][:-1]
    assert commands["c2lip"][:len(common)] == common and commands["c2lip"][len(common)] == "--c2lip-loss"
