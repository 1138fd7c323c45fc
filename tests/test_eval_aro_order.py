"""Tests for open_clip_c2lip.eval.aro_order (ARO COCO-Order / Flickr30k-Order): the caption
normalization, the four seeded word-order perturbations (against an independent implementation of
their published description) and Precision@1 with ties counted right."""
import json
import random
from itertools import permutations

import numpy as np
import pytest

from eval_fixtures import (ARO_ORDER_ENTRIES, Comparisons, Reference, Scripted, assert_results_equal,  # noqa: F401
                           block_image, c2eval, id_image, scored, stub, write_json, written_root)
from open_clip_c2lip.eval import aro_order

NOUNS, ADJECTIVES = {"NN", "NNS", "NNP", "NNPS"}, {"JJ", "JJR", "JJS"}


@pytest.mark.parametrize("raw, expected", [
    ("A man with a red helmet on a small moped on a dirt road. ",
     "a man with a red helmet on a small moped on a dirt road"),
    ("A dog runs (fast) on the grass: happily!", "a dog runs fast on the grass happily"),
    ("Two  dogs\n", "two dogs"),
    ('The "best" #1 cake; don\'t~eat * it', "the best 1 cake don't eat it"),
    (" ".join(f"w{i}" for i in range(35)), " ".join(f"w{i}" for i in range(30))),
])
def test_pre_caption(raw, expected):
    assert aro_order.pre_caption(raw) == expected


def _reference_options(captions, seed=1):
    """The published perturbations, written independently: numpy's global-style RandomState permutes the
    noun / adjective / other token values, Python's Random shuffles trigrams; then pre_caption."""
    from open_clip_c2lip.concepts import load_spacy
    nlp = load_spacy("en_core_web_sm", full_pipeline=True)
    numpy_rng, python_rng = np.random.RandomState(seed), random.Random(seed)

    def permute_where(tokens, selected):
        text = np.array(tokens)
        index = [i for i, ok in enumerate(selected) if ok]
        text[index] = numpy_rng.permutation(text[index])
        return list(text)

    def trigrams(words):
        groups, group = [], []
        for i, w in enumerate(words):
            group.append(w)
            if i % 3 == 2:
                groups.append(group)
                group = []
        return groups + ([group] if group else [])

    out = []
    for caption in captions:
        doc = nlp(caption)
        tokens, tags = [t.text for t in doc], [t.tag_ for t in doc]
        one = permute_where(tokens, [t in NOUNS for t in tags])
        one = permute_where(one, [t in ADJECTIVES for t in tags])
        two = permute_where(tokens, [t not in NOUNS | ADJECTIVES for t in tags])
        words = aro_order.word_tokens(caption)
        groups = trigrams(words)
        for g in groups:
            python_rng.shuffle(g)
        three = " ".join(" ".join(g) for g in groups)
        groups = trigrams(words)
        python_rng.shuffle(groups)
        four = " ".join(" ".join(g) for g in groups)
        out.append([aro_order.pre_caption(t) for t in (caption, " ".join(one), " ".join(two), three, four)])
    return out


COCO_CAPTIONS = ["A man with a red helmet on a small moped on a dirt road. ", "Two dogs.",
                 "A little girl in a pink dress eats a huge slice of chocolate cake at the table.",
                 "Several large white boats are docked at the pier next to a tall old building.",
                 "Man riding a motor bike on a dirt road on the countryside.", "A cat. It sleeps on a soft red couch."]


def test_perturbations_match_an_independent_implementation_of_the_description():
    got = aro_order.OrderPerturber(seed=1).options(COCO_CAPTIONS * 3)
    assert got == _reference_options(COCO_CAPTIONS * 3)
    assert got != aro_order.OrderPerturber(seed=2).options(COCO_CAPTIONS * 3)  # the seed matters
    assert got[:6] != got[6:12]  # the streams go on from caption to caption


def test_each_perturbation_only_moves_what_it_should():
    perturber = aro_order.OrderPerturber(seed=3)
    tokens = ["A", "small", "brown", "dog", "chases", "a", "big", "red", "ball", "on", "the", "green", "grass", "."]
    tags = ["DT", "JJ", "JJ", "NN", "VBZ", "DT", "JJ", "JJ", "NN", "IN", "DT", "JJ", "NN", "."]
    for _ in range(5):
        one = perturber.nouns_and_adjectives(tokens, tags).split(" ")
        assert sorted(one) == sorted(tokens)
        assert all(a == b for a, b, t in zip(one, tokens, tags) if t not in NOUNS | ADJECTIVES)
        assert sorted(w for w, t in zip(one, tags) if t in NOUNS) == ["ball", "dog", "grass"]
        two = perturber.all_but_nouns_and_adjectives(tokens, tags).split(" ")
        assert all(a == b for a, b, t in zip(two, tokens, tags) if t in NOUNS | ADJECTIVES)
        assert sorted(two) == sorted(tokens)
        three = perturber.within_trigrams(tokens).split(" ")
        assert [sorted(three[i:i + 3]) for i in range(0, 14, 3)] == [sorted(tokens[i:i + 3]) for i in range(0, 14, 3)]
        units = [" ".join(tokens[i:i + 3]) for i in range(0, 14, 3)]  # 4 trigrams and a bigram
        assert perturber.trigrams(tokens) in {" ".join(order) for order in permutations(units)}


