"""Pack a caption, its concepts and the concepts' exact token spans into one text tensor.

``TextPacker`` is a drop-in for an open_clip tokenizer on the *train* split: where the tokenizer
returns ``[N, L]`` it returns ``[N, 1 + 2P, L]`` in the layout of ``open_clip_c2lip.layout``
(caption row, P concept-token rows, P span-mask rows), so ``tokenizer(text)[0]`` call sites in
open_clip_train yield ``[1 + 2P, L]`` per sample and default collation yields ``[B, 1 + 2P, L]``.

Spans are exact token index ranges ``[start, end)`` in the tokenized caption row, found per
tokenizer family by a registered aligner (``register_aligner``):

- CLIP BPE ``SimpleTokenizer``: walk the tokenizer's own regex over the cleaned caption and count
  BPE pieces per regex token (+1 for SOT); truncation keeps ``L - 2`` pieces and puts EOT at ``L - 1``.
- HF fast tokenizers (``HFTokenizer``, ``SigLipTokenizer``): call the underlying fast tokenizer with
  the wrapper's own arguments plus ``return_offsets_mapping=True`` and select the non-special tokens
  whose character offsets overlap the concept.

Both aligners verify that their ids equal the tokenizer's caption row, so a span can never silently
refer to different tokens than the ones the model sees.

Concepts are located in the *cleaned* caption (the tokenizer's ``clean_fn``: case, punctuation and
whitespace normalisation) with a word-boundary, case-insensitive search that continues after the
previous concept's match, so in-order concepts (spaCy noun chunks) and repeated concept strings map
to successive occurrences. A concept not found after that point takes its earliest occurrence not
already taken by an earlier concept (concept lists that are not in caption order). Only matches
that start and end on token boundaries count, so a span's tokens decode to exactly the concept; a
concept that cleaning merged into a longer word ("counter" in "counter-top" -> "countertop") is
not found.

Counters (``TextPacker.stats``) are per process: every DataLoader worker holds its own copy of the
packer, logs its totals every ``log_every`` packed samples and whenever ``log_summary`` is called
(the webdataset hookup in ``open_clip_c2lip.integration.wds`` calls it when a worker's pass over
its shards ends). Nothing is dropped silently: every fallback, miss and truncation is counted there.
"""
import functools
import logging
import os
import re
from typing import Callable, Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple, Type, Union

import torch
from open_clip.tokenizer import HFTokenizer, SigLipTokenizer, SimpleTokenizer, _clean_canonicalize

from .concepts.text import concept_source, has_text, strip_markup
from .config import check_max_concepts
from .layout import pack_rows
from .messages import excerpt

Span = Tuple[int, int]
Sample = Tuple[str, Optional[List[str]]]
# concept_extractor of TextPacker: captions -> one concept list per caption
ConceptsFn = Callable[[List[str]], List[List[str]]]

STAT_KEYS = (
    "samples",                  # captions packed
    "concepts",                 # concepts packed into a slot
    "concepts_over_max",        # concepts beyond max_concepts, not packed
    "samples_over_max",         # captions that had more than max_concepts concepts
    "blank_concepts",           # concepts with no letter or digit after cleaning, or only special tokens
                                # ("", "-", "!!!", "..."), not packed
    "duplicate_concepts",       # concepts equal to an earlier one of the caption after cleaning, not packed
    "whole_caption_fallback",   # captions with no concept, packed with the caption as concept
    "captions_without_text",    # captions with no letter or digit (or only special tokens): no concepts
    "extracted_on_the_fly",     # captions whose concepts were extracted here (no concepts in data)
    "captions_cut_for_parsing", # on-the-fly captions over MAX_PARSE_CHARS after cleaning, parsed up to there
    "spans_not_found",          # concepts not found as whole tokens of the cleaned caption: zero row
    "spans_past_truncation",    # concepts located but not fully inside the kept tokens: zero row
    "captions_truncated",       # captions longer than the context length
)

# distinct concept texts whose cleaning / special-token check is remembered (per process)
_MAX_CACHED_CONCEPTS = 100_000

_logger = logging.getLogger(__name__)


