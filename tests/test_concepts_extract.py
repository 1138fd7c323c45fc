"""Batched, cached concept extraction and its counts (``open_clip_c2lip.concepts.extract``), on real COCO captions."""
import os
import re

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd
import pytest

from open_clip_c2lip import concepts as C
from concepts_fixtures import (  # noqa: F401
    clean_docs,
    coco,
    coco_all,
    full_docs,
    full_nlp,
    naive_clean,
    naive_concepts)

# Sorted-by-id COCO val2017 caption indices whose parse has no non-pronoun noun chunk (the test
# re-checks that on the full pipeline, so a changed file fails loudly instead of passing vacuously).
NO_CHUNK_INDICES = (1264, 1673, 2518)


# ------------------------------------------------------------------------------------------------
# Extraction rules

def test_matches_naive_reference_on_coco(coco, clean_docs):
    got = C.ConceptExtractor()(coco)
    assert got == [naive_concepts(d, naive_clean(c)) for d, c in zip(clean_docs, coco)]
    for concepts in got:
        assert concepts and len(set(concepts)) == len(concepts)
        for concept in concepts:
            assert concept == concept.lower() == " ".join(concept.split())


def test_coco_exercises_the_rules(coco, full_docs):
    """The sample really has pronoun chunks, repeated chunks and messy whitespace to normalize."""
    chunks = [list(d.noun_chunks) for d in full_docs]
    assert sum(any(c.root.pos_ == "PRON" for c in cs) for cs in chunks) >= 10
    assert sum(len({c.text.lower() for c in cs}) < len(cs) for cs in chunks) >= 2
    assert sum(c != " ".join(c.split()) for c in coco) >= 10


def test_fallback_whole_caption_counted(coco_all, full_nlp):
    captions = [coco_all[i] for i in NO_CHUNK_INDICES] + ["Running  quickly ."]
    for caption in captions:  # precondition: no usable chunk at all
        assert all(c.root.pos_ == "PRON" for c in full_nlp(caption).noun_chunks), caption
    stats = C.ConceptStats()
    got = C.extract_concepts(captions, stats=stats)
    assert got == [[" ".join(c.lower().split())] for c in captions]
    assert stats.fallbacks == len(captions) and stats.histogram == {1: len(captions)}
    assert C.extract_concepts(captions, fallback=False) == [[] for _ in captions]


def test_stats_histogram_consistent(coco):
    stats = C.ConceptStats()
    got = C.extract_concepts(coco, stats=stats)
    assert stats.captions == len(coco) and stats.failures == 0
    assert stats.concepts == sum(map(len, got))
    assert dict(stats.histogram) == dict(pd.Series([len(c) for c in got]).value_counts())
    assert "concepts per caption" in stats.summary()


@pytest.mark.parametrize("captions, names, where", [
    (["a dog", "   "], None, "caption #1"),
    (["", "a dog"], ["img-7", "img-8"], "img-7"),
    (["a dog", None], None, "caption #1"),
])
def test_blank_or_bad_caption_error_names_sample(captions, names, where):
    with pytest.raises(C.CaptionError, match=re.escape(where)):
        C.extract_concepts(captions, names=names)


def test_single_string_rejected():
    with pytest.raises(TypeError):
        C.extract_concepts("a dog")


# ------------------------------------------------------------------------------------------------
# Cache and processes

class CountingExtractor(C.ConceptExtractor):
    """Counts the captions actually sent to spaCy."""
    parsed = 0

    @property
    def nlp(self):
        extractor, nlp = self, C.load_spacy(self.spacy_model)

        class Proxy:
            def pipe(self, texts, **kw):
                def counted():
                    for text in texts:
                        extractor.parsed += bool(text)  # "" = the flush text, not a caption
                        yield text
                return nlp.pipe(counted(), **kw)
        return Proxy()


@pytest.mark.parametrize("cache_size", [0, 3, C.DEFAULT_CACHE_SIZE])
def test_cache_correct_and_parses_each_caption_once(coco, clean_docs, cache_size):
    # repeats both inside one spaCy batch (in flight) and across batches (cached or evicted)
    captions = coco[:60] + coco[:60][::-1] + coco[5:8] * 4
    reference = {c: naive_concepts(d, naive_clean(c)) for c, d in zip(coco, clean_docs)}
    extractor = CountingExtractor(batch_size=16, cache_size=cache_size)
    assert extractor(captions) == [reference[c] for c in captions]
    if cache_size >= len(set(captions)):
        assert extractor.parsed == len(set(captions))
        assert extractor.stats.cache_hits == len(captions) - len(set(captions))
    assert extractor.parsed + extractor.stats.cache_hits == len(captions)
    # a second call is served from the cache
    before = extractor.parsed
    assert extractor(coco[:10]) == [reference[c] for c in coco[:10]]
    if cache_size >= len(set(captions)):
        assert extractor.parsed == before


