"""Annotation spread over tasks (``open_clip_c2lip.concepts.tasks`` and the CLI's ``--task-index`` /
``--task-count``): K tasks, one after the other or at the same time, write exactly the outputs of one
run, each input once; SLURM array variables give the defaults, and arrays that are not one
contiguous range are refused."""
import gzip
import os
import random
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd
import pytest

from open_clip_c2lip import concepts as C
from open_clip_c2lip.concepts import cli, tasks
from open_clip_c2lip.concepts.extract import AnnotationError
from concepts_fixtures import coco, coco_all, make_shard, shard_samples  # noqa: F401

SLURM = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_MAX": "8",
         "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "1"}


def test_task_from_flags_and_slurm_array_variables():
    assert tasks.resolve_task(None, None, {}) == tasks.Task(0, 1, "one task")
    assert tasks.resolve_task(2, 3, SLURM) == tasks.Task(2, 3, "--task-index/--task-count")  # flags win
    task = tasks.resolve_task(None, None, SLURM)  # --array=5-8: ids 5..8 are tasks 0..3
    assert (task.index, task.count) == (2, 4) and "SLURM_ARRAY_TASK_ID=7" in task.source


@pytest.mark.parametrize("index, count, env, said", [
    (1, None, {}, "go together"),
    (None, 3, {}, "go together"),
    (3, 3, {}, "0 <= --task-index < --task-count"),
    (-1, 3, {}, "0 <= --task-index"),
    (0, 0, {}, "--task-count >= 1"),
    # --array=0-9:3 (ids 0, 3, 6, 9) and --array=1,5,7: shares would be skipped
    (None, None, {**SLURM, "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "9",
                  "SLURM_ARRAY_TASK_STEP": "3"}, "not one contiguous range"),
    (None, None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7",
                  "SLURM_ARRAY_TASK_COUNT": "3"}, "not one contiguous range"),
    (None, None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_MAX": "8",
                  "SLURM_ARRAY_TASK_COUNT": "4"}, "not one contiguous range"),
    (None, None, {"SLURM_ARRAY_TASK_ID": "2"}, "incomplete or not integers"),
    (None, None, {**SLURM, "SLURM_ARRAY_TASK_COUNT": "four"}, "incomplete or not integers"),
])
def test_inconsistent_tasks_are_refused(index, count, env, said):
    with pytest.raises(AnnotationError, match=re.escape(said)):
        tasks.resolve_task(index, count, env)


def test_cli_refuses_inconsistent_tasks_as_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    for name, value in (("SLURM_ARRAY_TASK_MIN", "0"), ("SLURM_ARRAY_TASK_MAX", "6"), ("SLURM_ARRAY_TASK_COUNT", "3")):
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        cli._parse_args([str(tmp_path / "a.tar"), "--output-dir", str(tmp_path)])
    assert info.value.code == cli.EXIT_USAGE and "not one contiguous range" in capsys.readouterr().err


@pytest.mark.parametrize("count", [1, 2, 3, 5, 12])
def test_shares_are_disjoint_complete_and_independent_of_order_and_folder(count):
    names = [f"{i:05d}.tar" for i in range(10)]
    shares = [tasks.share([f"/data/{n}" for n in names], tasks.Task(i, count)) for i in range(count)]
    assert sorted(os.path.basename(p) for s in shares for p in s) == names  # every input exactly once
    rng = random.Random(0)
    for i in range(count):  # another node: the shell listed them in another order, the data is mounted elsewhere
        shuffled = [f"/mnt/other/{n}" for n in rng.sample(names, len(names))]
        assert sorted(os.path.basename(p) for p in tasks.share(shuffled, tasks.Task(i, count))) == \
            sorted(os.path.basename(p) for p in shares[i])
        assert [os.path.basename(p) for p in tasks.share(shuffled, tasks.Task(i, count))] == \
            [os.path.basename(p) for p in shuffled if f"/data/{os.path.basename(p)}" in shares[i]]  # given order


