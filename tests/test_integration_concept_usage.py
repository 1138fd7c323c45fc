"""open_clip_c2lip.integration.concept_usage: the concept losses' usage counted per step, the first
report and epoch summary, the stop when the first steps have no usable concept.

Unit tests drive ``UsageMonitor`` / ``UsageCountingLoss`` with a real ``C2LIPLoss``; the slow tests are
real ``python -m open_clip_c2lip.train`` runs (C2LIP-Tiny, CPU, fp32, batch 4, tiny CSV or webdataset
data), one per way of leaving the concept losses without a usable concept, a run past the warning
threshold, a healthy run, accumulation, and two DDP ranks.
"""
import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import open_clip_c2lip  # noqa: F401  (hooks, as in training)
from open_clip_c2lip.integration import concept_usage, train_loop
from open_clip_c2lip.integration.concept_usage import (FIRST_REPORT_STEPS, THRESHOLD, NoUsableConceptsError,
                                                       UsageCountingLoss, UsageMonitor, likely_cause, monitor_for)
from open_clip_c2lip.loss import CONCEPT_USAGE_KEYS, C2LIPLoss

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 300
ROWS = 48  # 12 steps of 4: the first report (10 steps) comes inside the first epoch
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink"]
THINGS = ["dog", "ball", "cat", "car", "hat", "cup", "lamp", "chair"]


# ------------------------------------------------------------------------------------------ unit

def usage(**counts) -> torch.Tensor:
    return torch.tensor([counts.get(key, 0) for key in CONCEPT_USAGE_KEYS])


HEALTHY = usage(samples=4, samples_with_usable_concept=4, concept_slots=32, concepts=8, usable_concepts=8)
NONE = usage(samples=4, samples_without_concept=4, concept_slots=32)


class FakeLoss:
    """Stands for ``C2LIPLoss``: hands out the given usages in turn."""

    duplicate_concepts = "negative"

    def __init__(self, usages):
        self.usages = list(usages)
        self.last_concept_usage = None

    def __call__(self, **kwargs):
        self.last_concept_usage = self.usages.pop(0)
        return {"contrastive_loss": torch.tensor(1.0)}


def args(**kwargs):
    return argparse.Namespace(**{"c2lip_concept_mode": "span", "c2lip_concepts_key": "concepts", "rank": 0,
                                 "accum_freq": 1, **kwargs})


def test_hook_wraps_train_one_epoch_inside_the_generic_wrapper_once():
    import open_clip_train.main
    import open_clip_train.train

    outer = open_clip_train.train.train_one_epoch
    assert getattr(outer, train_loop.WRAPPED) and getattr(outer, concept_usage.USAGE_WRAPPED)
    inner = outer.__wrapped__
    assert inner.__name__ == "train_one_epoch" and getattr(inner, concept_usage.USAGE_WRAPPED)
    assert not getattr(inner.__wrapped__, concept_usage.USAGE_WRAPPED, False)  # upstream's own
    concept_usage.patch_train(open_clip_train.train)  # idempotent
    train_loop.patch_train(open_clip_train.train)
    assert open_clip_train.train.train_one_epoch is outer and open_clip_train.main.train_one_epoch is outer


def test_upstream_train_one_epoch_still_takes_what_the_wrapper_binds():
    """Drift check: the wrapper binds ``loss``, ``data``, ``epoch`` and ``args`` by name and counts the
    first of the ``accum_freq`` loss calls of a step (upstream's accumulation branch calls the loss once
    per micro-batch, each time on the features of all of them)."""
    import inspect

    import open_clip_train.train

    upstream = open_clip_train.train.train_one_epoch.__wrapped__.__wrapped__
    assert {"model", "data", "loss", "epoch", "args"} <= set(inspect.signature(upstream).parameters)
    source = inspect.getsource(upstream)
    assert "for j in range(args.accum_freq):" in source
    assert "losses = loss(**inputs, **inputs_no_accum, output_dict=True)" in source
    assert "losses = loss(**model_out, output_dict=True)" in source


