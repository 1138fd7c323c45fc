"""The text concepts are parsed from (``open_clip_c2lip.concepts.text``): the tokenizer's cleaning, markup removed."""
import html
import json
import os
import re

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from open_clip_c2lip import concepts as C
from concepts_fixtures import make_shard, naive_clean, read_members


# ------------------------------------------------------------------------------------------------
# The text concepts come from: the caption as the tokenizer cleans it (one rule everywhere)

MESSY_CAPTIONS = [
    "Fish &amp; chips on a white plate.",                      # HTML entity
    "A &lt;b&gt;red&lt;/b&gt; bus &amp;amp; a taxi.",           # markup, double-escaped entity
    "Caf\u00c3\u00a9 tables and a black umbrella",              # mojibake (ftfy)
    "A dog\u00a0on\tthe   grass near a &quot;park&quot; bench",  # odd whitespace, quotes
    "The man's hat &#8212; a striped hat &ndash; lies on a bed.",  # numeric / named entities
]


@pytest.mark.parametrize("clean", C.CLEAN_NAMES)
def test_concepts_come_from_the_text_the_tokenizer_sees(clean):
    from open_clip.tokenizer import get_clean_fn

    clean_fn = get_clean_fn(clean)

    def without_tags(caption):  # the one markup in these captions: the (escaped) <b> tags
        return re.sub(r"</?b>", " ", html.unescape(html.unescape(caption)))

    assert [C.concept_source(c, clean)[0] for c in MESSY_CAPTIONS] == [
        naive_clean(without_tags(c), clean) for c in MESSY_CAPTIONS]
    got = C.extract_concepts(MESSY_CAPTIONS, clean=clean)
    for caption, concepts in zip(MESSY_CAPTIONS, got):
        seen = clean_fn(without_tags(caption)).lower()
        for concept in concepts:
            # every concept is words of the cleaned caption: never "amp", "lt", "quot" ...
            assert re.search(r"(?<!\w)" + re.escape(concept) + r"(?!\w)", seen), (clean, caption, concept)
    words = {w for concepts in got for c in concepts for w in re.findall(r"\w+", c)}
    assert not words & {"amp", "lt", "gt", "quot", "ndash", "8212", "b", "bredb"}  # nor the <b> tags
    assert any("a red bus" in c for c in got[1])
    assert any("fish" in c for c in got[0]) and "a white plate" in got[0]
    assert any("café" in c for c in got[2])  # the mojibake is fixed before parsing


def test_same_rule_in_cli_python_api_and_packer(tmp_path):
    """The CLI (--clean X), extract_concepts(clean=X) and the packer's on-the-fly extraction with a
    tokenizer that cleans with X give identical concepts."""
    from open_clip.tokenizer import SimpleTokenizer

    from open_clip_c2lip.packing import SpacyConceptExtractor, TextPacker

    captions = MESSY_CAPTIONS + ["Two cats sleep on a sofa. " * 600]  # the last one is cut for parsing
    received = []

    class Recording(SpacyConceptExtractor):
        def __call__(self, texts):
            result = super().__call__(texts)
            received.extend(result)
            return result

    for clean in ("lower", "canonicalize"):
        src = tmp_path / f"{clean}.tar"
        make_shard(src, [(f"k{i}", [("jpg", b"x"), ("txt", c.encode())]) for i, c in enumerate(captions)])
        code = C.main([str(src), "--output-dir", str(tmp_path / "out"), "--clean", clean, "--quiet"])
        assert code == 0
        cli = [json.loads(d)["concepts"] for m, d in read_members(tmp_path / "out" / src.name)
               if m.name.endswith(".json")]
        received.clear()
        TextPacker(SimpleTokenizer(clean=clean), max_concepts=8, concept_extractor=Recording())(captions)
        assert cli == C.extract_concepts(captions, clean=clean) == received


@pytest.mark.parametrize("clean", C.CLEAN_NAMES)
def test_cleanings_are_open_clips_own(clean):
    """The CLI cleans with open_clip's own functions (no copy that could drift from the tokenizer)."""
    from open_clip.tokenizer import get_clean_fn

    assert C.get_clean_fn(clean) is get_clean_fn(clean)
    assert C.get_clean_fn(None) is None and C.get_clean_fn(str.lower) is str.lower
    with pytest.raises(ValueError, match="unknown text cleaning 'upper'"):
        C.get_clean_fn("upper")


# ------------------------------------------------------------------------------------------------
# Markup in captions, linked output folders, files that are not ours, mislabelled compression

MARKUP_CAPTIONS = [  # (caption, concepts under every cleaning): markup never reaches a concept
    ("a dog <end_of_text>", ["a dog"]),
    ("<start_of_text>a dog on a mat<end_of_text>", ["a dog", "a mat"]),
    ("<s> a cat </s>", ["a cat"]),
    ("a dog </s> on a mat <pad><pad>", ["a dog", "a mat"]),
    ("[CLS] a red ball [SEP]", ["a red ball"]),
    ("a man <|endoftext|>", ["a man"]),
    ("a dog <unk> a cat", ["a dog", "a cat"]),
    ("a <i>red</i> car<br/>on a road", ["a red car", "a road"]),
    ('a <span class="x">small boat</span>', ["a small boat"]),
    ("fish &lt;br&gt; chips", ["fish chips"]),
    ("a dog <br / > on a mat", ["a dog", "a mat"]),
    ('<a title="a>b" href=x>a cat</a> on a mat', ["a cat", "a mat"]),
    ("co<b>ok</b>ies on a plate", ["cookies", "a plate"]),  # inline tags do not break words
    ("a <script>cat</script> on a <figcaption>mat</figcaption>", ["a cat", "a mat"]),
    ("a dog <!-- alt text --> on a mat", ["a dog", "a mat"]),
    ("the poster <A Quiet Place> on a wall", ["the poster", "a quiet place", "a wall"]),  # not a tag: text
    ("co<!-- x -->okies on a plate", ["cookies", "a plate"]),  # a comment joins, as a browser shows it
    ("a <p hidden>dog</p> on a <input disabled> mat", ["a dog", "a mat"]),  # boolean attributes
    ("<!DOCTYPE html> a dog on a mat", ["a dog", "a mat"]),
]


@pytest.mark.parametrize("clean", C.CLEAN_NAMES)
@pytest.mark.parametrize("caption,expected", MARKUP_CAPTIONS)
def test_markup_never_becomes_a_concept(caption, expected, clean):
    assert C.extract_concepts([caption], clean=clean) == [expected]


@pytest.mark.parametrize("caption", ["<end_of_text>", "<pad><pad>", "<start_of_text> <end_of_text>", "</s>",
                                     "[CLS] [SEP]", "<br/>", "&lt;br&gt;"])
def test_markup_only_caption_has_no_text(caption):
    with pytest.raises(C.CaptionError, match="no letter or digit after removing markup"):
        C.extract_concepts([caption])


def test_markup_pattern_keeps_comparisons_and_emoticons():
    for text in ("a 2<3 ratio", "x > y and y < z", "i <3 cats", "a <> b", "1 < 2 > 0", "<NA>", "<bold> text",
                 "<A Quiet Place>", "<I love NY>", "<b and w photos>", "if a<b and c>d", "<<<a cat>>>",
                 "<P and G products>"):
        assert C.strip_markup(text) == text
    assert C.strip_markup("H<sub>2</sub>O <br/>x") == "H2O  x"
    assert C.strip_markup("a dog</s>cat") == "a dog cat"  # SentencePiece's end token separates
