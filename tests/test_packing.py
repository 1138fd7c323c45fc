"""TextPacker and concept spans: exact ids, spans that decode back to the concept, layout round trip.

Real COCO captions with spaCy noun-chunk concepts, for open_clip's CLIP BPE ``SimpleTokenizer`` and
for HF fast tokenizers built offline (a Unigram/Metaspace model trained on COCO captions, loaded
through open_clip's ``HFTokenizer`` and wrapped as a ``SigLipTokenizer``).
"""
import functools
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

from open_clip.tokenizer import HFTokenizer, SigLipTokenizer, SimpleTokenizer, _clean_canonicalize

from open_clip_c2lip.layout import unpack_texts
from open_clip_c2lip.packing import STAT_KEYS, TextPacker, concept_spans, get_aligner, locate_concepts

NUM_CAPTIONS = 240


@pytest.fixture(scope="module")
def coco_captions(real_data):
    annotations = json.loads(real_data("coco_captions_val2017.json").read_text())["annotations"]
    # every 7th caption: varied images, not five captions of the same one
    return [a["caption"] for a in annotations[::7][:NUM_CAPTIONS]]


@pytest.fixture(scope="module")
def coco_concepts(coco_captions):
    """Concepts of the COCO captions (the project's extractor)."""
    from open_clip_c2lip.concepts import extract_concepts

    return extract_concepts(coco_captions)


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory, coco_captions, real_data):
    """A small HF fast tokenizer (Unigram + Metaspace, T5-like ``</s>`` suffix) trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    annotations = json.loads(real_data("coco_captions_val2017.json").read_text())["annotations"]
    corpus = [_clean_canonicalize(a["caption"]) for a in annotations[1::13][:400]]
    model = Tokenizer(models.Unigram())
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=700, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    model.train_from_iterator(corpus, trainer)
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", model.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    path = tmp_path_factory.mktemp("hf_tokenizer")
    fast.save_pretrained(path)
    return str(path)


@functools.lru_cache(maxsize=None)
def _make_simple(context_length):
    return SimpleTokenizer(context_length=context_length)


def _make_siglip(hf_dir, context_length):
    # SigLipTokenizer.__init__ downloads a sentencepiece vocab; build it around the offline fast tokenizer
    tokenizer = SigLipTokenizer.__new__(SigLipTokenizer)
    tokenizer.tokenizer = HFTokenizer(hf_dir, context_length=context_length).tokenizer
    tokenizer.context_length = context_length
    return tokenizer


TOKENIZER_KINDS = ("simple", "hf", "siglip")


@pytest.fixture(scope="module")
def make_tokenizer(hf_tokenizer_dir):
    def make(kind, context_length=77):
        if kind == "simple":
            return _make_simple(context_length)
        if kind == "hf":
            return HFTokenizer(hf_tokenizer_dir, context_length=context_length, clean="canonicalize")
        return _make_siglip(hf_tokenizer_dir, context_length)
    return make


def _decode(tokenizer, ids):
    """Decoded span tokens, normalised like the expected concept (see ``_expected``)."""
    if isinstance(tokenizer, SimpleTokenizer):
        return " ".join(tokenizer.decode(ids).split())
    return tokenizer.tokenizer.decode(ids).strip()


def _expected(tokenizer, concept):
    """The concept as the tokenizer sees it: cleaned; for CLIP BPE, one space between regex tokens
    (that is how ``SimpleTokenizer.decode`` renders word ends)."""
    cleaned = get_aligner(tokenizer).clean(concept)
    if isinstance(tokenizer, SimpleTokenizer):
        return " ".join(tokenizer.pat.findall(cleaned))
    return cleaned


def _no_extraction(captions):
    raise AssertionError("concepts were given; nothing should be extracted")


# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_caption_row_is_the_tokenizer_row(kind, make_tokenizer, coco_captions, coco_concepts):
    tokenizer = make_tokenizer(kind)
    packer = TextPacker(tokenizer, max_concepts=4, concept_extractor=_no_extraction)
    packed = packer(list(zip(coco_captions, coco_concepts)))
    assert packed.shape == (len(coco_captions), 9, tokenizer.context_length)
    assert packed.dtype == torch.long
    assert torch.equal(packed[:, 0], tokenizer(coco_captions))
    for caption, row in zip(coco_captions[:20], packed):
        assert torch.equal(row[0], tokenizer([caption])[0])


def _words(tokenizer, text):
    """Independent word split of cleaned text: CLIP BPE's regex tokens, else whitespace words
    (the offline tokenizer splits on spaces only, and canonicalize leaves no punctuation)."""
    cleaned = get_aligner(tokenizer).clean(text).lower()
    return tokenizer.pat.findall(cleaned) if isinstance(tokenizer, SimpleTokenizer) else cleaned.split()


def _contains_run(words, run):
    return bool(run) and any(words[i:i + len(run)] == run for i in range(len(words) - len(run) + 1))


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_spans_decode_to_the_concept_on_coco(kind, make_tokenizer, coco_captions, coco_concepts):
    tokenizer = make_tokenizer(kind)
    packer = TextPacker(tokenizer, max_concepts=16, concept_extractor=_no_extraction)
    found = missing = 0
    for caption, concepts in zip(coco_captions, coco_concepts):
        caption_ids = tokenizer([caption])[0].tolist()
        caption_words = _words(tokenizer, caption)
        spans = concept_spans(tokenizer, caption, concepts)
        for concept, span in zip(concepts, spans):
            # COCO captions fit in 77 tokens: a concept is found iff its words are a run of the
            # caption's words after cleaning ("counter" in "counter-top" is not, under canonicalize)
            if not _contains_run(caption_words, _words(tokenizer, concept)):
                assert span is None, (caption, concept)
                missing += 1
                continue
            assert span is not None, (caption, concept)
            start, end = span
            assert (1 if kind == "simple" else 0) <= start < end < tokenizer.context_length
            assert _decode(tokenizer, caption_ids[start:end]) == _expected(tokenizer, concept), (caption, concept)
            found += 1
    assert found > 2 * len(coco_captions) and missing < 0.02 * found
    packer(list(zip(coco_captions, coco_concepts)))
    assert packer.stats["spans_not_found"] == missing
    assert packer.stats["spans_past_truncation"] == 0


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_truncation_keeps_spans_inside_and_counts_the_rest(kind, make_tokenizer, coco_captions, coco_concepts):
    full = make_tokenizer(kind, 77)
    short_length = 10
    short = make_tokenizer(kind, short_length)
    packer = TextPacker(short, max_concepts=8, concept_extractor=_no_extraction)
    expected_past = 0
    for caption, concepts in zip(coco_captions[:80], coco_concepts[:80]):
        long_spans = concept_spans(full, caption, concepts)
        short_spans = concept_spans(short, caption, concepts)
        for long_span, short_span in zip(long_spans, short_spans):
            # truncation keeps positions 0 .. L-2 of content and puts EOT / EOS at L-1
            if long_span[1] <= short_length - 1:
                assert short_span == long_span
            else:
                assert short_span is None
                expected_past += 1
    packed = packer(list(zip(coco_captions[:80], coco_concepts[:80])))
    assert expected_past > 0
    assert packer.stats["spans_past_truncation"] == expected_past
    assert packer.stats["spans_not_found"] == 0
    long_caption_count = sum(int(full([c])[0].count_nonzero() > short_length) for c in coco_captions[:80])
    assert packer.stats["captions_truncated"] >= long_caption_count > 0
    # truncated concepts keep their text row; their span row is all zero
    _, concept_ids, span_masks = unpack_texts(packed)
    num_concepts = [min(len(c), 8) for c in coco_concepts[:80]]
    for sample, count in enumerate(num_concepts):
        assert bool((concept_ids[sample, :count] != 0).any(-1).all())
    assert int((~span_masks.any(-1)).sum()) - sum(8 - n for n in num_concepts) == expected_past


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_repeated_and_unordered_concepts_map_to_successive_occurrences(kind, make_tokenizer):
    tokenizer = make_tokenizer(kind)
    caption = "A dog on a dog bed next to a dog and a catalog near a cat."
    concepts = ["a dog", "a dog bed", "a dog", "a cat"]
    spans = concept_spans(tokenizer, caption, concepts)
    ids = tokenizer([caption])[0].tolist()
    assert all(span is not None for span in spans)
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0] < spans[3][0]
    assert [_decode(tokenizer, ids[s:e]) for s, e in spans] == [_expected(tokenizer, c) for c in concepts]
    # "a cat" is not matched inside "a catalog" (decoding above would differ), nor before it
    catalog = concept_spans(tokenizer, caption, ["a catalog"])[0]
    assert spans[3][0] >= catalog[1]

    # not in caption order: search on after the previous match, then the earliest untaken occurrence
    unordered = concept_spans(tokenizer, caption, ["a dog bed", "a dog", "a dog", "a dog", "a dog"])
    inner_dog = (spans[1][0], spans[1][0] + spans[0][1] - spans[0][0])  # "a dog" inside "a dog bed"
    assert unordered == [spans[1], spans[2], spans[0], inner_dog, None]


def test_locate_concepts_is_a_word_boundary_search():
    caption = "a hotdog and a dog near the dogs and a dog"
    assert locate_concepts(caption, ["dog", "dog", "dog", "cat"]) == [(15, 18), (39, 42), None, None]
    assert locate_concepts(caption, ["A Dog"]) == [(13, 18)]
    assert locate_concepts(caption, [""]) == [None]


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_layout_round_trip(kind, make_tokenizer, coco_captions, coco_concepts):
    tokenizer = make_tokenizer(kind, 40)
    max_concepts = 3
    packer = TextPacker(tokenizer, max_concepts=max_concepts, concept_extractor=_no_extraction)
    samples = list(zip(coco_captions[:40], coco_concepts[:40]))
    packed = packer(samples)
    caption_ids, concept_ids, span_masks = unpack_texts(packed)
    assert torch.equal(caption_ids, tokenizer(coco_captions[:40]))
    for index, (caption, concepts) in enumerate(samples):
        kept = concepts[:max_concepts]
        count = len(kept)
        assert torch.equal(concept_ids[index, :count], tokenizer(kept))
        assert not concept_ids[index, count:].any() and not span_masks[index, count:].any()
        for slot, span in enumerate(concept_spans(tokenizer, caption, kept)):
            expected = torch.zeros(tokenizer.context_length, dtype=torch.bool)
            if span is not None:
                expected[span[0]:span[1]] = True
            assert torch.equal(span_masks[index, slot], expected)
    over = sum(max(0, len(c) - max_concepts) for _, c in samples)
    assert packer.stats["concepts_over_max"] == over > 0
    assert packer.stats["samples_over_max"] == sum(len(c) > max_concepts for _, c in samples)
    assert packer.stats["concepts"] == sum(min(len(c), max_concepts) for _, c in samples)
    assert packer.stats["samples"] == len(samples)


def test_not_found_concept_keeps_text_row_with_zero_span():
    tokenizer = _make_simple(32)
    packer = TextPacker(tokenizer, max_concepts=2, concept_extractor=_no_extraction)
    packed = packer(("a red bus on the street", ["a zebra", "the street"]))
    _, concept_ids, span_masks = unpack_texts(packed)
    assert torch.equal(concept_ids[0, 0], tokenizer(["a zebra"])[0])
    assert not span_masks[0, 0].any()
    assert span_masks[0, 1].nonzero().flatten().tolist() == [5, 6]
    assert packer.stats["spans_not_found"] == 1


def test_whole_caption_fallback_and_blank_concepts():
    tokenizer = _make_simple(32)
    packer = TextPacker(tokenizer, max_concepts=2, concept_extractor=_no_extraction)
    caption = "Running fast, jumping high!"
    packed = packer([(caption, []), (caption, ["  ", ""])])
    _, concept_ids, span_masks = unpack_texts(packed)
    caption_row = tokenizer([caption])[0]
    content = caption_row.count_nonzero().item() - 2  # without SOT / EOT
    for sample in range(2):
        assert torch.equal(concept_ids[sample, 0], caption_row)
        assert span_masks[sample, 0].nonzero().flatten().tolist() == list(range(1, 1 + content))
    assert packer.stats["whole_caption_fallback"] == 2
    assert packer.stats["blank_concepts"] == 2


def test_plain_captions_are_extracted_on_the_fly_once_warned(caplog):
    calls = []

    def extractor(captions):
        calls.append(list(captions))
        return [[c.split()[-1]] for c in captions]

    packer = TextPacker(_make_simple(24), max_concepts=2, concept_extractor=extractor)
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.packing"):
        first = packer(["a small red kite", ("a dog", ["a dog"]), "two bikes"])
        packer("one big tree")
    assert calls == [["a small red kite", "two bikes"], ["one big tree"]]  # batched, given ones skipped
    assert packer.stats["extracted_on_the_fly"] == 3
    assert sum("on the fly" in r.getMessage() for r in caplog.records) == 1
    _, concept_ids, _ = unpack_texts(first)
    assert torch.equal(concept_ids[0, 0], packer.tokenizer(["kite"])[0])


def test_single_inputs_match_batched_inputs():
    tokenizer = _make_simple(24)
    packer = TextPacker(tokenizer, max_concepts=2, concept_extractor=_no_extraction)
    sample = ("a cat on a mat", ["a cat", "a mat"])
    single = packer(sample)
    assert single.shape == (1, 5, 24)
    assert torch.equal(single, packer([sample, sample])[1:])
    assert torch.equal(packer(sample, context_length=16)[0, 0], tokenizer([sample[0]], context_length=16)[0])


def test_bad_inputs_raise_clear_errors():
    packer = TextPacker(_make_simple(24), max_concepts=2, concept_extractor=_no_extraction)
    with pytest.raises(TypeError, match=r"text #1.*must be strings.*int"):
        packer([("a cat", ["a cat"]), ("a dog", ["a dog", 3])])
    with pytest.raises(ValueError, match="text #0: empty caption"):
        packer(("  ", ["x"]))
    with pytest.raises(TypeError, match="text #0: expected a caption str"):
        packer([42])
    for bad in (0, 257, 10 ** 9):  # above config.MAX_CONCEPTS = 256: rows of [1 + 2P, L] per caption
        with pytest.raises(ValueError, match="max_concepts must be >= 1 and <= 256"):
            TextPacker(_make_simple(24), max_concepts=bad)


def test_unsupported_tokenizers_are_rejected():
    with pytest.raises(TypeError, match="no concept span aligner for tokenizer type"):
        TextPacker(lambda texts: texts, concept_extractor=_no_extraction)
    with pytest.raises(ValueError, match="reduction_mask"):
        TextPacker(SimpleTokenizer(reduction_mask="simple"), concept_extractor=_no_extraction)


def _last_word_extractor(captions):
    return [[c.split()[-1]] for c in captions]


@pytest.mark.parametrize("kind", ("simple", "hf"))
def test_packer_pickles_for_dataloader_workers(kind, make_tokenizer):
    packer = TextPacker(make_tokenizer(kind, 24), max_concepts=2, concept_extractor=_last_word_extractor)
    samples = [("a cat on a mat", ["a cat", "a mat"]), "a bird in the sky"]
    expected = packer(samples)
    clone = pickle.loads(pickle.dumps(packer))
    assert clone.stats == packer.stats  # counters travel with the copy, then diverge per process
    assert torch.equal(clone(samples), expected)
    assert clone.stats["samples"] == 2 * packer.stats["samples"] == 4


def test_stats_are_logged_periodically(caplog):
    packer = TextPacker(_make_simple(16), max_concepts=1, concept_extractor=_no_extraction, log_every=3)
    with caplog.at_level(logging.INFO, logger="open_clip_c2lip.packing"):
        for _ in range(4):
            packer([("a cat", ["a cat"]), ("a dog", ["a dog"])])
    summaries = [r.getMessage() for r in caplog.records if "C2LIP text packer" in r.getMessage()]
    assert len(summaries) == 2  # after samples 4 and 8
    assert "main process" in summaries[-1] and "samples=8" in summaries[-1]
    assert set(packer.stats) == set(STAT_KEYS)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_equal_concept_rows_are_equal_cleaned_texts(make_tokenizer, coco_concepts, kind):
    """The concept identity of ``C2LIPLoss(duplicate_concepts="ignore")``: two concepts have equal
    token rows iff their texts are equal after the tokenizer's cleaning, unless a text is longer
    than the context, where only the kept tokens count."""
    context_length = 12
    tokenizer, untruncated = make_tokenizer(kind, context_length), make_tokenizer(kind, 128)
    aligner = get_aligner(tokenizer)
    concepts = sorted({c for cs in coco_concepts for c in cs})
    concepts += ["A  Dog", "a dog", "a dog!", " a dog ", "a  red couch", "A red couch"]
    rows, full = tokenizer(concepts), untruncated(concepts)
    fits = (full[:, context_length:] == 0).all(1) & (full[:, context_length - 1] == 0)
    cleaned_of_row, row_of_cleaned = {}, {}
    for concept, row, ok in zip(concepts, rows, fits.tolist()):
        if ok:
            cleaned_of_row.setdefault(tuple(row.tolist()), set()).add(aligner.clean(concept))
            row_of_cleaned.setdefault(aligner.clean(concept), set()).add(tuple(row.tolist()))
    assert fits.sum() > 100
    assert all(len(v) == 1 for v in cleaned_of_row.values()) and all(len(v) == 1 for v in row_of_cleaned.values())
    assert len(row_of_cleaned[aligner.clean("a dog")]) == 1 and aligner.clean("A  Dog") == aligner.clean("a dog")
    # longer than the context: texts differing only after the kept tokens share a row
    long = ["a " + "very " * 20 + "big dog", "a " + "very " * 20 + "small cat"]
    assert torch.equal(*tokenizer(long)) and not torch.equal(*untruncated(long))


# ------------------------------------------------------------------------------------------------
# Concepts as the tokenizer sees them

from open_clip.tokenizer import _clean_lower  # noqa: E402

from open_clip_c2lip.concepts import MAX_PARSE_CHARS  # noqa: E402

# the cleaning each test tokenizer applies, named independently of the code under test
CLEANING = {"simple": _clean_lower, "hf": _clean_canonicalize, "siglip": _clean_canonicalize}
GARBAGE = ["-", "!!!", "...", "   ", "", "&amp;", "&quot;&quot;", "\u00a0", "--- ;"]


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_garbage_and_duplicate_concepts_are_dropped_and_counted(kind, make_tokenizer):
    tokenizer = make_tokenizer(kind, 32)
    packer = TextPacker(tokenizer, max_concepts=4, concept_extractor=_no_extraction)
    caption = "A dog's ball & a dog on the grass."
    given = ["a dog", *GARBAGE, "A  Dog", "a dog", "the grass", "a &amp; b", "the  grass"]
    clean = CLEANING[kind]
    expected, seen = [], set()  # the rule written out: distinct after cleaning, a letter or digit left
    for concept in given:
        text = clean(concept)
        if any(ch.isalnum() for ch in text) and text not in seen:
            seen.add(text)
            expected.append(concept)
    assert expected == ["a dog", "the grass", "a &amp; b"]
    _, concept_ids, _ = unpack_texts(packer((caption, given)))
    assert torch.equal(concept_ids[0, :3], tokenizer(expected))
    assert not concept_ids[0, 3].any()  # no slot for garbage or repeats
    assert packer.stats["blank_concepts"] == len(GARBAGE)
    assert packer.stats["duplicate_concepts"] == 3 and packer.stats["concepts"] == 3


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_only_garbage_falls_back_to_caption_and_textless_caption_packs_nothing(kind, make_tokenizer):
    tokenizer = make_tokenizer(kind, 24)
    packer = TextPacker(tokenizer, max_concepts=2, concept_extractor=_no_extraction)
    packed = packer([("a red kite", ["-", "..."]), ("!!! ...", ["-"]), ("-- ?", [])])
    _, concept_ids, span_masks = unpack_texts(packed)
    assert torch.equal(concept_ids[0, 0], tokenizer(["a red kite"])[0])
    assert not concept_ids[1:].any() and not span_masks[1:].any()  # nothing trained as a concept
    assert torch.equal(packed[1:, 0], tokenizer(["!!! ...", "-- ?"]))  # the captions themselves unchanged
    assert packer.stats["whole_caption_fallback"] == 1 and packer.stats["captions_without_text"] == 2
    assert packer.stats["blank_concepts"] == 3


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_on_the_fly_extraction_parses_the_cleaned_caption(kind, make_tokenizer):
    received = []

    def extractor(texts):
        received.extend(texts)
        return [[t.split()[0]] for t in texts]

    packer = TextPacker(make_tokenizer(kind, 32), max_concepts=2, concept_extractor=extractor)
    long = "a kite over the sea " * 1_000  # 20,000 characters: over MAX_PARSE_CHARS
    captions = ["Fish &amp; chips on a  white plate.", "Caf\u00c3\u00a9 &lt;3 tables", long, "!!!"]
    packer(captions)
    clean = CLEANING[kind]
    assert received[:2] == [clean(c) for c in captions[:2]]
    assert "amp" not in received[0] and "&lt;" not in received[1]
    assert len(received) == 3  # "!!!" has nothing to parse
    assert len(received[2]) <= MAX_PARSE_CHARS and clean(long).startswith(received[2])
    assert packer.stats["captions_cut_for_parsing"] == 1 and packer.stats["captions_without_text"] == 1
    assert packer.stats["extracted_on_the_fly"] == 4


def test_real_spacy_on_the_fly_survives_a_caption_over_max_length():
    """spaCy's E088 case (over its 1,000,000-character limit): 1.1M characters, extracted on the fly with the real spaCy extractor."""
    from open_clip_c2lip.packing import SpacyConceptExtractor

    tokenizer = _make_simple(32)
    packer = TextPacker(tokenizer, max_concepts=2, concept_extractor=SpacyConceptExtractor())
    long = "A brown dog runs on the green grass. " * 30_000
    _, concept_ids, span_masks = unpack_texts(packer([long, "a red car"]))
    assert torch.equal(concept_ids[0], tokenizer(["a brown dog", "the green grass"]))
    assert span_masks[0, 0].nonzero().flatten().tolist() == [1, 2, 3]
    assert packer.stats["captions_cut_for_parsing"] == 1