def test_counting_loss_counts_once_per_step_with_accumulation():
    steps, accum = 3, 2
    fake = FakeLoss([usage(samples=i + 1, samples_with_usable_concept=1, usable_concepts=1) for i in range(steps * accum)])
    monitor = UsageMonitor(fake, args())
    monitor.start_epoch(0, None)
    counting = UsageCountingLoss(fake, monitor, accum_freq=accum)
    for _ in range(steps * accum):
        counting(image_features=None)
    assert monitor.steps == steps
    assert monitor.epoch_total[CONCEPT_USAGE_KEYS.index("samples")] == 1 + 3 + 5  # calls 0, 2, 4
    assert counting.duplicate_concepts == "negative"  # attributes go to the loss


def test_first_steps_without_a_usable_concept_stop_the_run(caplog):
    fake = FakeLoss([NONE] * FIRST_REPORT_STEPS)
    monitor = UsageMonitor(fake, args())
    monitor.start_epoch(0, None)
    counting = UsageCountingLoss(fake, monitor)
    for _ in range(FIRST_REPORT_STEPS - 1):
        counting()
    with caplog.at_level(logging.INFO), pytest.raises(NoUsableConceptsError) as error:
        counting()
    message = str(error.value)
    assert f"no usable concept in the first {FIRST_REPORT_STEPS} steps" in message
    assert f"none of their {4 * FIRST_REPORT_STEPS} samples" in message
    assert "What to do:" in message and "--siglip without --c2lip-loss" in message
    assert message in caplog.text  # also in the run's log, not only the traceback


def test_one_usable_concept_in_the_first_steps_is_no_stop():
    fake = FakeLoss([NONE] * (FIRST_REPORT_STEPS - 1) + [HEALTHY])
    monitor = UsageMonitor(fake, args())
    monitor.start_epoch(0, None)
    counting = UsageCountingLoss(fake, monitor)
    for _ in range(FIRST_REPORT_STEPS):
        counting()
    assert monitor.first_report_done


def test_short_first_epoch_stops_at_its_end():
    fake = FakeLoss([NONE, NONE])
    monitor = UsageMonitor(fake, args())
    monitor.start_epoch(0, None)
    counting = UsageCountingLoss(fake, monitor)
    counting()
    counting()
    with pytest.raises(NoUsableConceptsError, match=r"the first 2 steps \(all of epoch 0\)"):
        monitor.end_epoch()


@pytest.mark.parametrize("without,warned", [(3, True), (2, False)])  # of 4 samples: 75 % and 50 %
def test_warning_only_past_the_threshold(caplog, without, warned):
    assert THRESHOLD == 0.5
    fake = FakeLoss([usage(samples=4, samples_with_usable_concept=4 - without, samples_without_concept=without,
                           concept_slots=32, concepts=4 - without, usable_concepts=4 - without)])
    monitor = UsageMonitor(fake, args())
    monitor.start_epoch(3, None)
    UsageCountingLoss(fake, monitor)()
    with caplog.at_level(logging.INFO):
        monitor.end_epoch()
    assert f"C2LIP concept usage, epoch 3: {4 - without} of 4 samples" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) == warned
    if warned:
        assert warnings[0].startswith(f"C2LIP: {without} of 4 samples (75.0 %) in epoch 3 had no usable concept, "
                                      "more than the 50% threshold")


def test_no_monitor_without_concept_terms():
    assert monitor_for(C2LIPLoss(npc_weight=0.0, xac_weight=0.0), args()) is None
    assert monitor_for(torch.nn.MSELoss(), args()) is None
    loss = C2LIPLoss()
    assert monitor_for(train_loop.AccumulationExactLoss(loss, 2), args()) is monitor_for(loss, args())


NO_CONCEPT = {"samples": 8, "samples_with_usable_concept": 0, "samples_without_concept": 8, "concepts": 0,
              "whole_caption_concepts": 0, "concepts_without_negative": 0}
WHOLE = {"samples": 8, "samples_with_usable_concept": 0, "samples_without_concept": 0, "concepts": 8,
         "whole_caption_concepts": 8, "concepts_without_negative": 0}
SHARED = {"samples": 8, "samples_with_usable_concept": 0, "samples_without_concept": 0, "concepts": 8,
          "whole_caption_concepts": 0, "concepts_without_negative": 8}


