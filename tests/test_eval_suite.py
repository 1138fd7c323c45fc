"""Tests for open_clip_c2lip.eval.suite: all benchmarks in one run, each distinct input encoded once."""
import json

from eval_fixtures import StubModel, c2eval, data_root, stub  # noqa: F401


def test_all_equals_each_benchmark_alone(stub, data_root):
    model, preprocess, tokenizer = stub
    options = {"aro_vga": {"min_samples": 2}}
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["all"], data_root, batch_size=5,
                                       options=options, progress=False, return_scores=True)
    assert list(results) == c2eval.list_benchmarks() == ["sugarcrepe", "sugarcrepe_pp", "aro_vgr", "aro_vga",
                                                         "winoground"]
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
