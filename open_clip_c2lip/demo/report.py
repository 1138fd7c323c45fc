"""Demo outputs: the markdown comparison table, ``results.json`` and the PNG figure."""
import json
import math
from pathlib import Path
from typing import Any, List, Mapping, Sequence

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
    lines.append(f"| R@1 of a random ranking | | " + " | ".join(cells) + " |")
    cells = []
    for name in names:
        curve = runs[name]["curves"]["losses"].get("contrastive_loss", [])
        cells.append(f"{curve[0]:.2f} → {curve[-1]:.2f}" if curve else "—")
    lines.append("| contrastive loss (first → last log) | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(path, results: Mapping[str, Any]) -> None:
    """``results.json``, written to a temporary name and renamed so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False))
    tmp.replace(path)


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