@pytest.mark.parametrize("counts,data,mode,rule,expected", [
    (NO_CONCEPT, {"concepts": 16, "spans_not_found": 16}, "span", "negative", "spans_not_found"),
    (NO_CONCEPT, {"concepts": 16, "spans_past_truncation": 16}, "span", "negative", "spans_past_truncation"),
    (NO_CONCEPT, {"captions_without_text": 8}, "text", "negative", "captions_without_text"),
    (NO_CONCEPT, {}, "text", "negative", "no concept rows"),
    (WHOLE, {"whole_caption_fallback": 8, "blank_concepts": 16}, "text", "negative", "blank_concepts"),
    (WHOLE, {"whole_caption_fallback": 8, "extracted_on_the_fly": 8}, "text", "negative", "no noun phrase"),
    (WHOLE, {"whole_caption_fallback": 8}, "text", "negative", "empty concept lists"),
    (WHOLE, {"extracted_on_the_fly": 8}, "text", "negative", "captions themselves (spaCy's"),
    (WHOLE, {}, "text", "negative", "captions themselves:"),
    (SHARED, {}, "text", "ignore", "--c2lip-duplicate-concepts ignore"),
    (SHARED, {}, "text", "negative", "single image"),
])
def test_likely_cause_names_the_counter(counts, data, mode, rule, expected):
    cause, remedy = likely_cause(counts, data, mode, "concepts", rule)
    assert expected in cause and remedy


# ------------------------------------------------------------------------------------------ real runs

def write_csv(root: Path, kind: str, rows: int = ROWS) -> Path:
    """``rows`` square images; captions of two colour-object phrases; concepts by ``kind``."""
    import pandas as pd
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    table = []
    for i in range(rows):
        first, second = f"a {COLOURS[i % 8]} {THINGS[i % 8]}", f"a {COLOURS[(i + 3) % 8]} {THINGS[(i + 5) % 8]}"
        caption, concepts = f"{first} next to {second}", [first, second]
        if kind == "absent" or (kind == "mostly_absent" and i % 4):
            concepts = ["a striped zebra", "an old boat"]
        elif kind == "blank":
            concepts = ["-", "<br/>", "..."]
        elif kind == "empty":
            concepts = []
        elif kind == "truncated":  # the context is 32 tokens: both phrases past it
            caption = "in this picture " * 12 + caption
        elif kind == "no_text":
            caption, concepts = "<br/> ... <br/>", []
        elif kind == "shared":
            caption, concepts = f"a big tree next to {second}", ["a big tree"]
        elif kind == "phrases":  # captions that are one noun phrase, no concepts column of that name
            caption = first
        path = root / f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.NEAREST).save(path)
        table.append({"filepath": str(path), "title": caption, "concepts": json.dumps(concepts)})
    pd.DataFrame(table).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


