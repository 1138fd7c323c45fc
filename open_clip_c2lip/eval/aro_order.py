"""ARO COCO-Order and Flickr30k-Order (Yuksekgonul et al., ICLR 2023;
mertyg/vision-language-models-are-bows ``dataset_zoo/aro_datasets.py`` ``COCO_Order`` /
``Flickr30k_Order``, perturbations in ``dataset_zoo/perturbations.py`` ``TextShuffler``).

``<root>/aro_coco_order/coco_karpathy_test.json`` + the COCO 2014 images it names
(``val2014/COCO_val2014_*.jpg``, relative to ``aro_coco_order/``), and
``<root>/aro_flickr_order/flickr30k_test.json`` + ``aro_flickr_order/flickr30k-images/``: the
Karpathy test splits as the ARO code downloads them (lists of ``{"image", "caption": [texts]}``).

Every caption of every image is one test case with five options: the caption and four
perturbations of it, each normalized by ``pre_caption(text, 30)`` (:func:`pre_caption`):

1. the nouns (Penn tags NN, NNS, NNP, NNPS of spaCy ``en_core_web_sm``) permuted among themselves,
   then the adjectives (JJ, JJR, JJS) among themselves;
2. every other token permuted among themselves, nouns and adjectives kept in place;
3. the word tokens (NLTK ``word_tokenize``) cut into consecutive trigrams, each trigram shuffled;
4. the same trigrams shuffled as units.

The ARO code seeds everything with 1 (``seed_all``) and draws the permutations from numpy's global
``RandomState`` (1, 2) and Python's ``random`` (3, 4), caption after caption in file order; this module
draws from a ``RandomState(seed)`` and a ``random.Random(seed)`` in that order. Two differences can
change which shuffles come out (not the protocol): spaCy model versions tag some words differently,
and NLTK's ``word_tokenize`` needs the downloaded ``punkt`` model, so sentences are split here by
NLTK's Punkt algorithm without the English abbreviation list (different only for a caption with an
abbreviation such as "St." and a second sentence).

Protocol (``evaluate_scores``, Precision@1): correct iff ``np.argmax`` over the five options'
similarities is 0, the original caption; ``np.argmax`` returns the first maximum, so a tie
(e.g. a perturbation that leaves the caption unchanged) counts as correct.
"""
import functools
import logging
import random
import re
from collections import OrderedDict
from pathlib import Path
from typing import List, Sequence

import numpy as np

from .core import (ImageRef, Scorer, Vocabulary, check_images, choice_outcome, field, fraction, load_json,
                   option_similarity, register_benchmark, require_file, require_items, text_field)

_logger = logging.getLogger(__name__)

SEED = 1  # main_aro.py --seed default, passed to seed_all
MAX_WORDS = 30  # COCO_Order / Flickr30k_Order max_words
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
ADJECTIVE_TAGS = frozenset({"JJ", "JJR", "JJS"})
SPLIT = "test"
_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_SPACE_RUNS = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """The ARO / BLIP caption normalization: lower-case; each of ``.!"()*#:;~`` becomes a space;
    runs of two or more whitespace characters become one space; trailing newline and outer spaces
    removed; cut to the first ``max_words`` space-separated words."""
    text = _SPACE_RUNS.sub(" ", _PUNCTUATION.sub(" ", caption.lower()))
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


@functools.lru_cache(maxsize=None)
def _nltk_tokenizers():
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def word_tokens(text: str) -> List[str]:
    """NLTK word tokens: Punkt sentences (no trained abbreviation list), each Treebank-tokenized."""
    sentences, words = _nltk_tokenizers()
    return [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)]


def _trigrams(tokens: Sequence[str]) -> List[List[str]]:
    return [list(tokens[i:i + 3]) for i in range(0, len(tokens), 3)]


