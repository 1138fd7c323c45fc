"""All benchmarks in one data root: one run equals each benchmark alone, each distinct image and caption
is encoded once across them, and the CLI writes the JSON, the vl_compo-format CSV row and the
comparison figure, with clip_benchmark's zero-shot numbers from the same command."""
import csv
import json
import shutil

import pytest

from compo_fixtures import write_all
from eval_fixtures import StubModel, c2eval, data_root, stub  # noqa: F401
from test_eval_report import write_published
from test_eval_zeroshot import cb_root  # noqa: F401

MINE = ["colorswap", "crepe", "eqben", "mmvp_vlm", "svo_probes"]


@pytest.fixture(scope="module")
def full_root(data_root, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("all")
    shutil.copytree(data_root, root, dirs_exist_ok=True, symlinks=True)
    return write_all(root)


def test_one_run_equals_each_alone_and_encodes_each_input_once(stub, full_root):
    model, preprocess, tokenizer = stub
    calls = {"images": 0, "texts": 0}

    class Counting(StubModel):
        def encode_image(self, images):
            calls["images"] += images.shape[0]
            return super().encode_image(images)

        def encode_text(self, tokens):
            calls["texts"] += tokens.shape[0]
            return super().encode_text(tokens)

    counting = Counting(model.table.shape[0])
    options = {"aro_vga": {"min_samples": 2}}
    names = [n for n in c2eval.list_benchmarks() if (n in MINE or n in ("sugarcrepe", "sugarcrepe_pp", "aro_vgr",
                                                                          "aro_vga", "winoground"))]
    results = c2eval.evaluate(counting, preprocess, tokenizer, names, full_root, batch_size=8, options=options,
                              progress=False)
    assert list(results) == names
    images, texts = c2eval.Vocabulary(), c2eval.Vocabulary()
    for name in names:  # what the loaders intern, collected independently of the run
        c2eval.BENCHMARKS[name](full_root, images, texts, **options.get(name, {}))
    assert calls == {"images": len(images), "texts": len(texts)}
    for name in MINE:
        alone = c2eval.evaluate(model, preprocess, tokenizer, [name], full_root, batch_size=3, progress=False)
        assert alone[name] == results[name], name


def test_cli_writes_json_csv_and_figure_with_clip_benchmark(full_root, cb_root, tmp_path, capsys):  # noqa: F811
    rows = [("OpenCLIP", 60.0 + k, [30.0 + k + j for j in range(12)]) for k in range(4)]
    write_published(tmp_path / "vl_compo_results.csv", rows)
    output = tmp_path / "results.json"
    results = c2eval.main([
        "--model", "C2LIP-Tiny", "--benchmark", *MINE, "--data-root", str(full_root), "--output", str(output),
        "--no-progress", "--device", "cpu", "--batch-size", "16",
        "--clip-benchmark-root", str(cb_root), "--clip-benchmark-datasets", "imagenet1k-unverified", "flickr30k",
        "imagenet1k", "--clip-benchmark-classnames", str(cb_root / "classnames.json"),
        "--clip-benchmark-templates", str(cb_root / "templates.json"),
        "--csv", str(tmp_path / "row.csv"), "--run-name", "tiny", "--compare", str(tmp_path / "vl_compo_results.csv"),
        "--figure", str(tmp_path / "fig.png")])
    assert json.loads(output.read_text()) == results
    assert list(results) == MINE + ["clip_benchmark", "_skipped"]
    assert list(results["clip_benchmark"]) == ["imagenet1k-unverified", "flickr30k"]
    assert list(results["_skipped"]) == ["clip_benchmark/imagenet1k"]
    with open(tmp_path / "row.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row[""] == "tiny" and row["arch"] == "C2LIP-Tiny" and row["family"] == "ours"
    assert float(row["imagenet"]) == pytest.approx(100 * results["clip_benchmark"]["imagenet1k-unverified"]["acc1"])
    assert float(row["flickr_t2i"]) == pytest.approx(
        100 * results["clip_benchmark"]["flickr30k"]["image_retrieval_recall@1"])
    assert float(row["colorswap"]) == pytest.approx(100 * results["colorswap"]["_average"]["group"])
    assert float(row["crepe::swap"]) == pytest.approx(100 * results["crepe"]["swap"]["acc"])
    assert row["comp_avg"] == "" and row["aro"] == "" and row["coco_i2t"] == ""
    assert (tmp_path / "fig.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "### clip_benchmark" in printed and "vl_compo-format row written" in printed
