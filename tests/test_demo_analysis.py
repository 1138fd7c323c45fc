"""open_clip_c2lip.demo.analysis and preregistration: world means over training seeds, paired
differences over worlds, the pre-registered families with Holm, and the docs' copy of the plan."""
from pathlib import Path

import numpy as np
import pytest

from open_clip_c2lip.demo import preregistration as prereg
from open_clip_c2lip.demo.analysis import complete_worlds, run_name, summarize
from open_clip_c2lip.demo.stats import holm, sign_flip_p

REPO = Path(__file__).resolve().parents[1]


def _run(variant, seed, metrics):
    return {"variant": variant, "train_seed": seed, "metrics": metrics,
            "curves": {"steps": [1, 2], "losses": {"contrastive_loss": [5.0, 4.0]}}}


def _worlds(values):
    """``values[world][variant] = [metric per training seed]`` for one metric, 'm'."""
    return {w: {"runs": {run_name(v, t): _run(v, t, {"m": x}) for v, per_seed in variants.items()
                         for t, x in enumerate(per_seed)}}
            for w, variants in values.items()}


def test_world_means_are_paired_over_worlds_and_the_seed_spread_is_apart():
    values = {0: {"siglip": [0.5, 0.6], "c2lip": [0.8, 0.6]},
              1: {"siglip": [0.4, 0.4], "c2lip": [0.5, 0.7]},
              2: {"siglip": [0.7, 0.5], "c2lip": [0.9, 0.9]},
              3: {"siglip": [0.1]}}  # unfinished: left out
    worlds = _worlds(values)
    summary = summarize(worlds, ["siglip", "c2lip"], [0, 1])
    assert summary["worlds"] == [0, 1, 2] == complete_worlds(worlds, ["siglip", "c2lip"], [0, 1])
    siglip = summary["per_variant"]["siglip"]["m"]
    assert siglip["world_means"] == pytest.approx([0.55, 0.4, 0.6])
    assert siglip["sd_worlds"] == pytest.approx(np.std([0.55, 0.4, 0.6], ddof=1))
    assert siglip["sd_within"] == pytest.approx(np.sqrt(np.mean([0.005, 0.0, 0.02])))
    diff = summary["comparisons"]["c2lip − siglip"]["m"]
    d = [0.7 - 0.55, 0.6 - 0.4, 0.9 - 0.6]
    assert diff["differences"] == pytest.approx(d)
    assert diff["p_sign"] == pytest.approx(sign_flip_p(d))
    # within a world: the per-seed differences (0.3, 0.0), (0.1, 0.3), (0.2, 0.4)
    assert diff["sd_within"] == pytest.approx(np.sqrt(np.mean([0.045, 0.02, 0.02])))
    assert "tests" not in summary  # not the pre-registered variants


def test_preregistered_families_and_holm():
    rng = np.random.default_rng(0)
    metrics = [prereg.PRIMARY_METRIC, *prereg.SECONDARY_METRICS, *prereg.DESCRIPTIVE_METRICS]
    worlds = {}
    for w in range(8):
        runs = {}
        for t in prereg.TRAIN_SEEDS:
            for index, v in enumerate(prereg.VARIANTS):
                runs[run_name(v, t)] = _run(v, t, {m: float(0.5 + 0.1 * index + rng.normal(0, 0.05)) for m in metrics})
        worlds[w] = {"runs": runs}
    summary = summarize(worlds, list(prereg.VARIANTS), list(prereg.TRAIN_SEEDS))
    tests = summary["tests"]
    assert [(r["metric"], r["comparison"]) for r in tests["primary"]] == [
        (prereg.PRIMARY_METRIC, "c2lip − siglip"), (prereg.PRIMARY_METRIC, "c2lip − siglip_concepts")]
    assert len(tests["secondary"]) == len(prereg.secondary_family()) == 1 + 3 * len(prereg.SECONDARY_METRICS)
    assert not {r["metric"] for r in tests["secondary"]} & set(prereg.DESCRIPTIVE_METRICS)
    raw = [r["result"]["p_sign"] for r in tests["primary"]]
    assert [r["p_holm"] for r in tests["primary"]] == pytest.approx(holm(raw))
    assert all(r["test"] == "p_sign" for r in tests["primary"])
    raw = [r["result"]["p_t"] for r in tests["secondary"]]
    assert [r["p_holm"] for r in tests["secondary"]] == pytest.approx(holm(raw))
    # c2lip is 0.1 above siglip in every world and seed: all 8 worlds positive, the sign-flip floor 2/2^8
    primary = tests["primary"][0]
    assert primary["result"]["positive"] == 8 and primary["result"]["p_sign"] == pytest.approx(2 / 256)
    assert primary["p_holm"] == pytest.approx(4 / 256) and primary["supported"] is True


def test_a_primary_comparison_without_evidence_is_not_supported():
    """c2lip is 0.1 above siglip in every world; against the control it is 0.05 above in 4 worlds and
    0.05 below in 4: sign-flip p 1, and Holm over the two primary p values (2/256, 1) gives (4/256, 1)."""
    metrics = [prereg.PRIMARY_METRIC]
    worlds = {}
    for w in range(8):
        value = {"siglip": 0.5, "c2lip": 0.6, "siglip_concepts": 0.55 if w % 2 else 0.65}
        worlds[w] = {"runs": {run_name(v, t): _run(v, t, {m: value[v] for m in metrics})
                              for v in prereg.VARIANTS for t in prereg.TRAIN_SEEDS}}
    primary = summarize(worlds, list(prereg.VARIANTS), list(prereg.TRAIN_SEEDS))["tests"]["primary"]
    against_siglip, against_control = primary
    assert against_siglip["p_holm"] == pytest.approx(4 / 256) and against_siglip["supported"] is True
    assert against_control["result"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert (against_control["result"]["positive"], against_control["result"]["negative"]) == (4, 4)
    assert against_control["result"]["p_sign"] == pytest.approx(1.0)
    assert against_control["p_holm"] == pytest.approx(1.0) and against_control["supported"] is False


def test_the_docs_hold_the_printed_preregistration():
    docs = (REPO / "docs" / "demo_study.md").read_text()
    assert prereg.text() in docs
    assert set(prereg.STUDY_WORLDS).isdisjoint(prereg.VALIDATION_WORLDS)
