"""Tests for open_clip_c2lip.eval.suite: all benchmarks in one run, each distinct input encoded once."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest

from eval_fixtures import StubModel, c2eval, data_root, stub  # noqa: F401

ALL_BENCHMARKS = ["sugarcrepe", "sugarcrepe_pp", "aro_vgr", "aro_vga", "aro_coco_order", "aro_flickr_order",
           "winoground", "valse", "imagecode", "vl_checklist", "whatsup"]


def test_all_equals_each_benchmark_alone(stub, data_root):
    model, preprocess, tokenizer = stub
    options = {"aro_vga": {"min_samples": 2}}
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["all"], data_root, batch_size=5,
                                       options=options, progress=False, return_scores=True)
    present = ALL_BENCHMARKS  # the fixture root holds these; the other registered ones are skipped
    assert c2eval.list_benchmarks()[:len(present)] == present
    assert list(results) == present + ["_skipped"]
    assert set(results.pop("_skipped")) == set(c2eval.list_benchmarks()) - set(present)
    for name in results:  # shared encoding across benchmarks changes no number
        alone = c2eval.evaluate(model, preprocess, tokenizer, [name], data_root, batch_size=3, options=options,
                                progress=False)
        assert alone[name] == results[name], name
    # one score row per item, every item of every file (+ the VG-A item below min_samples)
    assert len(records) == sum(r["_average"].get("n_all_relations", r["_average"]["n"])
                               for r in results.values()) + 1


def test_distinct_images_and_captions_encoded_once(stub, data_root):
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
    c2eval.evaluate(counting, preprocess, tokenizer, ["sugarcrepe", "sugarcrepe_pp"], data_root,
                    batch_size=4, progress=False)
    filenames, captions = set(), set()
    for folder in ("sugarcrepe", "sugarcrepe_pp"):
        for path in (data_root / folder).glob("*.json"):
            data = json.loads(path.read_text())
            for d in (data.values() if isinstance(data, dict) else data):
                filenames.add(d["filename"])
                captions |= {d[k] for k in ("caption", "caption2", "negative_caption") if k in d}
    assert calls == {"images": len(filenames), "texts": len(captions)}


def _partial_root(full, root):
    """val2017 + three SugarCrepe splits + Winoground, nothing else (symlinks into ``full``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "val2017").symlink_to(full / "val2017")
    (root / "winoground").symlink_to(full / "winoground")
    (root / "sugarcrepe").mkdir()
    for split in ("add_obj", "replace_obj", "swap_att"):
        (root / "sugarcrepe" / f"{split}.json").symlink_to(full / "sugarcrepe" / f"{split}.json")
    return root


def test_partial_root_evaluates_what_is_present_and_lists_the_rest(stub, data_root, tmp_path, caplog):
    model, preprocess, tokenizer = stub
    root = _partial_root(data_root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["all"], root, progress=False)
    assert list(results) == ["sugarcrepe", "winoground", "_skipped"]
    assert list(results["sugarcrepe"]) == ["add_obj", "replace_obj", "swap_att", "_average"]
    skipped = results["_skipped"]
    assert skipped["sugarcrepe"] == [f"sugarcrepe/{s}.json" for s in ("add_att", "replace_att", "replace_rel",
                                                                       "swap_obj")]
    assert skipped["sugarcrepe_pp"] == [f"sugarcrepe_pp/{s}.json" for s in c2eval.SUGARCREPE_PP_SPLITS]
    assert skipped["aro_vgr"] == ["aro_vgr/visual_genome_relation.json"]
    assert skipped["aro_vga"] == ["aro_vga/visual_genome_attribution.json"]
    # the warnings name what is absent and how to select
    assert "sugarcrepe: 4 of 7 splits are absent" in caplog.text and "--sugarcrepe-splits" in caplog.text
    assert "aro_vgr (aro_vgr/visual_genome_relation.json; get it from" in caplog.text and "--benchmark" in caplog.text
    # the present parts give the numbers a full root gives for them
    full = c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe", "winoground"], data_root, progress=False,
                           options={"sugarcrepe": {"splits": ["add_obj", "replace_obj", "swap_att"]}})
    assert results["sugarcrepe"] == full["sugarcrepe"] and results["winoground"] == full["winoground"]
    markdown = c2eval.format_markdown(results)
    assert "not evaluated (absent from the data root): aro_vgr: aro_vgr/visual_genome_relation.json" in markdown
    # one benchmark named, some of its splits present: the same
    only = c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe"], root, progress=False)
    assert only["sugarcrepe"] == results["sugarcrepe"] and list(only["_skipped"]) == ["sugarcrepe"]


