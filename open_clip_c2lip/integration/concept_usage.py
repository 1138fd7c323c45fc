"""Whether the concept losses get concepts: counted every step, reported, and a stop when there are none.

A caption without a *usable* concept gives npc and xac nothing to learn from, and nothing else in
training changes: the contrastive term trains on as plain SigLIP. Spans that are not found, blank concepts, whole-caption
fallbacks, truncation, a concepts key that matches nothing, ``--c2lip-duplicate-concepts ignore`` on
batches that share every concept ... all end there. So the measure is the loss's own:
``C2LIPLoss.last_concept_usage`` (``open_clip_c2lip.loss.CONCEPT_USAGE_KEYS``), taken in the training
process once per optimizer step and summed on the device; it is read (one host sync, and one
all-reduce of 8 integers under DDP) only for a report:

- **first report**, after the first ``FIRST_REPORT_STEPS`` optimizer steps of the run (at the end of
  the first epoch when it is shorter): if not one of their samples had a usable concept, training
  stops with ``NoUsableConceptsError`` (non-zero exit, no checkpoint of that epoch); if more than
  ``THRESHOLD`` of them had none, a WARNING names the counts, the likely cause and what to do;
- **epoch summary**, when each epoch ends (before its checkpoint): the share of samples with a usable
  concept and of usable concepts (INFO), and the same WARNING past ``THRESHOLD``.

The likely cause is read from the data counters of this process (``counters``), which the DataLoader
workers fill as they pack. The same reports warn when most samples had no concepts under
``--c2lip-concepts-key`` and got spaCy's instead. Under DDP the usage counts are the global batch's
(every rank takes the same decision); the data counters are rank 0's.

``patch_train`` (a hook of ``open_clip_train.train``) wraps ``train_one_epoch``: with a
``C2LIPLoss`` whose npc or xac weight is non-zero, the loss is wrapped in ``UsageCountingLoss``.
"""
import functools
import inspect
import logging
import sys
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

_logger = logging.getLogger(__name__)

# a WARNING when more than this share of a report's samples had no usable concept. Healthy data is far
# below it (COCO captions with their own spaCy concepts: 0.032 %, benchmarks/concept_usage.md);
# above it most images get no concept positive and the run is closer to SigLIP than to C2LIP.
THRESHOLD = 0.5
# optimizer steps before the first report; none of them with a usable concept stops the run
FIRST_REPORT_STEPS = 10
USAGE_WRAPPED = "__c2lip_usage_wrapped__"


class NoUsableConceptsError(RuntimeError):
    """The first steps of a C2LIP run gave the concept losses not a single usable concept."""


def _keys() -> Tuple[str, ...]:
    from ..loss import CONCEPT_USAGE_KEYS

    return CONCEPT_USAGE_KEYS


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "n/a"


def format_usage(usage: Dict[str, int]) -> str:
    """One line: the share of samples with a usable concept, of usable concepts, then every count."""
    samples, with_usable = usage["samples"], usage["samples_with_usable_concept"]
    concepts, usable = usage["concepts"], usage["usable_concepts"]
    counts = ", ".join(f"{key}={usage[key]}" for key in _keys())
    return (f"{with_usable} of {samples} samples ({_percent(with_usable, samples)}) had a usable concept; "
            f"{usable} of {concepts} concepts usable ({_percent(usable, concepts)}) | {counts}")


def _breakdown(usage: Dict[str, int]) -> str:
    without = usage["samples"] - usage["samples_with_usable_concept"]
    no_concept = usage["samples_without_concept"]
    return (f"{no_concept} of the {without} had no concept at all (samples_without_concept), {without - no_concept} "
            f"only unusable ones; of the {usage['concepts']} concepts, {usage['whole_caption_concepts']} were their "
            f"whole caption (whole_caption_concepts) and {usage['concepts_without_negative']} had no negative image "
            f"in the batch (concepts_without_negative)")