@pytest.mark.parametrize("n_process", [1, 2])
def test_pipe_streams_long_runs_of_cached_captions(coco, n_process):
    """Cached captions do not pile up waiting for a spaCy batch (bounded memory for contexts)."""
    extractor = C.ConceptExtractor(batch_size=8, n_process=n_process)
    expected = extractor(coco[:3])
    pulled = 0

    def items():
        nonlocal pulled
        for i in range(5000):
            pulled += 1
            yield coco[i % 3], i

    stream = extractor.pipe(items())
    first = [next(stream) for _ in range(10)]
    # max lag + batches in flight (one spaCy batch, or two per worker) + one batch being filled + read
    assert pulled <= 4 * 8 * n_process + (2 * n_process if n_process > 1 else 1) * 8 + 8 + 10
    rest = list(stream)
    assert [ctx for _, ctx in first + rest] == list(range(5000))
    assert all(concepts == expected[ctx % 3] for concepts, ctx in first + rest)
    assert extractor.stats.captions == 5003 and extractor.stats.cache_hits == 5000


def test_pipe_keeps_order_and_passes_none_through(coco):
    items = [(None, "bad-0"), (coco[0], 0), (coco[1], 1), (None, "bad-1"), (coco[0], 2)]
    out = list(C.ConceptExtractor(batch_size=2).pipe(items))
    assert [ctx for _, ctx in out] == ["bad-0", 0, 1, "bad-1", 2]
    assert out[0][0] is None and out[3][0] is None and out[1][0] == out[4][0]


def test_n_process_2_same_result(coco):
    assert C.ConceptExtractor(n_process=2, batch_size=32)(coco[:120]) == C.extract_concepts(coco[:120])


def test_long_caption_is_cut_for_parsing_and_counted():
    long = "A brown dog runs on the green grass. " * 30_000  # 1.1M characters > spaCy's max_length
    assert len(long) > 1_000_000
    stats = C.ConceptStats()
    got = C.extract_concepts(["a red ball", long], stats=stats)
    assert got[1] == ["a brown dog", "the green grass"] and stats.cut == 1 and stats.failures == 0
    text, cut = C.concept_source(long)
    assert cut and len(text) <= C.MAX_PARSE_CHARS and naive_clean(long).startswith(text)
    assert naive_clean(long)[len(text)] == " "  # cut at a space: no word split
    assert C.cut_for_parsing("x" * 20, 8) == ("x" * 8, True)  # no space at all: a hard cut
    assert C.cut_for_parsing("ab cd", 5) == ("ab cd", False)
    assert C.cut_for_parsing("ab cd ef", 5) == ("ab cd", True)
    assert "captions cut" in stats.summary()


class FailingExtractor(C.ConceptExtractor):
    """spaCy raising on any text containing BOOM (stands for a caption spaCy cannot handle)."""

    @property
    def nlp(self):
        nlp = C.load_spacy(self.spacy_model)

        class Proxy:
            def pipe(self, texts, **kw):
                for doc in nlp.pipe(texts, **kw):
                    if "boom" in doc.text:
                        raise ValueError("[E999] cannot parse")
                    yield doc

            def __call__(self, text):
                if "boom" in text:
                    raise ValueError("[E999] cannot parse")
                return nlp(text)
        return Proxy()


def test_a_caption_spacy_fails_on_fails_alone(coco):
    captions = coco[:5] + ["a BOOM box"] + coco[5:10]
    out = list(FailingExtractor(batch_size=4).pipe((c, i) for i, c in enumerate(captions)))
    assert [i for _, i in out] == list(range(11))
    assert isinstance(out[5][0], C.CaptionError) and "E999" in str(out[5][0])
    assert [c for c, _ in out[:5] + out[6:]] == C.extract_concepts(coco[:10])
    with pytest.raises(C.CaptionError, match=r"caption #5: spaCy failed.*E999"):
        FailingExtractor(batch_size=4)(captions)
