"""open_clip_c2lip.demo.blind: image-blind rules on known cases, and every split of a generated world at
chance by construction (add_obj: its length cue, inherent to the category, shows)."""
import json
import random
from collections import Counter

import pytest

from open_clip_c2lip.demo import blind, evalsets
from open_clip_c2lip.demo.world import WorldSpec, balanced_scenes, held_out_pairs, scene_key

SPEC = WorldSpec()


def _write(tmp_path, split, items, folder="sugarcrepe"):
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / folder / f"{split}.json").write_text(json.dumps({str(i): dict(item, filename="a.jpg")
                                                                  for i, item in enumerate(items)}))


def test_rules_on_a_known_case(tmp_path):
    train = ["a red bar and a blue ring"] * 3 + ["a red bar, a blue ring and a green pole"]
    _write(tmp_path, "add_obj", [{"caption": "a red bar and a blue ring",
                                  "negative_caption": "a red bar, a blue ring and a green pole"},
                                 {"caption": "a red bar and a blue ring", "negative_caption": "a red ring and a blue bar"}])
    result = blind.blind_accuracy(train, str(tmp_path))["add_obj"]
    assert result["n"] == 2
    # length: item 0 the caption is shorter; item 1 equal -> half
    assert result["length"] == pytest.approx((1 + 0.5) / 2)
    # count: 2 objects seen 3x, 3 objects 1x -> item 0 right; item 1 same count -> half
    assert result["count"] == pytest.approx((1 + 0.5) / 2)
    # phrases: item 0 mean log freq of (red bar 4, blue ring 4) beats (4, 4, green pole 1); item 1 names
    # two never-seen phrases -> the caption wins both
    assert result["phrases"] == pytest.approx(1.0)
    # familiar: item 0 both name only trained pairs -> half; item 1 the negative names 2 unseen -> it wins
    assert result["familiar"] == pytest.approx((0.5 + 0.0) / 2)
    # bigram LM: "red ring" / "blue bar" never follow each other in training -> the caption wins item 1
    rules = blind.fit_rules(train)
    assert rules["ngram"]("a red bar and a blue ring") > rules["ngram"]("a red ring and a blue bar")


def test_bigram_model_by_hand():
    train = ["a red bar", "a red ring"]
    rules = blind.fit_rules(train)
    # tokens <s> a red bar </s> | <s> a red ring </s>: vocabulary 6 + 1 unknown; P(b|a) = (n(a,b)+1)/(n(a)+7)
    p = [(2 + 1) / (2 + 7), (2 + 1) / (2 + 7), (1 + 1) / (2 + 7), (1 + 1) / (1 + 7)]
    import math
    assert rules["ngram"]("a red bar") == pytest.approx(sum(map(math.log, p)) / 4)


def test_ties_count_half_whatever_the_summation_order():
    score = lambda caption: sum(0.1 for _ in caption.split())  # 0.1 + 0.1 + 0.1 != 0.3 exactly
    assert blind.choose(score, "x y z", "u v w") == 0.5
    assert blind.choose(score, "x y", "u v w") == 0.0 and blind.choose(score, "x y z", "u v") == 1.0


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One world's training captions and its seen / unseen sets (the demo's defaults, 400 images each)."""
    root = tmp_path_factory.mktemp("blind")
    results = {}
    for seed in (0, 1):
        held = held_out_pairs(SPEC, seed)
        train = balanced_scenes(SPEC, 4096, random.Random(seed), avoid=held)
        keys = {scene_key(s) for s in train}
        counts = Counter(o.pair for s in train for o in s.objects)
        captions = [s.caption() for s in train]
        for name, novel in (("seen", False), ("unseen", True)):
            path = root / f"{seed}_{name}"
            evalsets.write_eval_sets(str(path), SPEC, 400, seed=seed + 10 + novel, exclude=keys, held_out=held,
                                     novel=novel, pair_counts=counts)
            results[seed, name] = blind.blind_accuracy(captions, str(path))
    return results


def test_every_split_is_at_chance_for_every_blind_rule(generated):
    for (seed, name), splits in generated.items():
        expected = set(evalsets.NEGATIVES) | (set(evalsets.PROBES) if name == "unseen" else set())
        assert set(splits) == expected
        for split, row in splits.items():
            for rule in blind.RULES:
                if split == "add_obj" and rule in ("length", "ngram", "phrases"):
                    continue  # the added object: inherent to the category
                # count and familiarity tie on every item (exactly 50); the frequency priors are balanced
                tolerance = 0.0 if rule in ("length", "count", "familiar") else 0.08
                assert abs(row[rule] - 0.5) <= tolerance, (seed, name, split, rule, row)


def test_novel_against_novel_ties_every_rule_on_swaps_and_probes(generated):
    for seed in (0, 1):
        unseen = generated[seed, "unseen"]
        for split in ("swap_att", "phrase_probe"):
            assert all(unseen[split][rule] == 0.5 for rule in blind.RULES), (split, unseen[split])
        # the recolourings and the novel half tie everything but the bigram model (colour and shape counts)
        for split in ("replace_att", "replace_obj", "novel_half"):
            assert all(unseen[split][rule] == 0.5 for rule in ("length", "count", "phrases", "familiar"))


def test_add_obj_reports_its_length_cue(generated):
    for (seed, name), splits in generated.items():
        assert splits["add_obj"]["length"] == 1.0  # the negative names one more object, always
        assert splits["add_obj"]["familiar"] == 0.5


def test_a_novel_against_familiar_split_would_show_its_cue(tmp_path):
    """The previous design's swap: a held-out object swapped with a trained one names two trained pairs."""
    held = held_out_pairs(SPEC, 0)
    train = [s.caption() for s in balanced_scenes(SPEC, 2000, random.Random(0), avoid=held)]
    c1, s1 = sorted(held)[0]
    c3 = next(c for c in SPEC.colours if c not in {c for c, _ in held})
    s3 = next(s for s in SPEC.shapes if s not in {s for _, s in held})
    _write(tmp_path, "swap_att", [{"caption": f"a {c1} {s1} and a {c3} {s3}",
                                   "negative_caption": f"a {c3} {s1} and a {c1} {s3}"}])
    row = blind.blind_accuracy(train, str(tmp_path))["swap_att"]
    assert row["familiar"] == 1.0 and row["phrases"] == 0.0
