"""docs/evaluation.md's clip_benchmark recipe, run as printed on a read-only SugarCrepe root: its
numbers equal ``python -m open_clip_c2lip.eval`` on the same bundle, its ``build`` step works, and
it writes nothing into the data folder."""
import csv
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import open_clip

from open_clip_c2lip import eval as c2eval
from open_clip_c2lip import export

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "evaluation.md"
DATA = Path(os.environ.get("C2LIP_TEST_DATA", REPO.parent / "shared" / "data"))
SPLITS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
ITEMS_PER_SPLIT = 10
LABEL = "tiny-test-ep1"


def recipe(name: str) -> str:
    """The bash block after ``<!-- recipe:NAME -->`` in docs/evaluation.md."""
    match = re.search(rf"<!-- recipe:{name} -->\n```bash\n(.*?)^```", DOC.read_text(encoding="utf-8"),
                      re.MULTILINE | re.DOTALL)
    assert match, f"docs/evaluation.md has no recipe:{name} block"
    return match.group(1)


def with_values(script: str, **values: str) -> str:
    """The script with its ``NAME=...`` placeholder lines set to ``values`` (each must exist)."""
    for name, value in values.items():
        script, count = re.subn(rf"^{name}=\S+", f"{name}={value}", script, flags=re.MULTILINE)
        assert count == 1, f"the recipe has no {name}= line"
    return script


def tree(folder: Path):
    """Every entry under ``folder`` with what a write would change."""
    return {str(p.relative_to(folder)): (p.is_symlink(), p.stat().st_mode, p.stat().st_mtime_ns,
                                         p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def set_writable(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    model = open_clip.create_model("C2LIP-Tiny").eval()
    checkpoint = folder / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    return export.main(["--model", "C2LIP-Tiny", "--checkpoint", str(checkpoint), "--output", str(folder / "b")])


def sugarcrepe_root(root: Path, bundle: Path) -> None:
    """Real SugarCrepe items (stand-in images) whose two scores are not within float noise of a tie,
    so both tools must decide every item the same way."""
    (root / "val2017").mkdir(parents=True)
    (root / "sugarcrepe").mkdir()
    items = {split: dict(list(json.loads((DATA / "sugar_crepe" / f"{split}.json").read_text()).items())
                         [:3 * ITEMS_PER_SPLIT]) for split in SPLITS}
    names = sorted({item["filename"] for split in items.values() for item in split.values()})
    for i, name in enumerate(names):
        blocks = np.random.default_rng(i).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((10, 10, 1), dtype=np.uint8))).save(root / "val2017" / name)
    for split, split_items in items.items():
        (root / "sugarcrepe" / f"{split}.json").write_text(json.dumps(split_items))
    model, preprocess, tokenizer = c2eval.load_model(f"local-dir:{bundle}")
    _, rows = c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe"], root, progress=False,
                              return_scores=True)
    for split in SPLITS:
        kept = [r["id"] for r in rows if r["split"] == split and abs(r["pos"] - r["neg"]) > 1e-4][:ITEMS_PER_SPLIT]
        assert len(kept) >= ITEMS_PER_SPLIT // 2, split
        (root / "sugarcrepe" / f"{split}.json").write_text(json.dumps({k: items[split][k] for k in kept}))
    used = {items[s][k]["filename"] for s in SPLITS for k in json.loads((root / "sugarcrepe" / f"{s}.json").read_text())}
    for path in (root / "val2017").iterdir():
        if path.name not in used:
            path.unlink()


@pytest.mark.slow
def test_clip_benchmark_recipe_matches_the_package_on_a_read_only_root(bundle, tmp_path):
    if not (DATA / "sugar_crepe").is_dir():
        pytest.skip(f"needs the SugarCrepe annotation files in $C2LIP_TEST_DATA/sugar_crepe (looked in {DATA}); "
                    "get them from github.com/RAIVNLab/sugar-crepe (data/*.json)")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "clip_benchmark").exists() and shutil.which("clip_benchmark") is None:
        pytest.skip("clip_benchmark is not installed (pip install '.[test]')")
    data = tmp_path / "data"
    sugarcrepe_root(data, bundle)
    set_writable(data, False)
    before = tree(data)
    work = tmp_path / "work"
    work.mkdir()
    script = with_values(recipe("sugarcrepe"), BUNDLE=str(bundle), LABEL=LABEL, DATA=str(data))
    # fp32: autocast turns near-equal scores into ties, which clip_benchmark credits to the caption
    assert all("--no_amp" in line for line in script.replace("\\\n", " ").splitlines()
               if line.startswith("clip_benchmark eval"))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    try:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        assert tree(data) == before, "the recipe changed the data folder"
    finally:
        set_writable(data, True)

    ours = json.loads((work / "results" / "compo.json").read_text())["sugarcrepe"]
    for split in SPLITS:
        theirs = json.loads((work / "results" / "clip_benchmark" /
                             f"sugar_crepe_{split}_{LABEL}_image_caption_selection.json").read_text())
        assert theirs["pretrained"] == LABEL
        assert ours[split]["ties"] == 0
        assert theirs["metrics"]["acc"] == pytest.approx(ours[split]["acc"], abs=1e-6), split
    # both outcomes occur, so the agreement says something
    assert 0 < ours["_average"]["micro"] < 1
    with open(work / "results" / "benchmark.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["dataset"] for r in rows) == [f"sugar_crepe/{s}" for s in SPLITS]
    assert sorted((work / "results" / "clip_benchmark").iterdir()) == sorted(
        work / "results" / "clip_benchmark" / f"sugar_crepe_{s}_{LABEL}_image_caption_selection.json" for s in SPLITS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")], "the scratch root was not removed"