def likely_cause(usage: Dict[str, int], data: Dict[str, int], concept_mode: str, concepts_key: str,
                 duplicate_concepts: str) -> Tuple[str, str]:
    """(cause, what to do) for the largest group of samples without a usable concept; ``data``: the
    data counters of the same period (``counters``; may be empty)."""
    from .wds import AUTHORS_CONCEPTS_KEY

    def get(key):
        return int(data.get(key, 0))

    packed = get("concepts")
    no_concept = usage["samples_without_concept"]
    rest = usage["samples"] - usage["samples_with_usable_concept"] - no_concept
    annotate = "python -m open_clip_c2lip.concepts annotates them from the captions"
    if no_concept >= rest:
        not_found, past = get("spans_not_found"), get("spans_past_truncation")
        if concept_mode == "span" and not_found + past and not_found >= past:
            return (f"in span mode a concept trains only where its exact tokens are found in its caption, and "
                    f"{not_found} of the {packed} concepts packed were not (data counter spans_not_found): the "
                    f"concepts are not in their captions (taken from other captions or another field, or cleaned "
                    f"otherwise than this model's tokenizer cleans)",
                    f"check that --c2lip-concepts-key {concepts_key!r} holds concepts of these captions; re-annotate "
                    f"them from the training captions with the tokenizer's cleaning (python -m open_clip_c2lip.concepts "
                    f"--clean lower for CLIP BPE, canonicalize for SigLIP); or use --c2lip-concept-mode text, which "
                    f"encodes each concept as its own text and needs no span")
        if concept_mode == "span" and past:
            return (f"{past} of the {packed} concepts packed lie past the caption's truncation at the context "
                    f"length (data counter spans_past_truncation)",
                    "use --c2lip-concept-mode text (each concept encoded as its own text), or shorter captions")
        if get("captions_without_text"):
            return (f"{get('captions_without_text')} captions have no text, only markup or punctuation (data "
                    f"counter captions_without_text), so they carry no concept",
                    "check the caption field of the data (--csv-caption-key, the shards' txt)")
        return (f"the packed texts carry no concept rows ({packed} concepts packed, data counter concepts)",
                f"check the concepts of the data (--c2lip-concepts-key {concepts_key!r}); {annotate}")
    if usage["whole_caption_concepts"] >= usage["concepts_without_negative"]:
        fallback = get("whole_caption_fallback")
        if fallback and get("blank_concepts"):
            return (f"the data's concepts are blank or markup only ({get('blank_concepts')} dropped, data counter "
                    f"blank_concepts), so {fallback} captions fell back to themselves as their only concept "
                    f"(whole_caption_fallback)", f"fix the concepts of the data; {annotate}")
        if fallback and get("extracted_on_the_fly"):
            return (f"{get('extracted_on_the_fly')} samples had no concepts under --c2lip-concepts-key "
                    f"{concepts_key!r} (nor {AUTHORS_CONCEPTS_KEY!r}; data counter extracted_on_the_fly) and spaCy "
                    f"found no noun phrase in them, so {fallback} captions fell back to themselves "
                    f"(whole_caption_fallback)",
                    f"pass the field that holds the concepts with --c2lip-concepts-key; {annotate}")
        if fallback:
            return (f"{fallback} captions came with empty concept lists and fell back to themselves as their only "
                    f"concept (data counter whole_caption_fallback)", f"fix the concepts of the data; {annotate}")
        extracted = (f" (spaCy's: {get('extracted_on_the_fly')} samples had no concepts under --c2lip-concepts-key "
                     f"{concepts_key!r}, data counter extracted_on_the_fly)" if get("extracted_on_the_fly") else "")
        return (f"the concepts are the captions themselves{extracted}: captions that are a single noun phrase, "
                f"or concepts copied from the caption field",
                f"concepts must be phrases within a longer caption; {annotate}. If the captions are single "
                f"phrases, train plain SigLIP (--siglip without --c2lip-loss)")
    if duplicate_concepts == "ignore":
        return ("--c2lip-duplicate-concepts ignore leaves out the pairs of a concept with every other image that "
                "holds the same concept, and in these batches every image holds it, so npc and xac see positives only",
                "use --c2lip-duplicate-concepts negative (the default, the authors' rule), or data whose concepts "
                "differ between images")
    return ("the global batch holds a single image, so no concept has a negative image",
            "use a larger --batch-size")