# ------------------------------------------------------------------------------------------------
# The CLI: K tasks give one run's outputs

def _inputs(root: Path, coco) -> list:
    """Five inputs of real COCO captions: plain shards, a gzip shard and a CSV table."""
    root.mkdir()
    paths = []
    for index in range(3):
        path = root / f"shard-{index:06d}.tar"
        make_shard(path, shard_samples(coco, 12 * index, 12))
        paths.append(path)
    packed = root / "shard-000003.tar.gz"
    make_shard(root / "plain.tmp", shard_samples(coco, 36, 12))
    packed.write_bytes(gzip.compress((root / "plain.tmp").read_bytes()))
    (root / "plain.tmp").unlink()
    table = root / "table.csv"
    pd.DataFrame({"filepath": [f"{i}.jpg" for i in range(15)], "caption": coco[48:63]}).to_csv(
        table, sep="\t", index=False)
    return paths + [packed, table]


def _outputs(folder: Path) -> dict:
    """name -> bytes of every output (records aside: they hold mtimes), and the records' names."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith(cli.RECORD_SUFFIX)}
    records = sorted(p.name for p in folder.iterdir() if p.name.endswith(cli.RECORD_SUFFIX))
    return files, records


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, coco):
    """The inputs, one run's outputs, and a new output folder next to that run's (the table's relative
    image paths are rewritten for the output's folder, so outputs compare byte for byte only at the
    same place relative to the inputs)."""
    root = tmp_path_factory.mktemp("tasks")
    inputs = _inputs(root / "in", coco)
    assert C.main([str(p) for p in inputs] + ["--output-dir", str(root / "one"), "--quiet"]) == 0
    folders = (root / f"out-{i}" for i in range(1000))
    return inputs, _outputs(root / "one"), lambda: next(folders)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_k_tasks_one_after_another_write_one_runs_outputs(one_run, count, monkeypatch, capsys):
    inputs, (expected, records), new_folder = one_run
    out = new_folder()
    annotated = []
    original = cli.annotate_file
    monkeypatch.setattr(cli, "annotate_file", lambda path, *a, **k: annotated.append(path) or original(path, *a, **k))
    rng = random.Random(count)
    for index in range(count):
        order = rng.sample(inputs, len(inputs))  # each task's shell expanded the glob differently
        assert C.main([str(p) for p in order] + ["--output-dir", str(out), "--quiet",
                                                 "--task-index", str(index), "--task-count", str(count)]) == 0
        text = capsys.readouterr().out
        if count > 1:
            assert text.count(f"task {index} of {count} (0-based; --task-index/--task-count): ") == 2  # start, summary
    assert sorted(annotated) == sorted(str(p) for p in inputs)  # every input exactly once
    assert _outputs(out) == (expected, records)  # byte-identical to one run
    # a rerun of every task finds its share finished and annotates nothing
    annotated.clear()
    for index in range(count):
        assert C.main([str(p) for p in inputs] + ["--output-dir", str(out), "--quiet",
                                                  "--task-index", str(index), "--task-count", str(count)]) == 0
    assert annotated == [] and "skipped as finished" in capsys.readouterr().out


@pytest.mark.slow
def test_a_slurm_array_of_tasks_at_the_same_time_writes_one_runs_outputs(one_run):
    """Three processes started together, told their task only by SLURM array variables (--array=1-3),
    writing into one folder."""
    inputs, (expected, records), new_folder = one_run
    out = new_folder()
    processes = []
    for task_id in (1, 2, 3):
        env = dict(os.environ, OMP_NUM_THREADS="1", SLURM_ARRAY_TASK_ID=str(task_id), SLURM_ARRAY_TASK_MIN="1",
                   SLURM_ARRAY_TASK_MAX="3", SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_TASK_STEP="1")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "open_clip_c2lip.concepts", *map(str, inputs), "--output-dir", str(out),
             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err for _, err in done]
    assert _outputs(out) == (expected, records)
    shares = []
    for task_id, (out, _) in enumerate(done):
        line = next(line for line in out.splitlines() if line.startswith(f"task {task_id} of 3 "))
        assert f"SLURM_ARRAY_TASK_ID={task_id + 1} - SLURM_ARRAY_TASK_MIN=1" in line
        shares += re.search(r"inputs sorted by file name: (.*)$", line).group(1).split(", ")
        written = int(re.search(r"files: \d+ \((\d+) written", out).group(1))
        assert written == len(re.search(r"inputs sorted by file name: (.*)$", line).group(1).split(", "))
    assert sorted(shares) == sorted(p.name for p in inputs)  # each input in exactly one task's share


# ------------------------------------------------------------------------------------------------
# Inputs given twice or sharing a file name: refused by every task alike, nothing written

@pytest.mark.parametrize("task", [None, (0, 2), (1, 2)])
def test_an_input_given_twice_is_refused_by_every_task(tmp_path, coco, task, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        make_shard(folder / f"{index:05d}.tar", shard_samples(coco, 5 * index, 5))
    monkeypatch.chdir(tmp_path)
    flags = [] if task is None else ["--task-index", str(task[0]), "--task-count", str(task[1])]
    # once by a pattern, once more by name, and once more through another spelling of the same path
    for extra in ("in/00001.tar", "./in/00001.tar"):
        with pytest.raises(SystemExit) as info:
            C.main(["in/{00000..00002}.tar", extra, "--output-dir", "out", "--quiet", *flags])
        assert str(info.value) == (f"error: input in/00001.tar is given 2 times ('in/00001.tar', '{extra}'): "
                                   "give each input once; nothing was annotated")
    assert not os.path.exists(tmp_path / "out")  # refused before the output folder is made


@pytest.mark.parametrize("task", [None, (0, 2), (1, 2)])
def test_two_inputs_with_one_file_name_are_refused_by_every_task(tmp_path, coco, task):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        make_shard(tmp_path / folder / "00000.tar", shard_samples(coco, 0, 5))
        make_shard(tmp_path / folder / f"{folder}.tar", shard_samples(coco, 5, 5))
    inputs = [str(tmp_path / f / n) for f in ("a", "b") for n in ("00000.tar", f"{f}.tar")]
    flags = [] if task is None else ["--task-index", str(task[0]), "--task-count", str(task[1])]
    with pytest.raises(SystemExit) as info:
        C.main(inputs + ["--output-dir", str(tmp_path / "out"), "--quiet", *flags])
    assert str(info.value) == (
        f"error: inputs {tmp_path / 'a' / '00000.tar'}, {tmp_path / 'b' / '00000.tar'} share the file name "
        "'00000.tar': outputs keep their input's file name, so they would write one output: rename them or "
        "annotate them into different --output-dir; nothing was annotated")
    assert not os.path.exists(tmp_path / "out")


def test_more_tasks_than_inputs_leave_the_extra_tasks_idle_and_say_so(tmp_path, coco, capsys):
    inputs = []
    for index in range(2):
        inputs.append(str(tmp_path / f"{index}.tar"))
        make_shard(tmp_path / f"{index}.tar", shard_samples(coco, 5 * index, 5))
    out = str(tmp_path / "out")
    texts = []
    for index in range(4):
        assert C.main(inputs + ["--output-dir", out, "--quiet", "--task-index", str(index), "--task-count", "4"]) == 0
        texts.append(capsys.readouterr().out)
    assert "task 0 of 4 (0-based; --task-index/--task-count): 1 of 2 inputs, at position(s) 0 of the inputs " \
           "sorted by file name: 0.tar" in texts[0]
    for index in (2, 3):
        assert f"task {index} of 4 (0-based; --task-index/--task-count): no inputs: 4 tasks for 2 inputs leave " \
               "tasks 2 to 3 without a share" in texts[index]
        assert "files: 0 (0 written" in texts[index]
    assert sorted(os.listdir(out)) == ["0.tar", "0.tar" + cli.RECORD_SUFFIX, "1.tar", "1.tar" + cli.RECORD_SUFFIX]