class CaptionTokens(NamedTuple):
    """One caption as its tokenizer sees it.

    ``offsets[i]`` is the character range in ``cleaned`` of the token at position ``i``, ``None``
    for special and padding positions; characters ``[0, covered_end)`` lie in kept tokens.
    ``starts`` / ``ends`` are the character positions where a concept may start / end without
    cutting a token."""
    cleaned: str
    ids: List[int]
    offsets: List[Optional[Span]]
    covered_end: int
    truncated: bool
    starts: FrozenSet[int]
    ends: FrozenSet[int]

    def token_aligned(self, char_span: Span) -> bool:
        """Whether ``char_span`` starts and ends on token boundaries (past truncation: unknown, yes)."""
        start, end = char_span
        return ((start in self.starts or start >= self.covered_end)
                and (end in self.ends or end > self.covered_end))


# ------------------------------------------------------------------------------------------------
# Aligners: one per tokenizer family, looked up by the tokenizer's type (MRO order).

_ALIGNERS: Dict[type, Callable] = {}


def register_aligner(tokenizer_cls: Type) -> Callable:
    """Register an aligner factory ``factory(tokenizer) -> aligner`` for a tokenizer class.

    An aligner has ``clean_fn`` (the tokenizer's text cleaning), ``clean(text) -> str`` and
    ``tokens(caption, context_length) -> CaptionTokens``.
    """
    def _register(factory):
        _ALIGNERS[tokenizer_cls] = factory
        return factory
    return _register


def get_aligner(tokenizer):
    """The span aligner for ``tokenizer`` (raises ``TypeError`` for an unsupported tokenizer)."""
    for cls in type(tokenizer).__mro__:
        if cls in _ALIGNERS:
            return _ALIGNERS[cls](tokenizer)
    supported = ", ".join(sorted(c.__name__ for c in _ALIGNERS))
    raise TypeError(
        f"no concept span aligner for tokenizer type {type(tokenizer).__name__}; supported: {supported}"
        " (register one with open_clip_c2lip.packing.register_aligner)")


@register_aligner(SimpleTokenizer)
class SimpleTokenizerAligner:
    """CLIP BPE: per regex token, as many positions as BPE pieces, all mapped to the token's chars."""

    def __init__(self, tokenizer: SimpleTokenizer):
        if getattr(tokenizer, "reduction_fn", None) is not None:
            # reduction masks drop tokens at random, so caption positions are not reproducible
            raise ValueError("concept spans need a SimpleTokenizer without reduction_mask")
        self.tokenizer = tokenizer
        self.clean_fn = tokenizer.clean_fn
        self._special_texts = frozenset(tokenizer.decoder[i] for i in tokenizer.all_special_ids)

    def clean(self, text: str) -> str:
        return self.clean_fn(text)

    def has_content(self, cleaned: str) -> bool:
        """Whether cleaned text has a token that is not special (``"<end_of_text>"`` has none)."""
        return any(match.group() not in self._special_texts for match in self.tokenizer.pat.finditer(cleaned))

    def tokens(self, caption: str, context_length: int) -> CaptionTokens:
        tok = self.tokenizer
        cleaned = tok.clean_fn(caption)
        piece_ids, piece_offsets, starts, ends = [], [], set(), set()
        for match in tok.pat.finditer(cleaned):
            starts.add(match.start())
            ends.add(match.end())
            word = "".join(tok.byte_encoder[b] for b in match.group().encode("utf-8"))
            for piece in tok.bpe(word).split(" "):
                piece_ids.append(tok.encoder[piece])
                piece_offsets.append((match.start(), match.end()))
        truncated = len(piece_ids) + 2 > context_length
        num_kept = context_length - 2 if truncated else len(piece_ids)
        ids = [tok.sot_token_id] + piece_ids[:num_kept] + [tok.eot_token_id]
        ids += [0] * (context_length - len(ids))
        offsets = [None] + piece_offsets[:num_kept] + [None] * (context_length - 1 - num_kept)
        if not truncated:
            covered_end = len(cleaned)
        elif num_kept < len(piece_ids) and piece_offsets[num_kept] == piece_offsets[num_kept - 1]:
            covered_end = piece_offsets[num_kept][0]  # a word cut between its BPE pieces
        else:
            covered_end = piece_offsets[num_kept - 1][1] if num_kept else 0
        return CaptionTokens(cleaned, ids, offsets, covered_end, truncated, frozenset(starts), frozenset(ends))


