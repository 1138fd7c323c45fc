"""The demo study's pre-registered analysis: endpoint, comparisons, tests and families, as data.

Written (and committed with docs/demo_study.md) before the study's worlds were trained or looked at;
``text()`` is printed by the study before it trains and copied verbatim into docs/demo_study.md
(a test keeps the two equal). The analysis in ``analysis.py`` reads these constants.
"""
from typing import Tuple

VARIANTS = ("siglip", "c2lip", "siglip_concepts")
# world seeds of the study (never used for any choice) and training seeds per world
STUDY_WORLDS = tuple(range(200, 208))
TRAIN_SEEDS = (0, 1)
# validation worlds: every setting of the demo is chosen on these, never on STUDY_WORLDS
VALIDATION_WORLDS = (300, 301)
# cli.PRESETS["default"], in words (cli.is_preregistered checks the command uses it)
BUDGET = "900 steps × batch 64, lr 1e-3, 4,096 training and 400 held-out images per set and world"

PRIMARY_METRIC = "unseen_pairs/swap_att"
PRIMARY_COMPARISONS: Tuple[Tuple[str, str], ...] = (("c2lip", "siglip"), ("c2lip", "siglip_concepts"))
COMPARISONS = PRIMARY_COMPARISONS + (("siglip_concepts", "siglip"),)
ALPHA = 0.05

SECONDARY_METRICS = (
    "unseen_pairs/novel_half",
    "unseen_pairs/phrase_probe",
    "unseen_pairs/familiarity_bias",
    "unseen_pairs/replace_att",
    "unseen_pairs/replace_obj",
    "unseen_pairs/i2t_R@1",
    "unseen_pairs/t2i_R@1",
    "unseen_pairs/attn_top1",
    "seen_pairs/swap_att",
    "seen_pairs/replace_att",
    "seen_pairs/replace_obj",
    "seen_pairs/i2t_R@1",
    "seen_pairs/t2i_R@1",
)
# reported, never tested: add_obj is decided by length by construction; the probe halves each by
# the familiarity rule (their difference is the tested familiarity_bias); attn_ratio is a scale
DESCRIPTIVE_METRICS = (
    "seen_pairs/add_obj",
    "unseen_pairs/add_obj",
    "unseen_pairs/probe_novel_true",
    "unseen_pairs/probe_familiar_true",
    "unseen_pairs/attn_ratio",
)


def comparison_name(comparison: Tuple[str, str]) -> str:
    return f"{comparison[0]} − {comparison[1]}"


def secondary_family() -> Tuple[Tuple[str, Tuple[str, str]], ...]:
    """(metric, comparison) of every secondary test: each secondary metric under each comparison, and
    the primary metric under the comparisons that are not primary."""
    family = [(PRIMARY_METRIC, c) for c in COMPARISONS if c not in PRIMARY_COMPARISONS]
    family += [(metric, c) for metric in SECONDARY_METRICS for c in COMPARISONS]
    return tuple(family)


def text() -> str:
    """The pre-registration as printed before training (markdown)."""
    primary = "; ".join(f"`{comparison_name(c)}`" for c in PRIMARY_COMPARISONS)
    return "\n".join([
        "**Pre-registered analysis of the demo study**",
        "",
        f"- Design: worlds {STUDY_WORLDS[0]}–{STUDY_WORLDS[-1]} ({len(STUDY_WORLDS)} world seeds, never used to choose "
        f"anything) × training seeds {', '.join(map(str, TRAIN_SEEDS))} × variants {', '.join(VARIANTS)}; every "
        f"variant of a world and training seed trains on the same shards in the same order; the demo's default "
        f"budget ({BUDGET}). Settings chosen on validation worlds only ({', '.join(map(str, VALIDATION_WORLDS))} "
        f"for this world).",
        f"- Primary endpoint: `{PRIMARY_METRIC}`, binding of never-seen pairs (an image with two held-out "
        f"colour–shape pairs; the negative swaps their colours into the two other held-out pairs of the block; "
        f"every image-blind rule scores 50 %).",
        f"- Primary comparisons: {primary}. Unit: the world. A variant's value in a world is the mean over its "
        f"training seeds; the per-world differences are tested with the exact two-sided sign-flip test "
        f"(all 2^{len(STUDY_WORLDS)} sign patterns), Holm-adjusted over the {len(PRIMARY_COMPARISONS)} primary "
        f"comparisons at α = {ALPHA}. A comparison supports a difference iff its adjusted p < {ALPHA}; its "
        f"size is the mean difference with its 95 % t interval. A non-significant result is not read as "
        f"'no difference'.",
        f"- Secondary: {len(secondary_family())} tests, every metric of "
        f"{', '.join('`' + m + '`' for m in SECONDARY_METRICS)} under {', '.join(map(comparison_name, COMPARISONS))}, "
        f"and the primary metric under the non-primary comparison; paired t test on the world means, "
        "Holm-adjusted over this family (the sign-flip p values are shown beside them, also Holm-adjusted).",
        "- Reported with every difference: mean, 95 % t interval, 95 % percentile bootstrap interval, "
        "worlds with a positive / negative difference, the spread of the world means and the pooled "
        "spread of the training seeds within a world.",
        f"- Descriptive only (not tested): {', '.join('`' + m + '`' for m in DESCRIPTIVE_METRICS)}.",
        "- Every split's image-blind scores (length, object count, n-gram prior, phrase prior, familiarity "
        "rule) are reported; `add_obj` is decided by length by construction and is outside the tests.",
    ])
