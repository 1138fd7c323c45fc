"""The text concepts are parsed from: the caption as the model's tokenizer sees it, without markup.

spaCy parses ``concept_source(caption, clean)``: open_clip's cleaning of the tokenizer (``clean``:
``lower``, CLIP BPE's default; ``canonicalize``, SigLIP's; ``whitespace``, other HF tokenizers':
ftfy, HTML unescape, whitespace, and case / punctuation), cut at the last space before
``MAX_PARSE_CHARS`` characters (more than any open_clip text tower sees; spaCy refuses over
1,000,000). So "Fish &amp; chips" gives "fish", "chips", never "amp". Markup is blanked first
(``strip_markup``: special-token literals such as "<end_of_text>", "</s>", "[CLS]", and HTML tags
such as "<br/>"), so "a dog </s>" gives "a dog", never "</s" or "br/>on". The concepts CLI,
``extract_concepts`` and the training packer's on-the-fly extraction all go through here.
"""
import html
import re
from typing import Callable, Optional, Tuple, Union


def normalize_text(text: str) -> str:
    """Lower-case and collapse/strip whitespace."""
    return " ".join(text.lower().split())


# open_clip's text cleanings by name (``open_clip.tokenizer.get_clean_fn``): ``lower`` is CLIP BPE's
# ``SimpleTokenizer`` default, ``whitespace`` the ``HFTokenizer`` default, ``canonicalize`` what
# ``SigLipTokenizer`` always applies (punctuation removed, lower case). Each starts with ftfy and a
# double HTML unescape, so "Fish &amp; chips" is "fish & chips" to CLIP and "fish chips" to SigLIP.
CLEAN_NAMES = ("lower", "whitespace", "canonicalize")
DEFAULT_CLEAN = "lower"
# spaCy refuses texts over ``nlp.max_length`` (1,000,000 characters, error E088) and needs about
# 1 GB per 100,000. No open_clip text tower sees more than 77 tokens, and no CLIP BPE piece is longer
# than 32 characters (SentencePiece vocabularies are shorter), so a text tower never sees more than
# ~2,600 characters: parsing the first MAX_PARSE_CHARS loses nothing the model sees.
MAX_PARSE_CHARS = 10_000


def get_clean_fn(clean: Optional[Union[str, Callable[[str], str]]]) -> Optional[Callable[[str], str]]:
    """open_clip's own cleaning function for a name in ``CLEAN_NAMES``
    (``open_clip.tokenizer.get_clean_fn``; a callable passes through; None: none).

    Raises ValueError for an unknown name. Imports open_clip (and torch, a few seconds once per
    process) the first time a name is resolved: the cleaning must be the tokenizer's, not a copy.
    """
    if clean is None or callable(clean):
        return clean
    if clean not in CLEAN_NAMES:
        raise ValueError(f"unknown text cleaning {clean!r}; expected one of {', '.join(CLEAN_NAMES)}")
    from open_clip.tokenizer import get_clean_fn as open_clip_clean_fn

    return open_clip_clean_fn(clean)


def has_text(text: str) -> bool:
    """Whether ``text`` holds a letter or digit (else it names nothing: "", "-", "!!!", "...")."""
    return any(ch.isalnum() for ch in text)


def cut_for_parsing(text: str, max_chars: int = MAX_PARSE_CHARS) -> Tuple[str, bool]:
    """``(text, False)``, or its first ``max_chars`` characters cut at the last whitespace (a hard cut
    when there is none) and True. Never splits a word the parse keeps."""
    if len(text) <= max_chars:
        return text, False
    head = text[:max_chars + 1]  # the character after the limit tells whether the cut is at a space
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return (head[:cut] if cut > 0 else head[:max_chars]).rstrip(), True


# Markup in a caption names nothing an image shows: tokenizers' special-token literals
# ("<end_of_text>", "</s>", "<pad>", "<|endoftext|>", "[CLS]"), HTML tags ("<br/>", '<a href="x">')
# and comments of web captions. Parsed as text, spaCy splits them into chunks such as "<end_of_text"
# or "br/>on" (which no tokenizer reads as its special token), so they are removed before parsing.
# Only these names, with attributes written as name=value, are markup: "<NA>", "<A Quiet Place>",
# "a <3 b", "if a<b and c>d" stay text. Inline tags join what they touch, as a browser renders them
# ("co<b>ok</b>ies" -> "cookies", "H<sub>2</sub>O" -> "H2O"); other markup separates words.
SPECIAL_TOKEN_NAMES = (  # open_clip's SimpleTokenizer, SentencePiece / T5 / SigLIP, BERT-style
    "start_of_text", "end_of_text", "startoftext", "endoftext", "s", "pad", "unk", "mask", "cls", "sep",
    "bos", "eos")