class FastTokenizerAligner:
    """HF fast tokenizers: the wrapper's own call plus ``return_offsets_mapping=True``."""

    def __init__(self, fast_tokenizer, clean_fn: Callable[[str], str], strip_sep_token: bool = False):
        if not getattr(fast_tokenizer, "is_fast", False):
            raise TypeError(
                f"concept spans need a fast HF tokenizer (offsets); got {type(fast_tokenizer).__name__}")
        self.fast_tokenizer = fast_tokenizer
        self.clean_fn = clean_fn
        self.strip_sep_token = strip_sep_token
        self._special_ids = frozenset(fast_tokenizer.all_special_ids)
        # one tokenizer call per distinct concept text, not per occurrence
        self.has_content = functools.lru_cache(maxsize=_MAX_CACHED_CONCEPTS)(self._has_content)

    def clean(self, text: str) -> str:
        return self.clean_fn(text)

    def _has_content(self, cleaned: str) -> bool:
        """Whether cleaned text has a token that is not special (``"</s>"``, ``"<pad>"`` have none)."""
        ids = self.fast_tokenizer(cleaned, add_special_tokens=False)["input_ids"]
        return any(i not in self._special_ids for i in ids)

    def tokens(self, caption: str, context_length: int) -> CaptionTokens:
        cleaned = self.clean_fn(caption)
        encoded = self.fast_tokenizer(
            [cleaned],
            max_length=context_length,
            padding="max_length",
            truncation=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        ids = list(encoded["input_ids"][0])
        if self.strip_sep_token:
            sep_id = self.fast_tokenizer.sep_token_id
            ids = [0 if i == sep_id else i for i in ids]
        offsets = [
            None if special or end <= start else (start, end)
            for (start, end), special in zip(encoded["offset_mapping"][0], encoded["special_tokens_mask"][0])
        ]
        # a fast tokenizer keeps what truncation cut off in the encoding's `overflowing`
        truncated = bool(encoded.encodings[0].overflowing)
        kept = [o for o in offsets if o is not None]
        covered_end = max((end for _, end in kept), default=0) if truncated else len(cleaned)
        # Metaspace / sentencepiece offsets include the preceding space: a word starts after it
        starts = {start + len(cleaned[start:end]) - len(cleaned[start:end].lstrip()) for start, end in kept}
        starts.update(start for start, _ in kept)
        ends = {start + len(cleaned[start:end].rstrip()) for start, end in kept}
        ends.update(end for _, end in kept)
        return CaptionTokens(cleaned, ids, offsets, covered_end, truncated, frozenset(starts), frozenset(ends))


@register_aligner(HFTokenizer)
def _hf_tokenizer_aligner(tokenizer: HFTokenizer) -> FastTokenizerAligner:
    if getattr(tokenizer, "tokenizer_mode", ""):
        raise ValueError(f"concept spans do not support HFTokenizer tokenizer_mode={tokenizer.tokenizer_mode!r}")
    return FastTokenizerAligner(tokenizer.tokenizer, tokenizer.clean_fn, tokenizer.strip_sep_token)


@register_aligner(SigLipTokenizer)
def _siglip_tokenizer_aligner(tokenizer: SigLipTokenizer) -> FastTokenizerAligner:
    # SigLipTokenizer.__call__ cleans with canonicalize_text(basic_clean(text)), i.e. 'canonicalize'
    return FastTokenizerAligner(tokenizer.tokenizer, _clean_canonicalize)


# ------------------------------------------------------------------------------------------------
# Locating concepts

_WORD_CHAR = re.compile(r"\w")


def _is_word_char(char: str) -> bool:
    return bool(_WORD_CHAR.match(char))


def _occurrences(text: str, folded_text: str, phrase: str, start: int):
    """Start/end of each case-insensitive occurrence of ``phrase`` in ``text[start:]``."""
    folded = phrase.lower()
    if len(folded_text) == len(text) and len(folded) == len(phrase):
        index = folded_text.find(folded, start)
        while index != -1:
            yield index, index + len(phrase)
            index = folded_text.find(folded, index + 1)
    else:  # lower() changed a length (rare scripts): the regex engine keeps original offsets
        for match in re.compile(re.escape(phrase), re.IGNORECASE).finditer(text, start):
            yield match.span()


def _find_word(text: str, phrase: str, start: int, accept: Optional[Callable[[Span], bool]],
               folded_text: Optional[str] = None) -> Optional[Span]:
    """First case-insensitive occurrence of ``phrase`` in ``text[start:]`` not inside a longer word
    (a phrase that starts / ends with a word character may not continue a word there) and, if
    given, ``accept``-ed."""
    if not phrase:
        return None
    folded_text = text.lower() if folded_text is None else folded_text
    check_before, check_after = _is_word_char(phrase[0]), _is_word_char(phrase[-1])
    for begin, end in _occurrences(text, folded_text, phrase, start):
        if check_before and begin > 0 and _is_word_char(text[begin - 1]):
            continue
        if check_after and end < len(text) and _is_word_char(text[end]):
            continue
        if accept is None or accept((begin, end)):
            return begin, end
    return None


def locate_concepts(cleaned_caption: str, cleaned_concepts: Sequence[str],
                    accept: Optional[Callable[[Span], bool]] = None) -> List[Optional[Span]]:
    """Character ranges of the concepts in the cleaned caption (``None`` when absent).

    Each search continues after the previous match; failing that (concept lists not in caption
    order), the earliest occurrence not already taken by an earlier concept is used. So repeated
    strings take successive occurrences. ``accept`` filters candidate ranges (the packer accepts
    only ranges on token boundaries)."""
    char_spans: List[Optional[Span]] = []
    taken = set()
    folded = cleaned_caption.lower()

    def untaken(span: Span) -> bool:
        return span not in taken and (accept is None or accept(span))

    cursor = 0
    for concept in cleaned_concepts:
        found = _find_word(cleaned_caption, concept, cursor, untaken, folded)
        if found is None:
            found = _find_word(cleaned_caption, concept, 0, untaken, folded)
        if found is not None:
            cursor = found[1]
            taken.add(found)
        char_spans.append(found)
    return char_spans


def _token_span(caption: CaptionTokens, char_span: Optional[Span]) -> Tuple[Optional[Span], str]:
    """Token range ``[start, end)`` of a character range; with the reason when there is none."""
    if char_span is None:
        return None, "spans_not_found"
    if char_span[1] > caption.covered_end:
        return None, "spans_past_truncation"
    start, end = char_span
    positions = [
        i for i, offset in enumerate(caption.offsets)
        if offset is not None and offset[0] < end and offset[1] > start
    ]
    if not positions:
        return None, "spans_not_found"
    return (positions[0], positions[-1] + 1), ""


def _check_ids(caption: CaptionTokens, caption_row: torch.Tensor, text: str) -> None:
    if caption.ids != caption_row.tolist():
        raise RuntimeError(
            f"concept span alignment disagrees with the tokenizer's ids for caption {excerpt(text)}; "
            "the tokenizer wrapper changed upstream and its aligner must follow")


@functools.lru_cache(maxsize=_MAX_CACHED_CONCEPTS)
def _cleaned(clean_fn: Callable[[str], str], concept: str) -> str:
    return clean_fn(concept)


def _clean_concept(aligner, concept: str) -> str:
    # concept strings repeat a lot ("a man", "a table") and cleaning (ftfy) dominates short texts
    return _cleaned(aligner.clean_fn, concept)


def _names_something(aligner, cleaned: str) -> bool:
    """A letter or digit outside markup (``concepts.text.strip_markup``: "<br/>", "</s>" name nothing, as
    in extraction), in a token that is not the tokenizer's special token (a concept
    ``"<end_of_text>"`` would be encoded as the end token itself: an empty concept)."""
    if not has_text(strip_markup(cleaned)):
        return False
    has_content = getattr(aligner, "has_content", None)  # aligners registered by users may lack it
    return True if has_content is None else has_content(cleaned)


def _spans_with_reasons(aligner, caption: str, concepts: Sequence[str], caption_row: torch.Tensor,
                        ) -> Tuple[List[Optional[Span]], List[str], bool]:
    tokens = aligner.tokens(caption, caption_row.shape[-1])
    _check_ids(tokens, caption_row, caption)
    cleaned_concepts = [_clean_concept(aligner, c) for c in concepts]
    char_spans = locate_concepts(tokens.cleaned, cleaned_concepts, tokens.token_aligned)
    results = [_token_span(tokens, char_span) for char_span in char_spans]
    return [span for span, _ in results], [reason for _, reason in results], tokens.truncated


def concept_spans(tokenizer, caption: str, concepts: Sequence[str],
                  context_length: Optional[int] = None) -> List[Optional[Span]]:
    """Token ranges ``[start, end)`` of each concept in ``tokenizer([caption])[0]``.

    ``None`` for a concept not found in the caption or not fully inside the kept (truncated) tokens.
    """
    caption_row = tokenizer([caption], context_length=context_length)[0]
    spans, _, _ = _spans_with_reasons(get_aligner(tokenizer), caption, concepts, caption_row)
    return spans


# ------------------------------------------------------------------------------------------------
# Packer

class SpacyConceptExtractor:
    """Picklable default extractor: ``open_clip_c2lip.concepts.extract_concepts``, imported lazily
    (spaCy loads once per process, on first use). It receives the captions the packer has already
    cleaned as its tokenizer does (``concept_source``), so it cleans nothing itself."""

    def __init__(self, spacy_model: Optional[str] = None):
        self.spacy_model = spacy_model

    def __call__(self, captions: List[str]) -> List[List[str]]:
        from .concepts import extract_concepts
        options = {"spacy_model": self.spacy_model} if self.spacy_model else {}
        return extract_concepts(captions, clean=None, **options)


def _is_sample_tuple(item) -> bool:
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
            and (item[1] is None or isinstance(item[1], (list, tuple))))


