"""Image-blind rules: how far a pair-choice split can be solved from the two captions alone.

Each rule scores a caption without looking at the image and picks the higher-scoring of an item's
two captions; an exact tie counts one half. A split no such rule separates scores 50 % under every
rule. Rules (the fitted ones on the world's training captions):

- ``length``: the shorter caption (fewer words) wins;
- ``count``: the training frequency of the caption's object count (frequencies within 1 % tie:
  the training counts are balanced to within one caption);
- ``ngram``: a word-bigram language model with add-one smoothing, mean log probability per token
  (sentence boundaries and commas are tokens);
- ``phrases``: the mean log training frequency of the caption's object phrases (add-one smoothed);
- ``familiar``: the caption naming more colour-shape pairs that never occur in training wins
  ("prefer the unfamiliar": a model that is merely less biased towards familiar pairs).

A rule at 100 % or at 0 % both mean a cue (the opposite rule scores the complement).
"""
import json
import math
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from .evalsets import caption_phrases, item_files, phrase_pairs

RULES = ("length", "count", "ngram", "phrases", "familiar")

# float scores closer than this (relative) are a tie: equal products summed in another order
_REL_TOL = 1e-9


def _tokens(caption: str) -> List[str]:
    return ["<s>", *caption.replace(",", " ,").split(), "</s>"]


def fit_rules(train_captions: Sequence[str]) -> Dict[str, Callable[[str], float]]:
    """``{rule: caption -> score}`` fitted on ``train_captions`` (higher score = preferred)."""
    counts = Counter(len(caption_phrases(c)) for c in train_captions)
    phrases = Counter(p for c in train_captions for p in caption_phrases(c))
    pairs = {pair for c in train_captions for pair in phrase_pairs(c)}
    unigrams, bigrams = Counter(), Counter()
    for caption in train_captions:
        tokens = _tokens(caption)
        unigrams.update(tokens[:-1])
        bigrams.update(zip(tokens[:-1], tokens[1:]))
    vocabulary = len({t for c in train_captions for t in _tokens(c)}) + 1  # + 1: an unknown word
    total_captions, total_phrases, phrase_vocabulary = sum(counts.values()), sum(phrases.values()), len(phrases) + 1

    def count_score(caption: str) -> float:
        return math.log((counts[len(caption_phrases(caption))] + 1) / (total_captions + 1))

    def ngram_score(caption: str) -> float:
        tokens = _tokens(caption)
        logs = [math.log((bigrams[(a, b)] + 1) / (unigrams[a] + vocabulary)) for a, b in zip(tokens[:-1], tokens[1:])]
        return sum(logs) / len(logs)

    def phrase_score(caption: str) -> float:
        parts = caption_phrases(caption)
        return sum(math.log((phrases[p] + 1) / (total_phrases + phrase_vocabulary)) for p in parts) / len(parts)

    return {
        "length": lambda caption: -float(len(caption.split())),
        "count": count_score,
        "ngram": ngram_score,
        "phrases": phrase_score,
        "familiar": lambda caption: float(len(phrase_pairs(caption) - pairs)),
    }


def choose(score: Callable[[str], float], caption: str, negative: str, tolerance: float = 0.0) -> float:
    """1 if ``score`` prefers ``caption``, 0 if it prefers ``negative``, 0.5 on a tie."""
    pos, neg = score(caption), score(negative)
    margin = max(tolerance, _REL_TOL * max(1.0, abs(pos), abs(neg)))
    return 1.0 if pos > neg + margin else 0.0 if neg > pos + margin else 0.5


def blind_accuracy(train_captions: Sequence[str], root) -> Dict[str, Dict[str, float]]:
    """Accuracy of every rule of :data:`RULES` on every pair-choice file of the set at ``root``
    (``evalsets.item_files``). Returns ``{split: {rule: accuracy, ..., "n": items}}``."""
    rules = fit_rules(train_captions)
    tolerance = {"count": 0.01}
    results = {}
    for split, path in item_files(root).items():
        items = list(json.loads(Path(path).read_text()).values())
        row: Dict[str, float] = {}
        for name in RULES:
            wins = [choose(rules[name], i["caption"], i["negative_caption"], tolerance.get(name, 0.0)) for i in items]
            row[name] = sum(wins) / len(wins) if wins else None
        row["n"] = len(items)
        results[split] = row
    return results