def test_real_spacy_on_the_fly_drops_markup():
    """Special-token literals and HTML tags in a caption name nothing: a caption of markup alone is
    packed without concepts (counted), and markup never reaches a concept row."""
    from open_clip_c2lip.packing import SpacyConceptExtractor

    tokenizer = _make_simple(32)
    packer = TextPacker(tokenizer, max_concepts=2, concept_extractor=SpacyConceptExtractor())
    _, concept_ids, _ = unpack_texts(packer(["<end_of_text>", "a dog <end_of_text>", "a <b>red</b> car<br/>"]))
    assert not concept_ids[0].any()
    assert torch.equal(concept_ids[1, :1], tokenizer(["a dog"])) and not concept_ids[1, 1:].any()
    assert torch.equal(concept_ids[2, :1], tokenizer(["a red car"]))
    assert packer.stats["captions_without_text"] == 1 and packer.stats["concepts"] == 2


SPECIAL_ONLY = {"simple": ["<end_of_text>", "<start_of_text>", "<start_of_text> <end_of_text>"],
                "hf_whitespace": ["</s>", "<pad>", "</s><pad>"]}


@pytest.mark.parametrize("kind", sorted(SPECIAL_ONLY))
def test_concepts_of_special_tokens_only_are_blank(kind, hf_tokenizer_dir):
    """A concept that is the tokenizer's own special token encodes to an empty concept row: counted
    as blank, like "-"; a caption that is only special tokens gets no concepts."""
    if kind == "simple":
        tokenizer = _make_simple(32)
        special_ids = set(tokenizer.all_special_ids) | {0}
    else:  # whitespace cleaning keeps "</s>" intact (canonicalize would turn it into "s")
        tokenizer = HFTokenizer(hf_tokenizer_dir, context_length=32, clean="whitespace")
        special_ids = set(tokenizer.tokenizer.all_special_ids)
    specials = SPECIAL_ONLY[kind]
    for concept in specials:  # independent of the packer: the concept's own row is special ids only
        assert set(tokenizer([concept])[0].tolist()) <= special_ids, concept
    assert not set(tokenizer(["a dog"])[0].tolist()) <= special_ids
    packer = TextPacker(tokenizer, max_concepts=4, concept_extractor=_no_extraction)
    _, concept_ids, _ = unpack_texts(packer(("a dog on the grass", [*specials, "a dog"])))
    assert torch.equal(concept_ids[0, :1], tokenizer(["a dog"]))
    assert not concept_ids[0, 1:].any()
    assert packer.stats["blank_concepts"] == len(specials) and packer.stats["concepts"] == 1
    _, concept_ids, span_masks = unpack_texts(packer((specials[0], [specials[1]])))
    assert not concept_ids.any() and not span_masks.any()
    assert packer.stats["captions_without_text"] == 1 and packer.stats["whole_caption_fallback"] == 0