def _as_samples(texts) -> List[Sample]:
    if isinstance(texts, str) or _is_sample_tuple(texts):
        texts = [texts]
    samples = []
    for index, item in enumerate(texts):
        if isinstance(item, str):
            caption, concepts = item, None
        elif _is_sample_tuple(item):
            caption, concepts = item
        else:
            raise TypeError(
                f"text #{index}: expected a caption str or a (caption, concepts) tuple, got {type(item).__name__}")
        if not caption.strip():
            raise ValueError(f"text #{index}: empty caption")
        if concepts is not None:
            bad = [type(c).__name__ for c in concepts if not isinstance(c, str)]
            if bad:
                raise TypeError(f"text #{index} ({excerpt(caption)}): concepts must be strings, got {', '.join(bad)}")
            concepts = list(concepts)
        samples.append((caption, concepts))
    return samples


def process_label() -> str:
    """``worker i/n, pid p`` in a DataLoader worker, else ``main process, pid p``."""
    info = torch.utils.data.get_worker_info()
    worker = f"worker {info.id}/{info.num_workers}" if info is not None else "main process"
    return f"{worker}, pid {os.getpid()}"


class TextPacker:
    """Tokenizer-like callable: captions (+ concepts) -> packed texts ``[N, 1 + 2P, L]``.

    Accepts a caption ``str`` (concepts extracted on the fly), a ``(caption, concepts)`` tuple
    (``concepts`` a list of str, or ``None`` to extract), or a list of these. On-the-fly extraction
    hands the extractor ``concept_source(caption, clean)``: the caption cleaned exactly as this
    tokenizer cleans it (``clean_fn``; SigLIP's ``canonicalize``), cut at ``MAX_PARSE_CHARS``, the
    same rule as the concepts CLI with the matching ``--clean``. Concepts (given or extracted) are
    compared after that cleaning: ones with no letter or digit left ("-", "!!!") and repeats are
    dropped and counted; a caption left with none falls back to the whole caption. Row 0 equals
    ``tokenizer([caption])[0]``; rows ``1..P`` are each concept tokenized as its own text at the full
    context length; rows ``P+1..2P`` are 0/1 masks of the concept's tokens in row 0 (all zero when the
    concept was not found or fell past truncation). Top-level and picklable (DataLoader workers).
    """

    def __init__(self, tokenizer, max_concepts: int = 8, concept_extractor: Optional[ConceptsFn] = None,
                 log_every: int = 10000):
        self.tokenizer = tokenizer
        self.aligner = get_aligner(tokenizer)
        self.max_concepts = check_max_concepts(max_concepts)
        self.concept_extractor = SpacyConceptExtractor() if concept_extractor is None else concept_extractor
        self.log_every = log_every
        self.stats: Dict[str, int] = {key: 0 for key in STAT_KEYS}
        self._unlogged = 0
        self._warned_extraction = False

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    @property
    def num_rows(self) -> int:
        return 1 + 2 * self.max_concepts

    def count(self, key: str, amount: int = 1) -> None:
        """Add to a counter (callers such as the data pipeline add their own keys)."""
        self.stats[key] = self.stats.get(key, 0) + amount

    def log_summary(self, reason: str = "") -> None:
        """Log this process's counters (workers each log their own)."""
        totals = ", ".join(f"{key}={value}" for key, value in self.stats.items())
        suffix = f" ({reason})" if reason else ""
        _logger.info(f"C2LIP text packer [{process_label()}]{suffix}: {totals}")
        self._unlogged = 0

    def _extract(self, samples: List[Sample]) -> List[Sample]:
        missing = [i for i, (_, concepts) in enumerate(samples) if concepts is None]
        if not missing:
            return samples
        if not self._warned_extraction:
            _logger.warning(
                "C2LIP: some captions carry no concepts; extracting them on the fly with spaCy, which is "
                "slow. Precompute them (python -m open_clip_c2lip.concepts) for real training runs.")
            self._warned_extraction = True
        samples = list(samples)
        sources = {}
        for i in missing:
            text, cut = concept_source(samples[i][0], self.aligner.clean)
            self.count("captions_cut_for_parsing", int(cut))
            if has_text(text):
                sources[i] = text
            else:  # nothing to parse: packed without concepts by _select
                samples[i] = (samples[i][0], [])
        extracted = self.concept_extractor(list(sources.values())) if sources else []
        if len(extracted) != len(sources):
            raise RuntimeError(
                f"concept extractor returned {len(extracted)} concept lists for {len(sources)} captions")
        for i, concepts in zip(sources, extracted):
            samples[i] = (samples[i][0], list(concepts))
        self.count("extracted_on_the_fly", len(missing))
        return samples

    def _select(self, caption: str, concepts: List[str]) -> List[str]:
        """The concepts to pack: distinct after the tokenizer's cleaning, each with a letter or digit
        left outside the tokenizer's special tokens; else the whole caption; nothing when the caption
        itself has none."""
        kept, seen = [], set()
        for concept in concepts:
            cleaned = _clean_concept(self.aligner, concept)
            if not _names_something(self.aligner, cleaned):
                self.count("blank_concepts")
            elif cleaned in seen:
                self.count("duplicate_concepts")
            else:
                seen.add(cleaned)
                kept.append(concept)
        if not kept:
            if not _names_something(self.aligner, self.aligner.clean(caption)):
                self.count("captions_without_text")
                return []
            self.count("whole_caption_fallback")
            kept = [caption]
        if len(kept) > self.max_concepts:
            self.count("samples_over_max")
            self.count("concepts_over_max", len(kept) - self.max_concepts)
            kept = kept[:self.max_concepts]
        return kept

    def __call__(self, texts: Union[str, Sample, Sequence[Union[str, Sample]]],
                 context_length: Optional[int] = None) -> torch.Tensor:
        samples = self._extract(_as_samples(texts))
        selected = [self._select(caption, concepts) for caption, concepts in samples]
        caption_rows = self.tokenizer([caption for caption, _ in samples], context_length=context_length)
        flat = [c for concepts in selected for c in concepts]
        concept_rows = (self.tokenizer(flat, context_length=context_length) if flat
                        else caption_rows.new_zeros((0, caption_rows.shape[-1])))
        num_positions = caption_rows.shape[-1]

        packed = []
        first_concept = 0
        for (caption, _), concepts, caption_row in zip(samples, selected, caption_rows):
            spans, reasons, truncated = _spans_with_reasons(self.aligner, caption, concepts, caption_row)
            span_masks = torch.zeros(len(concepts), num_positions, dtype=torch.long)
            for row, span in enumerate(spans):
                if span is not None:
                    span_masks[row, span[0]:span[1]] = 1
            for reason in reasons:
                if reason:
                    self.count(reason)
            self.count("captions_truncated", int(truncated))
            self.count("concepts", len(concepts))
            rows = concept_rows[first_concept:first_concept + len(concepts)]
            first_concept += len(concepts)
            packed.append(pack_rows(caption_row, rows, span_masks, self.max_concepts))

        self.count("samples", len(samples))
        self._unlogged += len(samples)
        if self.log_every and self._unlogged >= self.log_every:
            self.log_summary(f"every {self.log_every} samples")
        return torch.stack(packed)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("aligner")  # rebuilt from the tokenizer: no need to pickle it twice
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.aligner = get_aligner(self.tokenizer)