def test_partial_root_errors_for_what_was_named_exactly(stub, data_root, tmp_path):
    model, preprocess, tokenizer = stub
    root = _partial_root(data_root, tmp_path / "root")
    run = lambda names, **kw: c2eval.evaluate(model, preprocess, tokenizer, names, root, progress=False, **kw)
    with pytest.raises(FileNotFoundError, match=r"aro_vgr: not found under .*aro_vgr/visual_genome_relation.json"):
        run(["sugarcrepe", "aro_vgr"])
    with pytest.raises(FileNotFoundError, match=r"requested split file\(s\) not found .*sugarcrepe/swap_obj.json"):
        run(["all"], options={"sugarcrepe": {"splits": ["swap_att", "swap_obj"]}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"none of the requested benchmarks is under .*sugarcrepe \(expected "
                                                r"sugarcrepe/add_att.json, .*winoground \(expected winoground/"):
        c2eval.evaluate(model, preprocess, tokenizer, ["all"], tmp_path / "empty", progress=False)


def test_demo_eval_folder_is_a_ready_eval_root(stub, tmp_path):
    """The demo writes <output>/world/eval in this layout; --benchmark all evaluates its splits."""
    from open_clip_c2lip.demo import evalsets
    from open_clip_c2lip.demo.world import WorldSpec
    model, preprocess, tokenizer = stub
    counts = evalsets.write_eval_sets(str(tmp_path), WorldSpec(), 12, seed=3)
    results = c2eval.evaluate(model, preprocess, tokenizer, ["all"], tmp_path, progress=False)
    written = [s for s in c2eval.SUGARCREPE_SPLITS if counts.get(s)]
    assert written and list(results["sugarcrepe"]) == written + ["_average"]
    assert results["sugarcrepe"]["_average"]["n"] == sum(counts[s] for s in written)
    assert set(results["_skipped"]) == set(c2eval.list_benchmarks())


def test_cli_exits_with_an_error_before_loading_a_model_when_nothing_is_present(tmp_path):
    result = subprocess.run([sys.executable, "-m", "open_clip_c2lip.eval", "--model", "C2LIP-Tiny", "--data-root",
                             str(tmp_path), "--output", str(tmp_path / "r.json"), "--benchmark", "aro_vga",
                             "winoground"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    assert "error: aro_vga: not found under" in result.stderr and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("name, annotation, content", [
    ("sugarcrepe", "sugarcrepe/swap_att.json", "{}"),
    ("sugarcrepe_pp", "sugarcrepe_pp/swap_obj.json", "[]"),
    ("aro_vgr", "aro_vgr/visual_genome_relation.json", "[]"),
    ("winoground", "winoground/examples.jsonl", ""),
    ("winoground", "winoground/examples.jsonl", "\n\n"),
])
def test_empty_annotation_file_is_a_named_error(stub, data_root, tmp_path, name, annotation, content):
    """An annotation file with no items is an error naming it (not null metrics, not a crash in the
    averages after the model has run)."""
    model, preprocess, tokenizer = stub
    root = tmp_path / "root"
    shutil.copytree(data_root, root, symlinks=True)
    (root / annotation).write_text(content)
    with pytest.raises(ValueError, match=rf"{re.escape(annotation)}: holds no items"):
        c2eval.evaluate(model, preprocess, tokenizer, [name], root, progress=False)


def test_each_distinct_input_is_encoded_once_across_all_benchmarks(stub, data_root, monkeypatch):
    """What every benchmark alone encodes, encoded once in one run of all of them (image refs and
    captions shared across splits and benchmarks, e.g. What'sUp's COCO-QA images, are interned)."""
    from open_clip_c2lip.eval import suite
    model, preprocess, tokenizer = stub
    seen = {}

    def recording(kind, encode):
        def wrapped(model, transform, items, **kwargs):
            seen.setdefault(kind, []).append(list(items))
            return encode(model, transform, items, **kwargs)
        return wrapped

    monkeypatch.setattr(suite, "encode_images", recording("images", suite.encode_images))
    monkeypatch.setattr(suite, "encode_texts", recording("texts", suite.encode_texts))
    options = {"aro_vga": {"min_samples": 2}}
    c2eval.evaluate(model, preprocess, tokenizer, ["all"], data_root, options=options, progress=False)
    # the suite encodes benchmark by benchmark, each call only what earlier ones did not need
    together = {kind: [item for call in calls for item in call] for kind, calls in seen.items()}
    seen.clear()
    for name in ALL_BENCHMARKS:
        c2eval.evaluate(model, preprocess, tokenizer, [name], data_root, options=options, progress=False)
    for kind, items in together.items():
        alone = [item for call in seen[kind] for item in call]
        assert len(items) == len(set(items)) == len(set(alone)) and set(items) == set(alone), kind
        assert len(alone) > len(items), kind  # some inputs are needed by more than one benchmark


def test_absent_benchmarks_are_listed_with_where_to_get_them(stub, data_root, tmp_path, caplog):
    model, preprocess, tokenizer = stub
    root = tmp_path / "root"
    root.mkdir()
    (root / "winoground").symlink_to(data_root / "winoground")
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["all"], root, progress=False)
    assert list(results) == ["winoground", "_skipped"] and len(results["_skipped"]) == len(c2eval.list_benchmarks()) - 1
    assert len(results["_skipped"]["vl_checklist"]) == 56  # every corpus config is listed in the JSON
    # the log names each absent benchmark, its files (a long list elided) and where to get it
    assert ("valse (valse/existence.json, valse/plurals.json, valse/counting-hard.json, "
            "valse/counting-small-quant.json, ... (11 files), valse/foil-it.json; get it from "
            "https://github.com/Heidelberg-NLP/VALSE") in caplog.text
    assert "vl_checklist (vl_checklist/corpus/v1/Object/Location/center/hake.yaml, " in caplog.text
    assert "(56 files), vl_checklist/corpus/v1/Relation/spatial/vg.yaml; get it from https://github.com/om-ai-lab/" \
        in caplog.text
    assert "imagecode (imagecode/valid_data.json; get it from https://github.com/McGill-NLP/imagecode" in caplog.text
    assert "aro_vgr (aro_vgr/visual_genome_relation.json; get it from the ARO release" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"whatsup: not found under .*; get it from the Google Drive folder "
                                                r"164q6X9hrvP-QYpi3ioSnfMuyHpG5oRkZ"):
        c2eval.evaluate(model, preprocess, tokenizer, ["whatsup", "winoground"], root, progress=False)


# ------------------------------------------------------------------------------------------------
# damaged annotation files, across benchmarks (a root written here: no shared data needed)

@pytest.fixture(scope="module")
def written_all(tmp_path_factory):
    from compo_fixtures import write_all
    from eval_fixtures import write_aro, write_aro_order, write_vl_checklist, write_whatsup, write_winoground
    root = tmp_path_factory.mktemp("written_all")
    for write in (write_aro, write_winoground, write_aro_order, write_vl_checklist, write_whatsup, write_all):
        write(root)
    return root


ANNOTATIONS = [  # (benchmark, one of its annotation files)
    ("aro_vgr", "aro_vgr/visual_genome_relation.json"), ("winoground", "winoground/examples.jsonl"),
    ("aro_flickr_order", "aro_flickr_order/flickr30k_test.json"),
    ("vl_checklist", "vl_checklist/corpus/v1/Relation/spatial/vg.yaml"),
    ("vl_checklist", "vl_checklist/data/Relation/vg/spatial.json"), ("whatsup", "whatsup/vg_qa_one_obj.json"),
    ("colorswap", "colorswap/test.json"),
    ("crepe", "crepe/prod_hard_negatives/swap/prod_vg_hard_negs_swap_complexity_7.csv"),
    ("eqben", "eqben/ann_json_finegrained_random.json"), ("mmvp_vlm", "mmvp_vlm/Questions.csv"),
    ("svo_probes", "svo_probes/svo_probes.csv"),
]


def _copy(root, tmp_path):
    copy = tmp_path / "root"
    shutil.copytree(root, copy, symlinks=True)
    return copy


@pytest.mark.parametrize("name, annotation", ANNOTATIONS)
def test_non_utf8_annotation_is_an_error_naming_the_file(stub, written_all, tmp_path, name, annotation):
    """A latin-1 byte in an annotation file: an error naming the file (UnicodeDecodeError alone names none)."""
    model, preprocess, tokenizer = stub
    root = _copy(written_all, tmp_path)
    data = (root / annotation).read_bytes()
    (root / annotation).write_bytes(data[:40] + b"caf\xe9" + data[40:])
    with pytest.raises(ValueError, match=rf"{re.escape(str(root / annotation))} is not UTF-8 text \(byte 43"):
        c2eval.evaluate(model, preprocess, tokenizer, [name], root, progress=False)


@pytest.mark.parametrize("name", ["crepe", "mmvp_vlm", "svo_probes", "colorswap", "winoground"])
def test_a_byte_order_mark_changes_nothing(stub, written_all, tmp_path, name):
    """Files saved by a spreadsheet program start with a UTF-8 byte-order mark; pandas (the CREPE
    and SVO-Probes releases' reader) ignores it, so the results must not change."""
    model, preprocess, tokenizer = stub
    want = c2eval.evaluate(model, preprocess, tokenizer, [name], written_all, progress=False)
    root = _copy(written_all, tmp_path)
    for path in [p for p in (root / name).rglob("*") if p.suffix in (".csv", ".json", ".jsonl")]:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert c2eval.evaluate(model, preprocess, tokenizer, [name], root, progress=False) == want


def _first(key, value):
    def mutate(data):
        (data[next(iter(data))] if isinstance(data, dict) else data[0])[key] = value
        return data
    return mutate


VGR = "aro_vgr/visual_genome_relation.json"
FIELD_FAULTS = [  # (benchmark, annotation, mutation, what the error names)
    ("aro_vgr", VGR, _first("true_caption", None), "field 'true_caption' must be a text"),
    ("aro_vgr", VGR, _first("image_path", 7), "field 'image_path' must be a text"),
    ("aro_vgr", VGR, _first("relation_name", ["on"]), "'relation_name' must be a text"),
    ("aro_vgr", VGR, _first("bbox_w", None), "'bbox_w' must be a finite number"),
    ("aro_vgr", VGR, _first("bbox_x", "abc"), "'bbox_x' must be a finite number"),
    ("aro_vgr", VGR, _first("bbox_h", float("nan")), "'bbox_h' must be a finite"),
    ("aro_flickr_order", "aro_flickr_order/flickr30k_test.json", _first("image", None), "'image' must be a text"),
    ("aro_flickr_order", "aro_flickr_order/flickr30k_test.json", _first("caption", 7), "caption must be a text or"),
    ("colorswap", "colorswap/test.json", _first("caption_1", None), "'caption_1' must be a text"),  # was "None"
    ("colorswap", "colorswap/test.json", _first("image_2", 3), "'image_2' must be a text"),
    ("eqben", "eqben/ann_json_finegrained_random.json", _first("caption", None), "'caption' must be a text"),
]


@pytest.mark.parametrize("name, annotation, mutate, message", FIELD_FAULTS)
def test_a_field_of_the_wrong_type_is_an_error_naming_file_item_and_field(stub, written_all, tmp_path, name,
                                                                          annotation, mutate, message):
    """Before: a null caption failed in the tokenizer after every image was encoded (a traceback), a
    number as a path failed in ``Path /``, and ColorSwap / EqBen scored the text "None"."""
    model, preprocess, tokenizer = stub
    root = _copy(written_all, tmp_path)
    path = root / annotation
    path.write_text(json.dumps(mutate(json.loads(path.read_text()))))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: (item|entry) .*{re.escape(message)}"):
        c2eval.evaluate(model, preprocess, tokenizer, [name], root, progress=False)


def test_a_loader_that_interns_a_non_text_caption_fails_before_encoding(stub, written_all, monkeypatch):
    """The suite's own guard, for any benchmark: a caption that is not a text is named before the
    model runs."""
    from open_clip_c2lip.eval import core
    model, preprocess, tokenizer = stub
    loader = core.BENCHMARKS["colorswap"]

    def sloppy(data_root, images, texts, **options):
        scorer = loader(data_root, images, texts, **options)
        texts.add(None)
        return scorer
    monkeypatch.setitem(core.BENCHMARKS, "colorswap", sloppy)
    monkeypatch.setattr(model, "encode_image", lambda *a: pytest.fail("encoded before the check"))
    with pytest.raises(ValueError, match=r"colorswap: 1 caption\(s\) read from .* are not texts, e.g. None"):
        c2eval.evaluate(model, preprocess, tokenizer, ["colorswap"], written_all, progress=False)


def test_duplicate_keys_in_a_json_object_are_an_error(tmp_path):
    """json.load keeps the last of two equal keys and drops the other item without a word; item ids
    are the keys of SugarCrepe, VALSE and ImageCoDe files."""
    from open_clip_c2lip.eval.core import load_json
    path = tmp_path / "add_att.json"
    path.write_text('{"1": {"caption": "a"}, "2": {"caption": "b"}, "1": {"caption": "c"}}')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} has the key '1' twice in one object"):
        load_json(path, "sugarcrepe")
    path.write_text('\ufeff{"1": {"caption": "a"}}', encoding="utf-8")
    assert load_json(path, "sugarcrepe") == {"1": {"caption": "a"}}


def test_an_unreadable_annotation_file_is_an_error_naming_it(stub, written_all, monkeypatch):
    """No read permission (simulated: the tests may run as root): a ValueError naming the file, so
    the command line ends with one ``error:`` line instead of a PermissionError traceback."""
    import builtins
    model, preprocess, tokenizer = stub
    target = written_all / "colorswap" / "test.json"
    real_open = builtins.open

    def guarded(path, *args, **kwargs):
        if str(path) == str(target):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", guarded)
    with pytest.raises(ValueError, match=rf"colorswap: cannot read {re.escape(str(target))}: Permission denied"):
        c2eval.evaluate(model, preprocess, tokenizer, ["colorswap"], written_all, progress=False)