def _reduce(total) -> Dict[str, int]:
    """Counts summed over the ranks (one all-reduce under DDP), read on the host."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        total = total.clone()
        dist.all_reduce(total)
    return dict(zip(_keys(), (int(v) for v in total.tolist())))


class UsageMonitor:
    """The run's usage counts for one ``C2LIPLoss`` (one per training run), and its reports."""

    def __init__(self, loss, args):
        self.loss = loss
        self.concept_mode = getattr(args, "c2lip_concept_mode", None) or "text"
        self.concepts_key = getattr(args, "c2lip_concepts_key", None) or "concepts"
        self.master = getattr(args, "rank", 0) == 0
        self.steps = 0  # optimizer steps counted in this process
        self.first_report_done = False
        self.epoch = 0
        self.epoch_total = None  # device tensor [len(CONCEPT_USAGE_KEYS)]
        self.counters = None
        self._data_at_run_start: Dict[str, int] = {}
        self._data_at_epoch_start: Dict[str, int] = {}

    # ---- counting (every step: device ops only)

    def start_epoch(self, epoch: int, counters) -> None:
        self.epoch = epoch
        self.epoch_total = None
        self.counters = counters
        self._data_at_epoch_start = self._data_totals()
        if self.steps == 0:
            self._data_at_run_start = dict(self._data_at_epoch_start)

    def add_step(self) -> None:
        """Add the loss's last usage as one optimizer step; the first report after ``FIRST_REPORT_STEPS``."""
        usage = self.loss.last_concept_usage
        if usage is None:
            return
        self.epoch_total = usage.clone() if self.epoch_total is None else self.epoch_total.add_(usage)
        self.steps += 1
        if not self.first_report_done and self.steps >= FIRST_REPORT_STEPS:
            self.first_report(f"the first {self.steps} steps")

    # ---- reports (host sync)

    def _data_totals(self) -> Dict[str, int]:
        return self.counters.totals() if self.counters is not None else {}

    def _data_since(self, start: Dict[str, int]) -> Dict[str, int]:
        return {key: value - start.get(key, 0) for key, value in self._data_totals().items()}

    def first_report(self, period: str) -> None:
        """Stop when ``period`` (the run's first steps) had no usable concept; else report it."""
        self.first_report_done = True
        if self.epoch_total is not None:
            usage, data = _reduce(self.epoch_total), self._data_since(self._data_at_run_start)
            self._stop_without_usable(usage, data, period)
            self._report(usage, data, period, "so far")

    def _stop_without_usable(self, usage: Dict[str, int], data: Dict[str, int], period: str) -> None:
        if usage["usable_concepts"] == 0:
            cause, remedy = likely_cause(usage, data, self.concept_mode, self.concepts_key,
                                         self.loss.duplicate_concepts)
            message = (
                f"C2LIP: no usable concept in {period} of training: none of their {usage['samples']} samples "
                f"gave the concept losses (npc, xac) a concept to learn from ({_breakdown(usage)}). Likely cause: "
                f"{cause}. What to do: {remedy}. Stopped before this epoch's checkpoint: with nothing for npc and "
                f"xac to learn from, the run would be plain SigLIP in effect. To train plain SigLIP on purpose, use "
                f"--siglip without --c2lip-loss.")
            if self.master:
                _logger.error(message)
            raise NoUsableConceptsError(message)

    def end_epoch(self) -> None:
        """The epoch summary; in an epoch shorter than ``FIRST_REPORT_STEPS`` steps, the first report's
        stop first."""
        if self.epoch_total is None:
            return
        usage = _reduce(self.epoch_total)
        if not self.first_report_done:
            self.first_report_done = True
            self._stop_without_usable(usage, self._data_since(self._data_at_run_start),
                                      f"the first {self.steps} steps (all of epoch {self.epoch})")
        self._report(usage, self._data_since(self._data_at_epoch_start), f"epoch {self.epoch}", f"in epoch {self.epoch}")

    def _report(self, usage: Dict[str, int], data: Dict[str, int], period: str, data_period: str) -> None:
        if not self.master:
            return
        _logger.info(f"C2LIP concept usage, {period}: {format_usage(usage)}")
        without = usage["samples"] - usage["samples_with_usable_concept"]
        if usage["samples"] and without > THRESHOLD * usage["samples"]:
            cause, remedy = likely_cause(usage, data, self.concept_mode, self.concepts_key,
                                         self.loss.duplicate_concepts)
            _logger.warning(
                f"C2LIP: {without} of {usage['samples']} samples ({_percent(without, usage['samples'])}) in {period} "
                f"had no usable concept, more than the {THRESHOLD:.0%} threshold: the concept losses (npc, xac) "
                f"learn from the rest only, and these samples train as plain SigLIP ({_breakdown(usage)}). "
                f"Likely cause: {cause}. What to do: {remedy}.")
        extracted, packed = int(data.get("extracted_on_the_fly", 0)), int(data.get("samples", 0))
        if packed and extracted > THRESHOLD * packed:
            from .wds import AUTHORS_CONCEPTS_KEY

            _logger.warning(
                f"C2LIP: {extracted} of the {packed} samples the data loader packed {data_period} had no concepts under "
                f"--c2lip-concepts-key {self.concepts_key!r} (nor {AUTHORS_CONCEPTS_KEY!r}; data counter "
                f"extracted_on_the_fly): their concepts were extracted on the fly with spaCy, not read from the "
                f"data. If the data holds concepts under another field, pass its name with --c2lip-concepts-key; "
                f"annotating ahead (python -m open_clip_c2lip.concepts) also saves the extraction time.")