class OrderPerturber:
    """The four ARO word-order perturbations, with their random streams seeded once (numpy legacy
    ``RandomState`` for the tag-based ones, Python ``random`` for the trigram ones)."""

    def __init__(self, seed: int = SEED, spacy_model: str = "en_core_web_sm"):
        self.numpy_rng = np.random.RandomState(seed)
        self.python_rng = random.Random(seed)
        self.spacy_model = spacy_model

    def _permute(self, tokens: List[str], positions: Sequence[int]) -> None:
        """Permute ``tokens`` at ``positions`` in place (``RandomState.permutation`` of their values)."""
        order = self.numpy_rng.permutation(len(positions))
        values = [tokens[p] for p in positions]
        for p, k in zip(positions, order):
            tokens[p] = values[k]

    def nouns_and_adjectives(self, tokens: Sequence[str], tags: Sequence[str]) -> str:
        tokens = list(tokens)
        self._permute(tokens, [i for i, t in enumerate(tags) if t in NOUN_TAGS])
        self._permute(tokens, [i for i, t in enumerate(tags) if t in ADJECTIVE_TAGS])
        return " ".join(tokens)

    def all_but_nouns_and_adjectives(self, tokens: Sequence[str], tags: Sequence[str]) -> str:
        tokens = list(tokens)
        self._permute(tokens, [i for i, t in enumerate(tags) if t not in NOUN_TAGS | ADJECTIVE_TAGS])
        return " ".join(tokens)

    def within_trigrams(self, words: Sequence[str]) -> str:
        trigrams = _trigrams(words)
        for trigram in trigrams:
            self.python_rng.shuffle(trigram)
        return " ".join(" ".join(t) for t in trigrams)

    def trigrams(self, words: Sequence[str]) -> str:
        trigrams = _trigrams(words)
        self.python_rng.shuffle(trigrams)
        return " ".join(" ".join(t) for t in trigrams)

    def options(self, captions: Sequence[str], max_words: int = MAX_WORDS) -> List[List[str]]:
        """``[caption, 4 perturbations]`` per caption, each through :func:`pre_caption`, drawing the
        random streams caption after caption in the given order."""
        from ..concepts import load_spacy

        try:
            nlp = load_spacy(self.spacy_model)
        except OSError as e:  # not installed: the message says how to install it
            raise ValueError(f"the ARO word-order perturbations need spaCy's {self.spacy_model}: {e}") from e
        out = []
        with nlp.select_pipes(disable=[p for p in ("parser",) if p in nlp.pipe_names]):
            for caption, doc in zip(captions, nlp.pipe(captions, batch_size=256)):
                tokens, tags = [t.text for t in doc], [t.tag_ for t in doc]
                words = word_tokens(caption)
                perturbed = [self.nouns_and_adjectives(tokens, tags), self.all_but_nouns_and_adjectives(tokens, tags),
                             self.within_trigrams(words), self.trigrams(words)]
                out.append([pre_caption(t, max_words) for t in [caption] + perturbed])
        return out


def _load_order(name: str, annotation: str, data_root: Path, images: Vocabulary, texts: Vocabulary,
                seed: int, spacy_model: str) -> Scorer:
    folder = Path(data_root) / name
    source = require_file(folder / annotation, name)
    data = load_json(source, name)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of {{image, caption}} entries, got {type(data).__name__}")
    require_items(data, source)
    ids, paths, captions = [], [], []
    for index, entry in enumerate(data):
        image = text_field(entry, "image", source, index)
        entry_captions = field(entry, "caption", source, index)
        if isinstance(entry_captions, str):
            entry_captions = [entry_captions]
        if not isinstance(entry_captions, list) or not all(isinstance(c, str) for c in entry_captions):
            raise ValueError(f"{source}: entry {index}: caption must be a text or a list of texts")
        for k, caption in enumerate(entry_captions):
            ids.append(f"{index}/{k}")
            paths.append(folder / image)
            captions.append(caption)
    require_items(captions, source)
    check_images(sorted(set(paths)), folder, source)
    _logger.info("%s: generating the word-order perturbations of %d captions (seed %d)", name, len(captions), seed)
    options = OrderPerturber(seed, spacy_model).options(captions)
    image_index = [images.add(ImageRef(p)) for p in paths]
    option_index = np.asarray([[texts.add(o) for o in row] for row in options])

    def score(image_features, text_features):
        scores = option_similarity(image_features, text_features, image_index, option_index)  # [N, 5]
        correct, tied = choice_outcome(scores, answer=0, ties="correct")
        result = {"acc": fraction(correct), "n": len(correct), "ties": int(tied.sum())}
        records = [{"benchmark": name, "split": SPLIT, "id": i, "options": o, "scores": s.tolist(), "correct": bool(c)}
                   for i, o, s, c in zip(ids, options, scores, correct)]
        return OrderedDict([(SPLIT, result), ("_average", dict(result))]), records

    return score


# the annotation files the ARO code downloads (download_url in COCO_Order / Flickr30k_Order)
_KARPATHY = "https://storage.googleapis.com/sfr-vision-language-research/datasets/"
COCO_SOURCE = f"{_KARPATHY}coco_karpathy_test.json + the COCO val2014 images in aro_coco_order/val2014/"
FLICKR_SOURCE = (f"{_KARPATHY}flickr30k_test.json + the Flickr30k images (by request: forms.illinois.edu/sec/229675) "
                 "in aro_flickr_order/flickr30k-images/")


@register_benchmark("aro_coco_order", files=lambda root: {"aro_coco_order": Path(root) / "aro_coco_order" /
                                                          "coco_karpathy_test.json"}, source=COCO_SOURCE)
def load_aro_coco_order(data_root: Path, images: Vocabulary, texts: Vocabulary, seed: int = SEED,
                        spacy_model: str = "en_core_web_sm") -> Scorer:
    """ARO COCO-Order: Precision@1 of the caption among itself and its 4 perturbations (ties correct)."""
    return _load_order("aro_coco_order", "coco_karpathy_test.json", data_root, images, texts, seed, spacy_model)


@register_benchmark("aro_flickr_order", files=lambda root: {"aro_flickr_order": Path(root) / "aro_flickr_order" /
                                                            "flickr30k_test.json"}, source=FLICKR_SOURCE)
def load_aro_flickr_order(data_root: Path, images: Vocabulary, texts: Vocabulary, seed: int = SEED,
                          spacy_model: str = "en_core_web_sm") -> Scorer:
    """ARO Flickr30k-Order: as :func:`load_aro_coco_order` on the Flickr30k Karpathy test split."""
    return _load_order("aro_flickr_order", "flickr30k_test.json", data_root, images, texts, seed, spacy_model)
