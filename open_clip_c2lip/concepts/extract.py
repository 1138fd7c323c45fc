"""spaCy concept extraction: batched, cached, optionally in worker processes, with its counts.

``extract_concepts(captions)`` gives each caption's concepts (``spacy_pipeline.doc_concepts`` of
``text.concept_source(caption, clean)``); a caption left with no concept gets its whole normalized
caption as its single concept (the fallback, counted in ``ConceptStats``). Captions go through
``nlp.pipe`` in batches, and repeated captions are served from an in-process LRU cache (duplicates
are common in web caption data). ``ConceptExtractor.pipe`` streams ``(caption, context)`` pairs for
the annotation CLI.
"""
import collections
import concurrent.futures
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ..messages import excerpt
from .spacy_pipeline import DEFAULT_SPACY_MODEL, doc_concepts, load_spacy
from .text import DEFAULT_CLEAN, MAX_PARSE_CHARS, concept_source, get_clean_fn, has_text, normalize_text
from .workers import die_with_parent

DEFAULT_BATCH_SIZE = 128
DEFAULT_CACHE_SIZE = 1 << 17
MAX_LISTED_FAILURES = 20
# ConceptStats' counts of damaged shards, summed by merge
_DAMAGE_COUNTS = ("samples", "damaged", "salvaged", "lost", "lost_uncertain")


class AnnotationError(ValueError):
    """Something concepts cannot be extracted from or written for: an input file, an output folder, a
    sample or a caption; the message names it and what is wrong."""


class CaptionError(AnnotationError):
    """A caption (or the sample or row holding it) that concepts cannot be extracted from."""


@dataclass
class ConceptStats:
    """Counts of one extraction run (mergeable across files and processes)."""
    captions: int = 0
    concepts: int = 0
    fallbacks: int = 0
    failures: int = 0
    cache_hits: int = 0  # captions answered without parsing (cached or repeated in flight)
    cut: int = 0  # captions longer than MAX_PARSE_CHARS after cleaning: parsed up to there
    samples: int = 0  # samples / rows written (with or without concepts)
    damaged: int = 0  # damaged or truncated shards (each also counted as a failure)
    salvaged: int = 0  # complete samples kept from them
    lost: int = 0  # samples lost to their damage (a lower bound when lost_uncertain)
    lost_uncertain: int = 0  # damaged shards where more samples may be lost (unreadable damaged headers)
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

    def add_damage(self, kept: int, lost: int, lost_exact: bool) -> None:
        self.damaged += 1
        self.salvaged += kept
        self.lost += lost
        self.lost_uncertain += int(not lost_exact)

    def merge(self, other: "ConceptStats") -> "ConceptStats":
        self.captions += other.captions
        self.concepts += other.concepts
        self.fallbacks += other.fallbacks
        self.failures += other.failures
        self.cache_hits += other.cache_hits
        self.cut += other.cut
        for name in _DAMAGE_COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.histogram.update(other.histogram)
        self.failed.extend(other.failed[: max(0, MAX_LISTED_FAILURES - len(self.failed))])
        return self

    def to_dict(self) -> Dict[str, Any]:
        return {"captions": self.captions, "concepts": self.concepts, "fallbacks": self.fallbacks,
                "failures": self.failures, "cut": self.cut, **{name: getattr(self, name) for name in _DAMAGE_COUNTS},
                "histogram": {str(k): n for k, n in sorted(self.histogram.items())}, "failed": list(self.failed)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ConceptStats":
        return cls(captions=int(data["captions"]), concepts=int(data["concepts"]), fallbacks=int(data["fallbacks"]),
                   failures=int(data["failures"]), cut=int(data["cut"]),
                   **{name: int(data.get(name, 0)) for name in _DAMAGE_COUNTS},
                   histogram=collections.Counter({int(k): int(n) for k, n in data["histogram"].items()}),
                   failed=[str(m) for m in data["failed"]])

    def summary(self) -> str:
        mean = self.concepts / self.captions if self.captions else 0.0
        lines = [
            f"samples: {self.samples}   captions: {self.captions}   concepts: {self.concepts} "
            f"(mean {mean:.2f} per caption)",
            f"fallbacks (whole caption as its concept): {self.fallbacks}   cache hits: {self.cache_hits}",
            f"captions cut (over {MAX_PARSE_CHARS} characters after cleaning, parsed up to there): {self.cut}",
            "concepts per caption (K: captions): " + ", ".join(
                f"{k}: {n}" for k, n in sorted(self.histogram.items())),
            f"failures: {self.failures}" + (
                f"   damaged or truncated shards: {self.damaged} ({self.salvaged} complete samples kept, "
                f"{'at least ' if self.lost_uncertain else ''}{self.lost} lost)" if self.damaged else ""),
        ]
        lines += [f"  {message}" for message in self.failed]
        if self.failures > len(self.failed):
            lines.append(f"  ... and {self.failures - len(self.failed)} more")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Extraction

def check_caption(caption: Any, where: str) -> str:
    """Return ``caption`` if it is a non-blank ``str``, else raise ``CaptionError`` naming ``where``."""
    if not isinstance(caption, str):
        raise CaptionError(f"{where}: caption must be a str, got {type(caption).__name__}")
    if not caption.strip():
        raise CaptionError(f"{where}: caption is empty or whitespace-only ({excerpt(caption)})")
    return caption


_PARSE, _KNOWN, _FLUSH = "parse", "known", "flush"  # kinds of pending items in ConceptExtractor.pipe


def _empty_slot(caption: str) -> list:
    return [None]


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
        # caption -> its one-element result slot, [None] until the result is known (LRU, cache_size)
        self._slot = functools.lru_cache(maxsize=max(cache_size, 0))(_empty_slot)
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
        # holder [result, cut, cache slot] filled when its doc comes back; cached items hold the value.
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
                    slot = self._slot(caption)
                    if slot[0] is None:
                        text, cut_or_error = self._source(caption)
                        if text is None:  # nothing to parse: the result (an error) is known now
                            slot[0] = cut_or_error
                            pending.append((context, caption, cut_or_error, _KNOWN))
                        else:
                            holder = in_flight[caption] = [None, cut_or_error, slot]
                            pending.append((context, caption, holder, _PARSE))
                            yield text
                            continue
                    else:
                        pending.append((context, caption, slot[0], _KNOWN))
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
                    holder[0] = holder[2][0] = result
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


def _parse_in_worker(options: Tuple[str, int, bool], texts: List[str]) -> List[Any]:
    spacy_model, batch_size, fallback = options
    extractor = get_extractor(spacy_model, batch_size, 1, fallback)
    return _parse_texts(extractor.nlp, texts, batch_size, extractor._concepts)


def get_extractor(spacy_model: str = DEFAULT_SPACY_MODEL, batch_size: int = DEFAULT_BATCH_SIZE,
                  n_process: int = 1, fallback: bool = True, cache_size: int = DEFAULT_CACHE_SIZE,
                  clean: Optional[Union[str, Callable[[str], str]]] = DEFAULT_CLEAN) -> ConceptExtractor:
    """The process-wide extractor for these options (spaCy loads once, the cache is shared)."""
    return _extractor(spacy_model, batch_size, n_process, fallback, cache_size, clean)


_extractor = functools.lru_cache(maxsize=None)(ConceptExtractor)  # one per distinct options


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