def reference_order(ref: Reference, root, name, cmp: Comparisons):
    annotation = ARO_ORDER_ENTRIES[name][0]
    entries = json.loads((root / name / annotation).read_text())
    captions = [c for e in entries for c in e["caption"]]
    images = [e["image"] for e in entries for _ in e["caption"]]
    options = _reference_options(captions)
    outcomes, ties = [], 0
    for image, row in zip(images, options):
        v = ref.image(root / name / image)
        scores = [float(v @ ref.text(o)) for o in row]
        outcomes.append(cmp.first_best(scores) == 0)
        ties += scores[0] == max(scores[1:])
    result = {"acc": sum(outcomes) / len(outcomes), "n": len(outcomes), "ties": ties}
    return {"test": result, "_average": dict(result)}, options


def test_aro_order_matches_independent_reference(stub, written_root):
    model, preprocess, tokenizer = stub
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["aro_coco_order", "aro_flickr_order"],
                                       written_root, batch_size=3, progress=False, return_scores=True)
    cmp = Comparisons()
    ref = Reference(model, preprocess, tokenizer)
    want, options = {}, {}
    for name in ("aro_coco_order", "aro_flickr_order"):
        want[name], options[name] = reference_order(ref, written_root, name, cmp)
    cmp.assert_clear()
    assert_results_equal(results, want)
    for name in options:
        assert [r["options"] for r in records if r["benchmark"] == name] == options[name]
    # every perturbation of "Dogs." is "dogs": a five-way tie, counted right
    tie = [r for r in records if r["options"][0] == "dogs"][0]
    assert set(tie["options"]) == {"dogs"} and len(set(tie["scores"])) == 1 and tie["correct"]
    assert results["aro_flickr_order"]["test"]["ties"] >= 1


def test_ties_count_as_right_on_scripted_scores(tmp_path):
    captions = ["Dogs.", "A big brown dog runs fast on the green grass.", "A small cat sits on a red mat near a door."]
    options = aro_order.OrderPerturber(seed=1).options(captions)
    assert set(options[0]) == {"dogs"}  # every perturbation of a one-word caption is the caption
    other = next(o for o in options[2][1:] if o != options[2][0])
    texts = {o: scored(0.1) for row in options for o in row}
    texts.update({options[0][0]: scored(0.5), options[1][0]: scored(0.9), options[2][0]: scored(0.5),
                  other: scored(0.7)})
    id_image(tmp_path / "aro_coco_order" / "val2014" / "COCO_val2014_000000000001.jpg", 0)
    write_json(tmp_path / "aro_coco_order" / "coco_karpathy_test.json",
               [{"image": "val2014/COCO_val2014_000000000001.jpg", "caption": captions}])
    results = Scripted([[1.0, 0.0]], texts).evaluate(["aro_coco_order"], tmp_path)["aro_coco_order"]
    assert results["test"] == results["_average"] == {"acc": pytest.approx(2 / 3), "n": 3, "ties": 1}


def test_missing_image_is_a_named_error(tmp_path):
    block_image(tmp_path / "aro_flickr_order" / "flickr30k-images" / "1.jpg", seed=0)
    write_json(tmp_path / "aro_flickr_order" / "flickr30k_test.json",
               [{"image": "flickr30k-images/1.jpg", "caption": ["A dog."]},
                {"image": "flickr30k-images/2.jpg", "caption": ["A cat."]}])
    scripted = Scripted([[1.0, 0.0]], {})
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) referenced by .*flickr30k_test.json are missing "
                                                r".*2.jpg"):
        scripted.evaluate(["aro_flickr_order"], tmp_path)
    write_json(tmp_path / "aro_flickr_order" / "flickr30k_test.json", [{"image": "flickr30k-images/1.jpg"}])
    with pytest.raises(ValueError, match=r"flickr30k_test.json: item 0 lacks field 'caption'"):
        scripted.evaluate(["aro_flickr_order"], tmp_path)


def test_a_missing_spacy_model_is_an_error_saying_how_to_install_it(tmp_path, monkeypatch):
    """load_spacy raises OSError with the install command; the eval CLI turns ValueErrors (not
    OSErrors) into one ``error:`` line."""
    import open_clip_c2lip.concepts as concepts

    def absent(name, **kwargs):
        raise OSError(f"spaCy model {name!r} is not installed. Install it with `pip install {name}`")
    monkeypatch.setattr(concepts, "load_spacy", absent)
    with pytest.raises(ValueError, match=r"need spaCy's en_core_web_sm: spaCy model 'en_core_web_sm' is not "
                                         r"installed. Install it with `pip install en_core_web_sm`"):
        aro_order.OrderPerturber().options(["a dog on a mat"])
