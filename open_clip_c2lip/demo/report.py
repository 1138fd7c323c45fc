"""Demo outputs: the markdown comparison table, ``results.json`` and the PNG figure."""
import json
import math
from typing import Any, List, Mapping, Optional, Sequence

from ..fileio.atomic import write_text

# Row label -> how to read it from one run's results.
_RETRIEVAL_ROWS = {
    "image→text R@1": "image_to_text_R@1",
    "text→image R@1": "text_to_image_R@1",
}


def _percent(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def comparison_table(runs: Mapping[str, Mapping[str, Any]], splits: Sequence[str]) -> str:
    """Markdown table: one row per SugarCrepe-style split and retrieval metric, one column per run.

    ``runs[name]`` holds ``sugarcrepe`` (``{split: {"acc", "n"}}``), ``retrieval`` and ``curves``.
    Values are percentages; ``n`` is the item count of the row.
    """
    names = list(runs)
    header = "| metric | n | " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 2)]
    first = runs[names[0]]
    for split in splits:
        n = first["sugarcrepe"][split]["n"]
        cells = [_percent(runs[name]["sugarcrepe"][split]["acc"]) for name in names]
        lines.append(f"| {split} acc | {n} | " + " | ".join(cells) + " |")
    for label, key in _RETRIEVAL_ROWS.items():
        cells = [_percent(runs[name]["retrieval"][key]) for name in names]
        lines.append(f"| {label} | {first['retrieval']['n']} | " + " | ".join(cells) + " |")
    cells = [_percent(runs[name]["retrieval"].get("chance_R@1")) for name in names]
    lines.append("| R@1 of a random ranking | | " + " | ".join(cells) + " |")
    cells = []
    for name in names:
        curve = runs[name]["curves"]["losses"].get("contrastive_loss", [])
        cells.append(f"{curve[0]:.2f} → {curve[-1]:.2f}" if curve else "—")
    lines.append("| contrastive loss (first → last log) | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(path, results: Mapping[str, Any]) -> None:
    """``results.json``, written to a temporary name and renamed so a reader never sees half a file."""
    write_text(str(path), json.dumps(results, indent=2, sort_keys=False))


def plot_results(path, runs: Mapping[str, Mapping[str, Any]], splits: Sequence[str], title: str = "") -> None:
    """PNG: training curves (contrastive and total loss per logged step) and per-split accuracy bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves_ax, bars_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, (name, run) in enumerate(runs.items()):
        colour = f"C{index}"
        curves = run["curves"]
        for key, style in (("contrastive_loss", "-"), ("loss", ":")):
            values = curves["losses"].get(key)
            if values and (key == "contrastive_loss" or "npc_loss" in curves["losses"]):
                curves_ax.plot(curves["steps"], values, style, color=colour, label=f"{name} {key}")
    curves_ax.set_xlabel("step")
    curves_ax.set_ylabel("training loss")
    curves_ax.set_title("training curves (open_clip_train log)")
    curves_ax.legend(fontsize=8)

    labels: List[str] = list(splits) + ["i→t R@1", "t→i R@1"]
    width = 0.8 / max(1, len(runs))
    for index, (name, run) in enumerate(runs.items()):
        values = [run["sugarcrepe"][split]["acc"] for split in splits]
        values += [run["retrieval"][key] for key in _RETRIEVAL_ROWS.values()]
        positions = [i + (index - (len(runs) - 1) / 2) * width for i in range(len(labels))]
        bars_ax.bar(positions, [100 * v for v in values], width, label=name, color=f"C{index}")
    # chance: 50 % for a caption-vs-negative pair; a random ranking's R@1 for retrieval
    bars_ax.hlines(50, -0.5, len(splits) - 0.5, colors="grey", linestyles="--", linewidth=1)
    bars_ax.text(len(splits) - 0.5, 51, "chance", color="grey", fontsize=7, ha="right")
    chance = next(iter(runs.values()))["retrieval"].get("chance_R@1")
    if chance is not None:
        bars_ax.hlines(100 * chance, len(splits) - 0.5, len(labels) - 0.5, colors="grey", linestyles="--",
                       linewidth=1)
        bars_ax.text(len(labels) - 0.5, 100 * chance + 1, "chance", color="grey", fontsize=7, ha="right")
    bars_ax.set_xticks(range(len(labels)))
    bars_ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    bars_ax.set_ylim(0, 100)
    bars_ax.set_ylabel("%")
    bars_ax.set_title("held-out world: accuracy / recall")
    bars_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# seed study (study.py): mean ± std per variant, paired difference to the baseline with its t interval

def is_shown(metric: str) -> bool:
    """Metrics of the study tables (the chance level of retrieval is reported once, not per variant)."""
    return not metric.endswith("chance_R@1")


def format_metric(metric: str, value: Optional[float], signed: bool = False) -> str:
    """Accuracies / recalls / top-1 hits in %, the attention ratio as a multiple of uniform."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    sign = "+" if signed else ""
    if metric.endswith("attn_ratio"):
        return f"{value:{sign}.2f}×"
    return f"{100 * value:{sign}.1f}"


def study_table(summary: Mapping[str, Any], variants: Sequence[str], metrics: Sequence[str]) -> str:
    """Markdown: one row per metric, one ``mean ± std`` column per variant (over the complete seeds)."""
    lines = ["| metric | " + " | ".join(variants) + " |", "|" + "---|" * (len(variants) + 1)]
    for metric in metrics:
        cells = []
        for variant in variants:
            stats = summary["per_variant"].get(variant, {}).get(metric)
            if not stats:
                cells.append("—")
            elif stats["std"] is None:
                cells.append(format_metric(metric, stats["mean"]))
            else:
                std = format_metric(metric, stats["std"]).rstrip("×")
                cells.append(f"{format_metric(metric, stats['mean'])} ± {std}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def difference_table(summary: Mapping[str, Any], variants: Sequence[str], metrics: Sequence[str],
                     baseline: str = "siglip") -> str:
    """Markdown: per metric and non-baseline variant, the mean paired difference to ``baseline`` (the
    one ``summary`` was aggregated against) and its 95 % t interval over seeds; **bold** where the
    interval excludes 0."""
    others = [v for v in variants if v in summary["vs_baseline"]]
    lines = ["| metric | " + " | ".join(f"{v} − {baseline}" for v in others) + " |",
             "|" + "---|" * (len(others) + 1)]
    for metric in metrics:
        cells = []
        for variant in others:
            diff = summary["vs_baseline"][variant].get(metric)
            if not diff or diff["mean"] is None:
                cells.append("—")
                continue
            text = format_metric(metric, diff["mean"], signed=True)
            if diff["ci_low"] is not None:
                text += (f" [{format_metric(metric, diff['ci_low'], signed=True)}, "
                         f"{format_metric(metric, diff['ci_high'], signed=True)}]")
                if diff["significant"]:
                    text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(seeds: Mapping[Any, Mapping[str, Any]], variants: Sequence[str], metrics: Sequence[str]) -> str:
    """Markdown: one row per (seed, variant) with every metric, for benchmarks/demo.md."""
    lines = ["| seed | variant | " + " | ".join(metrics) + " | last contrastive loss |",
             "|" + "---|" * (len(metrics) + 3)]
    for seed, record in seeds.items():
        for variant in variants:
            run = record["runs"].get(variant)
            if run is None:
                continue
            cells = [format_metric(m, run["metrics"].get(m)) for m in metrics]
            curve = run["curves"]["losses"].get("contrastive_loss", [])
            cells.append(f"{curve[-1]:.2f}" if curve else "—")
            lines.append(f"| {seed} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_study(path, seeds: Mapping[Any, Mapping[str, Any]], summary: Mapping[str, Any], variants: Sequence[str],
               metrics: Sequence[str], title: str = "") -> None:
    """PNG: training curves of every run (one colour per variant), per-metric means with ±std error
    bars, and the paired difference to the baseline with its 95 % t interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    percent = [m for m in metrics if not m.endswith("attn_ratio")]
    fig, (curves_ax, bars_ax, diff_ax) = plt.subplots(
        3, 1, figsize=(max(10, 0.75 * len(percent) + 3), 12), gridspec_kw={"height_ratios": [1, 1.2, 1.2]})
    for index, variant in enumerate(variants):
        for seed_index, record in enumerate(seeds.values()):
            run = record["runs"].get(variant)
            if run is None:
                continue
            values = run["curves"]["losses"].get("contrastive_loss")
            if values:
                curves_ax.plot(run["curves"]["steps"], values, color=f"C{index}", alpha=0.6, linewidth=1,
                               label=variant if seed_index == 0 else None)
    curves_ax.set_xlabel("step")
    curves_ax.set_ylabel("contrastive (SigLIP) loss")
    curves_ax.set_title("training curves, every seed (open_clip_train logs)", fontsize=9)
    curves_ax.legend(fontsize=7, ncol=3)

    width = 0.8 / max(1, len(variants))
    for index, variant in enumerate(variants):
        stats = summary["per_variant"].get(variant, {})
        means = [100 * stats[m]["mean"] if m in stats else float("nan") for m in percent]
        errors = [100 * (stats[m]["std"] or 0.0) if m in stats else 0.0 for m in percent]
        positions = [i + (index - (len(variants) - 1) / 2) * width for i in range(len(percent))]
        bars_ax.bar(positions, means, width, yerr=errors, capsize=2, label=variant, color=f"C{index}")
    bars_ax.axhline(50, color="grey", linestyle="--", linewidth=0.8)
    bars_ax.set_xticks(range(len(percent)))
    bars_ax.set_xticklabels(percent, rotation=35, ha="right", fontsize=7)
    bars_ax.set_ylim(0, 105)
    bars_ax.set_ylabel("% (mean ± std over seeds)")
    bars_ax.set_title(f"held-out sets, seeds {summary['seeds']} (dashed: 50 %, chance of a pair choice)", fontsize=9)
    bars_ax.legend(fontsize=7, ncol=3)

    others = [v for v in variants if v in summary["vs_baseline"]]
    width = 0.8 / max(1, len(others))
    for index, variant in enumerate(others):
        diffs = summary["vs_baseline"][variant]
        means, lows, highs = [], [], []
        for m in percent:
            d = diffs.get(m)
            mean = 100 * d["mean"] if d and d["mean"] is not None else float("nan")
            means.append(mean)
            lows.append(mean - 100 * d["ci_low"] if d and d["ci_low"] is not None else 0.0)
            highs.append(100 * d["ci_high"] - mean if d and d["ci_high"] is not None else 0.0)
        positions = [i + (index - (len(others) - 1) / 2) * width for i in range(len(percent))]
        diff_ax.bar(positions, means, width, yerr=[lows, highs], capsize=2, label=variant,
                    color=f"C{variants.index(variant)}")
    diff_ax.axhline(0, color="black", linewidth=0.8)
    low, high = diff_ax.get_ylim()  # intervals of 2 seeds can be huge: keep the axis in points
    diff_ax.set_ylim(max(low, -100), min(high, 100))
    diff_ax.set_xticks(range(len(percent)))
    diff_ax.set_xticklabels(percent, rotation=35, ha="right", fontsize=7)
    diff_ax.set_ylabel("variant − siglip, points")
    diff_ax.set_title("paired difference to the baseline, mean and 95 % t interval over seeds", fontsize=9)
    diff_ax.legend(fontsize=7, ncol=3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def text_only_table(seeds: Mapping[Any, Mapping[str, Any]]) -> str:
    """Markdown: image-blind caption scorers (``evalsets.text_only_accuracy``), mean over seeds, in %."""
    rows = {}
    for record in seeds.values():
        for set_name, splits in record.get("text_only", {}).items():
            for split, values in splits.items():
                rows.setdefault(f"{set_name}/{split}", []).append(values)
    lines = ["| split | count prior | phrase-frequency prior |", "|---|---|---|"]
    for name, values in rows.items():
        cells = []
        for key in ("count", "phrases"):
            present = [v[key] for v in values if v[key] is not None]
            cells.append(f"{100 * sum(present) / len(present):.1f}" if present else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