# one monitor per C2LIPLoss object, i.e. per training run of this process
_MONITORS: "weakref.WeakKeyDictionary[Any, UsageMonitor]" = weakref.WeakKeyDictionary()


def find_c2lip_loss(loss) -> Optional[Any]:
    """The ``C2LIPLoss`` inside ``loss`` (itself, or wrapped as ``wrapper.loss``), else None."""
    from ..loss import C2LIPLoss

    for _ in range(8):
        if isinstance(loss, C2LIPLoss):
            return loss
        loss = getattr(loss, "__dict__", {}).get("loss")
        if loss is None:
            return None
    return None


def monitor_for(loss, args) -> Optional[UsageMonitor]:
    """The run's monitor of ``loss`` (None for a loss without concept terms)."""
    c2lip_loss = find_c2lip_loss(loss)
    if c2lip_loss is None or (c2lip_loss.npc_weight == 0 and c2lip_loss.xac_weight == 0):
        return None
    monitor = _MONITORS.get(c2lip_loss)
    if monitor is None:
        monitor = _MONITORS[c2lip_loss] = UsageMonitor(c2lip_loss, args)
    return monitor


class UsageCountingLoss:
    """The training loss, handing its ``last_concept_usage`` to ``monitor`` once per optimizer step.

    With ``--accum-freq k`` open_clip_train calls the loss ``k`` times per step, each time on the
    features of all ``k`` micro-batches: the first of those calls is counted.
    """

    def __init__(self, loss: Callable, monitor: UsageMonitor, accum_freq: int = 1):
        self.loss = loss
        self.monitor = monitor
        self.accum_freq = max(1, int(accum_freq))
        self.calls = 0

    def __call__(self, *args, **kwargs):
        out = self.loss(*args, **kwargs)
        counted = self.calls % self.accum_freq == 0
        self.calls += 1
        if counted:
            self.monitor.add_step()
        return out

    def __getattr__(self, name: str):
        return getattr(self.__dict__["loss"], name)


def wrap_train_one_epoch(train_one_epoch: Callable) -> Callable:
    """``train_one_epoch`` whose C2LIP loss reports its concept usage (``UsageMonitor``); any other loss
    passes through. Idempotent."""
    if getattr(train_one_epoch, USAGE_WRAPPED, False):
        return train_one_epoch
    signature = inspect.signature(train_one_epoch)

    @functools.wraps(train_one_epoch)
    def c2lip_usage_train_one_epoch(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        run_args = bound.arguments["args"]
        monitor = monitor_for(bound.arguments["loss"], run_args)
        if monitor is None:
            return train_one_epoch(*bound.args, **bound.kwargs)
        train = bound.arguments["data"].get("train") if isinstance(bound.arguments["data"], dict) else None
        monitor.start_epoch(bound.arguments["epoch"], getattr(train, "c2lip_counters", None))
        bound.arguments["loss"] = UsageCountingLoss(bound.arguments["loss"], monitor,
                                                    getattr(run_args, "accum_freq", 1))
        result = train_one_epoch(*bound.args, **bound.kwargs)
        monitor.end_epoch()
        return result

    setattr(c2lip_usage_train_one_epoch, USAGE_WRAPPED, True)
    return c2lip_usage_train_one_epoch


def patch_train(train_module) -> None:
    """Hook for ``open_clip_train.train``: ``train_one_epoch`` -> ``wrap_train_one_epoch`` (idempotent).

    Runs before ``train_loop.patch_train``, so its wrapper is the inner one; ``open_clip_train.main``'s
    from-imported binding is updated too when main was imported first."""
    train_module.train_one_epoch = wrap_train_one_epoch(train_module.train_one_epoch)
    main_module = sys.modules.get("open_clip_train.main")
    if main_module is not None and getattr(main_module, "train_one_epoch", None) is not None:
        main_module.train_one_epoch = wrap_train_one_epoch(main_module.train_one_epoch)