def write_shards(root: Path) -> str:
    """Two webdataset shards of ``ROWS // 2`` samples, concepts under the json key ``concepts``."""
    from tar_fixtures import jpeg, write_tar

    root.mkdir(parents=True, exist_ok=True)
    for shard in range(2):
        members = []
        for j in range(ROWS // 2):
            i = shard * ROWS // 2 + j
            first, second = f"a {COLOURS[i % 8]} {THINGS[i % 8]}", f"a {COLOURS[(i + 3) % 8]} {THINGS[(i + 5) % 8]}"
            members += [(f"{i:04d}.jpg", jpeg(i)), (f"{i:04d}.txt", f"{first} next to {second}".encode()),
                        (f"{i:04d}.json", json.dumps({"concepts": [first, second]}).encode())]
        write_tar(root / f"{shard:05d}.tar", members)
    return str(root / "{00000..00001}.tar")


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.pop("OPEN_CLIP_C2LIP_DISABLE", None)
    return env


class Run:
    """A finished training run: exit status, its out.log and console output, its checkpoints."""

    def __init__(self, logs: Path, name: str, result: subprocess.CompletedProcess):
        self.returncode = result.returncode
        self.output = result.stdout + result.stderr
        log = logs / name / "out.log"
        self.log = log.read_text() if log.is_file() else ""
        folder = logs / name / "checkpoints"
        self.checkpoints = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def lines(self, level: str, text: str):
        return [line for line in self.log.splitlines() if f"| {level} |" in line and text in line]


def train(tmp_path: Path, name: str, data, *extra, epochs: int = 2) -> Run:
    logs = tmp_path / "logs"
    if str(data).endswith(".csv"):
        source = ["--dataset-type", "csv", "--csv-separator", ",", "--csv-img-key", "filepath",
                  "--csv-caption-key", "title"]
    else:
        source = ["--dataset-type", "webdataset", "--train-num-samples", str(ROWS)]
    command = [sys.executable, "-m", "open_clip_c2lip.train", "--logs", str(logs), "--name", name,
               "--model", "C2LIP-Tiny", "--c2lip-loss", "--device", "cpu", "--seed", "0", "--report-to", "none",
               "--warmup", "0", "--lr", "1e-3", "--save-frequency", "1", "--train-data", str(data), *source,
               "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--epochs", str(epochs), *extra]
    result = subprocess.run(command, env=child_env(), cwd=tmp_path, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT)
    return Run(logs, name, result)


def assert_stopped(run: Run, *phrases: str, steps: int = FIRST_REPORT_STEPS, samples: int = 4 * FIRST_REPORT_STEPS):
    assert run.returncode != 0, run.output[-3000:]
    assert run.checkpoints == [], run.checkpoints  # no epoch of a plain SigLIP model saved
    errors = run.lines("ERROR", "C2LIP: no usable concept")
    assert len(errors) == 1, run.log[-3000:]
    error = errors[0]
    assert f"in the first {steps} steps" in error and f"none of their {samples} samples" in error, error
    assert "Likely cause:" in error and "What to do:" in error
    for phrase in phrases:
        assert phrase in error, (phrase, error)
    assert "NoUsableConceptsError" in run.output
    assert "Train Epoch: 1" not in run.log  # stopped in the first epoch


@pytest.mark.slow
@pytest.mark.parametrize("kind,extra,phrases", [
    ("absent", ["--c2lip-concept-mode", "span"], ["80 of the 80 concepts packed were not (data counter spans_not_found)",
                                                   "--c2lip-concept-mode text"]),
    ("blank", [], ["blank_concepts", "whole_caption_fallback", "40 were their whole caption (whole_caption_concepts)"]),
    ("empty", [], ["40 captions came with empty concept lists", "whole_caption_fallback"]),
    ("truncated", ["--c2lip-concept-mode", "span"], ["lie past the caption's truncation", "spans_past_truncation"]),
    ("no_text", [], ["40 captions have no text", "captions_without_text", "40 of the 40 had no concept at all"]),
    ("shared", ["--c2lip-duplicate-concepts", "ignore"], ["--c2lip-duplicate-concepts ignore",
                                                         "40 had no negative image in the batch (concepts_without_negative)"]),
    ("phrases", ["--c2lip-concepts-key", "nps"], ["the concepts are the captions themselves",
                                                 "no concepts under --c2lip-concepts-key 'nps'", "extracted_on_the_fly"]),
])
def test_each_cause_stops_the_run_after_its_first_steps(tmp_path, kind, extra, phrases):
    run = train(tmp_path, kind, write_csv(tmp_path / "data", kind), *extra)
    assert_stopped(run, *phrases)


@pytest.mark.slow
def test_short_first_epoch_without_usable_concept_stops_before_its_checkpoint(tmp_path):
    run = train(tmp_path, "short", write_csv(tmp_path / "data", "absent", rows=8), "--c2lip-concept-mode", "span")
    assert_stopped(run, "spans_not_found", steps=2, samples=8)
    assert "in the first 2 steps (all of epoch 0)" in run.lines("ERROR", "C2LIP")[0]


@pytest.mark.slow
def test_accumulation_counts_each_sample_once(tmp_path):
    run = train(tmp_path, "accum", write_csv(tmp_path / "data", "absent", rows=2 * ROWS), "--c2lip-concept-mode", "span",
                "--accum-freq", "2")
    assert_stopped(run, "spans_not_found", samples=2 * 4 * FIRST_REPORT_STEPS)


@pytest.mark.slow
def test_past_the_threshold_warns_in_the_first_report_and_every_epoch(tmp_path):
    """3 of 4 captions with concepts that are not in them, span mode: the run trains on, warned."""
    run = train(tmp_path, "mostly", write_csv(tmp_path / "data", "mostly_absent"), "--c2lip-concept-mode", "span")
    assert run.returncode == 0, run.output[-3000:]
    assert run.checkpoints == ["epoch_1.pt", "epoch_2.pt"]
    warnings = run.lines("WARNING", "had no usable concept, more than the 50% threshold")
    assert [re.search(r"in (the first \d+ steps|epoch \d)", w).group(1) for w in warnings] == [
        f"the first {FIRST_REPORT_STEPS} steps", "epoch 0", "epoch 1"]
    for warning in warnings:
        assert "spans_not_found" in warning and "--c2lip-concept-mode text" in warning
    # 12 of the 48 captions have usable concepts in each epoch
    assert len(run.lines("INFO", "C2LIP concept usage, epoch 0: 12 of 48 samples (25.0 %) had a usable concept")) == 1
    # the first report comes before the epoch's last steps, not only at its end
    lines = run.log.splitlines()
    first = next(i for i, line in enumerate(lines) if "in the first 10 steps" in line)
    last_step = next(i for i, line in enumerate(lines) if "Train Epoch: 0 [48/48" in line)
    assert first < last_step


@pytest.mark.slow
def test_healthy_run_warns_nothing_and_logs_the_share(tmp_path):
    run = train(tmp_path, "healthy", write_csv(tmp_path / "data", "ok"), "--c2lip-concept-mode", "span")
    assert run.returncode == 0, run.output[-3000:]
    assert run.checkpoints == ["epoch_1.pt", "epoch_2.pt"]
    assert "| WARNING | C2LIP" not in run.log and "| ERROR |" not in run.log
    assert len(run.lines("INFO", "C2LIP concept usage, the first 10 steps: 40 of 40 samples (100.0 %)")) == 1
    for epoch in (0, 1):
        assert len(run.lines("INFO", f"C2LIP concept usage, epoch {epoch}: 48 of 48 samples (100.0 %) had a usable "
                                     f"concept; 96 of 96 concepts usable (100.0 %)")) == 1


@pytest.mark.slow
def test_concepts_key_that_matches_nothing_is_named(tmp_path):
    """Webdataset with its concepts under ``concepts`` and ``--c2lip-concepts-key nps``: spaCy's concepts
    train (usable), and the first report and each epoch summary say that the key matched nothing."""
    run = train(tmp_path, "key", write_shards(tmp_path / "shards"), "--c2lip-concepts-key", "nps",
                "--workers", "1")
    assert run.returncode == 0, run.output[-3000:]
    warnings = run.lines("WARNING", "had no concepts under --c2lip-concepts-key 'nps' (nor 'nounphrases'")
    assert [re.search(r"packed (so far|in epoch \d)", w).group(1) for w in warnings] == [
        "so far", "in epoch 0", "in epoch 1"]
    assert "extracted_on_the_fly" in warnings[0]
    assert run.lines("WARNING", "had no usable concept") == []


@pytest.mark.slow
def test_two_ranks_stop_together(tmp_path):
    """torchrun, 2 CPU ranks (gloo), span mode, concepts not in their captions: every rank stops at
    the same step (no hang in a collective), with the count of the global batch."""
    table = write_csv(tmp_path / "data", "absent", rows=96)
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "open_clip_c2lip.train", "--", "--logs", str(logs), "--name", "ddp", "--model", "C2LIP-Tiny",
               "--c2lip-loss", "--c2lip-concept-mode", "span", "--device", "cpu", "--dist-backend", "gloo",
               "--seed", "0", "--report-to", "none", "--warmup", "0", "--save-frequency", "1",
               "--train-data", str(table), "--dataset-type", "csv", "--csv-separator", ",",
               "--csv-img-key", "filepath", "--csv-caption-key", "title", "--batch-size", "4", "--workers", "0",
               "--precision", "fp32", "--epochs", "2"]
    env = {k: v for k, v in child_env().items() if not k.startswith(("MASTER_", "RANK", "WORLD_SIZE"))}
    env["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    run = Run(logs, "ddp", result)
    assert_stopped(run, "spans_not_found", samples=2 * 4 * FIRST_REPORT_STEPS)
    assert run.output.count("NoUsableConceptsError: C2LIP: no usable concept") == 2  # both ranks
