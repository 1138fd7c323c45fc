"""open_clip_c2lip.demo.cli and study: flags, run specs, the report of a study stopped early, and real
``--quick`` runs end to end (world -> shards + spaCy concepts -> open_clip_train runs -> eval ->
results), resumed and repeated (same seeds -> same numbers, in one environment)."""
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from open_clip_c2lip.demo import evalsets
from open_clip_c2lip.demo import preregistration as prereg
from open_clip_c2lip.demo.analysis import run_name
from open_clip_c2lip.demo.cli import PRESETS, is_preregistered, main, parse_args, settings_of
from open_clip_c2lip.demo.study import expected_seconds, run_specs
from open_clip_c2lip.demo.world import Obj, WorldSpec, held_out_pairs

REPO = Path(__file__).resolve().parents[1]
SPEC = WorldSpec()


def test_flags_and_defaults():
    args = parse_args(["--quick"])
    assert (args.steps, args.batch_size, args.world) == (PRESETS["quick"].steps, PRESETS["quick"].batch_size, SPEC)
    assert args.seeds == [0] and args.train_seeds == [0] and args.variants == ["siglip", "c2lip"] and not args.study
    assert parse_args(["--steps", "7"]).steps == 7
    study = parse_args(["--seeds", "0", "1", "2", "--train-seeds", "4", "5"])
    assert study.study and study.seeds == [0, 1, 2] and study.train_seeds == [4, 5]
    assert study.variants == list(prereg.VARIANTS)
    assert parse_args(["--held-out-block", "1"]).world.held_out_block == 1
    for bad in (["--num-train", "10", "--batch-size", "64"], ["--shapes", "square", "bar"], ["--steps", "0"],
                ["--seeds", "1", "1"], ["--train-seeds", "0", "0"], ["--parallel", "0"], ["--held-out-block", "4"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_preregistered_command_is_recognised():
    command = ["--seeds", *map(str, prereg.STUDY_WORLDS), "--train-seeds", *map(str, prereg.TRAIN_SEEDS)]
    assert is_preregistered(parse_args(command))
    assert not is_preregistered(parse_args(command + ["--quick"]))
    assert not is_preregistered(parse_args(["--seeds", "1", "2"]))
    assert not is_preregistered(parse_args(command + ["--steps", "300"]))
    assert not is_preregistered(parse_args(command + ["--jitter", "2"]))


def test_variants_differ_only_in_their_loss_tail():
    args = parse_args(["--seeds", "0", "1", "--variants", "siglip", "c2lip", "siglip_concepts", "c2lip_span",
                       "npc_only", "xac_only", "dup_ignore"])
    specs = run_specs(settings_of(args), 1, "x.tar")
    assert set(specs) == {run_name(v, 1) for v in args.variants}
    commands = {}
    for name, spec in specs.items():
        command = spec.command("logs")
        at = command.index("--name")
        assert command[at + 1] == name and command[command.index("--seed") + 1] == "1"
        commands[name] = command[:at] + command[at + 2:]
    common = commands["siglip_t1"][:-1]
    assert all(command[:len(common)] == common for command in commands.values())
    tails = {name[:-3]: command[len(common):] for name, command in commands.items()}

    def flag(name, key):
        return tails[name][tails[name].index(key) + 1]
    assert tails["siglip"] == ["--siglip"]
    assert flag("c2lip", "--c2lip-concept-mode") == "text" and flag("c2lip_span", "--c2lip-concept-mode") == "span"
    for name, changed in (("npc_only", {"--c2lip-xac-weight"}), ("xac_only", {"--c2lip-npc-weight"}),
                          ("dup_ignore", {"--c2lip-duplicate-concepts"}),
                          ("siglip_concepts", {"--c2lip-xac-weight", "--c2lip-npc-weight"})):
        differing = {key for key in tails[name] if key.startswith("--") and
                     (key not in tails["c2lip"] or flag(name, key) != flag("c2lip", key))}
        assert differing == changed, (name, differing)
    settings = settings_of(args)
    assert expected_seconds(settings) > expected_seconds(settings, done=10) > 0


def _record(variant, seed, value):
    return {"variant": variant, "train_seed": seed, "metrics": {"unseen_pairs/swap_att": value},
            "curves": {"steps": [1, 2], "losses": {"contrastive_loss": [5.0, 4.0]}}}


def test_report_only_rebuilds_the_tables_of_a_study_stopped_early(tmp_path):
    worlds = {str(w): {"runs": {run_name(v, t): _record(v, t, 0.5 + 0.1 * i + w / 100)
                                for i, v in enumerate(("siglip", "c2lip")) for t in (0, 1)},
                       "blind": {}, "held_out_pairs": []}
              for w in range(3)}
    del worlds["2"]["runs"]["c2lip_t1"]  # world 2 unfinished
    saved = {"command": "python -m open_clip_c2lip.demo --seeds 0 1 2", "finished": False,
             "settings": {"variants": ["siglip", "c2lip"], "seeds": [0, 1, 2], "train_seeds": [0, 1], "steps": 3,
                          "batch_size": 2, "num_train": 4, "num_eval": 2},
             "sittings": [{"command": "x", "started": "then", "environment": {"python": "3", "packages": {},
                                                                               "gpu": None, "cpu": "c", "cpu_count": 2,
                                                                               "platform": "p"},
                           "load_average_start": [1.0], "elapsed_s": 60.0}],
             "preregistration": prereg.text(), "worlds": worlds}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    results = main(["--report-only", "--output-dir", str(tmp_path)])
    assert results["report"]["complete_worlds"] == [0, 1] and results["summary"]["worlds"] == [0, 1]
    text = (tmp_path / "results.md").read_text()
    assert "Report of 11 of 12 planned runs" in text and "| 2 | 0 | c2lip |" in text  # every run is listed
    assert "only within one software and hardware environment" in text and "sitting 1: `x`" in text
    assert (tmp_path / "results.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["--report-only", "--output-dir", str(tmp_path / "nothing")])


# ------------------------------------------------------------------------------------------------
# end to end (slow: real open_clip_train runs)

def _quick(out, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "open_clip_c2lip.demo", "--quick", "--output-dir", str(out),
                           "--no-progress", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    proc, results = _quick(out, "--seed", "3", "--train-seeds", "0", "1")
    return out, proc, results


@pytest.mark.slow
def test_quick_demo_end_to_end(quick_run):
    out, proc, results = quick_run
    assert results["finished"] and list(results["worlds"]) == ["3"]
    world = results["worlds"]["3"]
    assert set(world["runs"]) == {"siglip_t0", "c2lip_t0", "siglip_t1", "c2lip_t1"}
    assert (out / "results.png").stat().st_size > 10_000 and (out / "attention.png").stat().st_size > 10_000
    assert results["environment"]["packages"]["torch"] and results["sittings"][0]["environment"]["cpu"]
    assert all(run["environment"] for run in world["runs"].values())
    text = (out / "results.md").read_text()
    assert "| unseen_pairs/swap_att |" in text and "only within one software and hardware environment" in text
    assert "expected" in proc.stdout and "environment: Python" in proc.stdout
    assert "Pre-registered" not in proc.stdout  # siglip and c2lip only: no pre-registered analysis
    root = out / "world_3" / "world"
    from open_clip_c2lip.fileio.tar import read_shard
    samples = [s for path in sorted((root / "shards").glob("train-*.tar")) for s in read_shard(str(path))]
    assert len(samples) == results["settings"]["num_train"]
    held = {tuple(p) for p in world["held_out_pairs"]}
    assert held == set(held_out_pairs(SPEC, 3))
    for sample in samples:  # spaCy's noun chunks recover exactly the generator's objects
        meta = json.loads(sample["json"])
        assert sorted(meta["concepts"]) == sorted(Obj(o["shape"], o["colour"], o["cell"]).phrase
                                                  for o in meta["objects"]), (sample["txt"], meta)
        assert not {(o["colour"], o["shape"]) for o in meta["objects"]} & held
    for set_name in ("seen_pairs", "unseen_pairs"):
        files = evalsets.item_files(root / "eval" / set_name)
        assert set(world["blind"][set_name]) == set(files)
        for name, run in world["runs"].items():
            for split, path in files.items():
                assert 0.0 <= run["metrics"][f"{set_name}/{split}"] <= 1.0
    for name, run in world["runs"].items():
        assert Path(run["checkpoint"]).is_file() and run["metrics"]["unseen_pairs/attn_ratio"] > 0
        assert run["curves"]["steps"][-1] == results["settings"]["steps"]
        assert run["command"][run["command"].index("--seed") + 1] == str(run["train_seed"])
        assert "unseen_pairs/familiarity_bias" in run["metrics"] and "unseen_pairs/novel_half" in run["metrics"]
    assert {"contrastive_loss", "npc_loss", "xac_loss"} <= set(world["runs"]["c2lip_t0"]["curves"]["losses"])
    # one world: no interval; the two training seeds give the within-world spread
    diff = results["summary"]["comparisons"]["c2lip − siglip"]["unseen_pairs/swap_att"]
    assert diff["ci_low"] is None and diff["sd_within"] is not None
    means = [sum(world["runs"][run_name(v, t)]["metrics"]["unseen_pairs/swap_att"] for t in (0, 1)) / 2
             for v in ("c2lip", "siglip")]
    assert diff["mean"] == pytest.approx(means[0] - means[1])


@pytest.mark.slow
def test_rerun_resumes_and_reuses_every_finished_run(quick_run):
    out, _, first = quick_run
    (out / "world_3" / "metrics" / "c2lip_t1.json").unlink()  # as if stopped before its last run finished
    proc, again = _quick(out, "--seed", "3", "--train-seeds", "0", "1")
    assert "3 finished earlier and reused" in proc.stdout and len(again["sittings"]) == 2
    runs = again["worlds"]["3"]["runs"]
    assert all(runs[name].get("reused") for name in ("siglip_t0", "c2lip_t0", "siglip_t1"))
    assert not runs["c2lip_t1"].get("reused")
    for name, run in first["worlds"]["3"]["runs"].items():  # the retrained run reproduces itself here
        assert runs[name]["metrics"] == run["metrics"], name


@pytest.mark.slow
def test_same_seeds_same_numbers_in_one_environment(quick_run, tmp_path):
    _, _, first = quick_run
    _, second = _quick(tmp_path / "again", "--seed", "3")
    for name, run in second["worlds"]["3"]["runs"].items():
        assert run["curves"]["losses"] == first["worlds"]["3"]["runs"][name]["curves"]["losses"], name
        assert run["metrics"] == first["worlds"]["3"]["runs"][name]["metrics"], name
    assert second["worlds"]["3"]["eval_counts"] == first["worlds"]["3"]["eval_counts"]


@pytest.mark.slow
def test_documented_eval_command_reproduces_the_demo_numbers(quick_run, tmp_path):
    """The documented demo -> eval command (docs/evaluation.md), with its DIR and seeds filled in,
    evaluates a demo checkpoint on a held-out set and gives the demo's numbers."""
    import re
    import shlex

    from open_clip_c2lip.eval.cli import main as eval_main
    out, _, results = quick_run
    docs = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    line = next(m.group(0) for m in re.finditer(r"^python -m open_clip_c2lip\.eval --model C2LIP-Tiny .*$", docs,
                                                re.MULTILINE) if "DIR/" in m.group(0))
    argv = [a.replace("DIR", str(out)).replace("world_0", "world_3") for a in shlex.split(line)[3:]]
    argv[argv.index("--output") + 1] = str(tmp_path / "r.json")
    assert Path(argv[argv.index("--pretrained") + 1]).is_file()
    eval_main(argv)
    ours = json.loads((tmp_path / "r.json").read_text())
    demo = results["worlds"]["3"]["runs"]["c2lip_t0"]["evaluation"]["unseen_pairs"]["sugarcrepe"]
    for split, value in demo.items():
        if split != "_average":
            assert ours["sugarcrepe"][split]["acc"] == pytest.approx(value["acc"]), split