INLINE_TAG_NAMES = (  # HTML phrasing elements: no word break ("s" is SentencePiece's </s> here: a break)
    "a", "abbr", "acronym", "b", "bdi", "bdo", "big", "cite", "code", "data", "del", "dfn", "em", "font",
    "i", "ins", "kbd", "mark", "nobr", "q", "rp", "rt", "ruby", "samp", "small", "span", "strike",
    "strong", "sub", "sup", "time", "tt", "u", "var", "wbr")
# valueless attributes taken as such (HTML's boolean attributes); any other bare word makes "<a ...>"
# text: "<A Quiet Place>" is a title, "<p hidden>" a tag
BOOLEAN_ATTRIBUTES = (
    "allowfullscreen", "async", "autofocus", "autoplay", "checked", "controls", "default", "defer",
    "disabled", "hidden", "inert", "ismap", "itemscope", "loop", "multiple", "muted", "nomodule",
    "novalidate", "nowrap", "open", "playsinline", "readonly", "required", "reversed", "selected")
BLOCK_TAG_NAMES = (  # every other HTML element a caption may carry: a word break
    "address", "area", "article", "aside", "audio", "base", "blockquote", "body", "br", "button", "canvas",
    "caption", "center", "col", "colgroup", "dd", "details", "dialog", "div", "dl", "dt", "embed",
    "fieldset", "figcaption", "figure", "footer", "form", "frame", "frameset", "h1", "h2", "h3", "h4", "h5",
    "h6", "head", "header", "hgroup", "hr", "html", "iframe", "img", "input", "label", "legend", "li",
    "link", "main", "map", "menu", "meta", "meter", "nav", "noscript", "object", "ol", "optgroup", "option",
    "output", "p", "param", "picture", "pre", "progress", "script", "section", "select", "slot", "source",
    "style", "summary", "svg", "table", "tbody", "td", "template", "textarea", "tfoot", "th", "thead",
    "title", "tr", "track", "ul", "video")


def _alternatives(names) -> str:
    return "|".join(sorted({re.escape(n) for n in names}, key=len, reverse=True))


def _tag_pattern(names) -> str:
    value = r"""(?:"[^"]{0,1000}"|'[^']{0,1000}'|[^\s"'<>=`]{1,1000})"""
    attribute = rf"(?:[\w:.-]{{1,40}}\s*=\s*{value}|(?:{_alternatives(BOOLEAN_ATTRIBUTES)})(?![\w:.=-]))"
    return rf"</?(?:{_alternatives(names)})(?:\s+{attribute}){{0,20}}\s*/?\s*>"


# inline tags and comments are removed (a browser shows "co<!-- x -->okies" as "cookies")
_INLINE_MARKUP = re.compile(_tag_pattern(INLINE_TAG_NAMES) + r"|<!--.{0,2000}?-->", re.IGNORECASE | re.DOTALL)
MARKUP = re.compile(
    _tag_pattern(BLOCK_TAG_NAMES + SPECIAL_TOKEN_NAMES)
    + r"|<\|(?:startoftext|endoftext)\|>"        # GPT-style <|endoftext|>
    r"|\[(?:CLS|SEP|PAD|MASK|UNK|BOS|EOS)\]"     # BERT-style [CLS]
    r"|<![A-Za-z][^<>]{0,200}>",                # <!DOCTYPE html>
    re.IGNORECASE)


def strip_markup(text: str) -> str:
    """``text`` without ``MARKUP``: inline tags removed, other markup replaced by a space
    ("a dog </s>" -> "a dog  ", "co<b>ok</b>ies" -> "cookies")."""
    return MARKUP.sub(" ", _INLINE_MARKUP.sub("", text))


def concept_source(caption: str, clean: Optional[Union[str, Callable[[str], str]]] = DEFAULT_CLEAN,
                   max_chars: int = MAX_PARSE_CHARS) -> Tuple[str, bool]:
    """The text spaCy parses for ``caption``: the tokenizer's cleaning of it (``clean``, a name in
    ``CLEAN_NAMES``, a function, or None for text already cleaned) without markup (``strip_markup``,
    also of HTML-escaped markup such as "&lt;br&gt;"), cut by
    ``cut_for_parsing``. Returns ``(text, was_cut)``. The concepts CLI, ``extract_concepts`` and the
    training packer's on-the-fly extraction all go through here."""
    clean_fn = get_clean_fn(clean)
    if clean_fn is None:
        return cut_for_parsing(strip_markup(caption), max_chars)
    # open_clip's cleanings unescape HTML twice and canonicalize then drops punctuation, which would
    # turn "&lt;br&gt;" into a word "br": unescape (as they do) and blank markup before cleaning
    text = strip_markup(html.unescape(html.unescape(caption)))
    return cut_for_parsing(strip_markup(clean_fn(text)), max_chars)
