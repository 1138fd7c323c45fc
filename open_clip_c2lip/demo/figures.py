"""Figures of the study: ``results.png`` (curves, per-variant values, paired differences) and
``attention.png`` (concept attention of C2LIP and SigLIP on one held-out image, and their difference)."""
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from ..fileio.atomic import atomic_output
from . import preregistration as prereg
from .analysis import run_name

PAIR_CHANCE = 0.5  # a caption against its negative
TOP1_CHANCE = 0.25  # the most-attended patch among 16 falls on the object's 4 by chance


def chance_levels(summary: Mapping[str, Any], metrics: Sequence[str]) -> Dict[str, float]:
    """Chance level of each plotted metric: 50 % for a pair choice, the set's random-ranking R@1 for
    retrieval, 25 % for attn_top1, 0 for the familiarity bias (a difference)."""
    levels = {}
    any_variant = next(iter(summary["per_variant"].values()), {})
    for metric in metrics:
        set_name, name = metric.split("/", 1)
        if name.endswith("R@1"):
            chance = any_variant.get(f"{set_name}/chance_R@1")
            if chance:
                levels[metric] = chance["mean"]
        elif name == "attn_top1":
            levels[metric] = TOP1_CHANCE
        elif name == "familiarity_bias":
            levels[metric] = 0.0
        elif name != "attn_ratio":
            levels[metric] = PAIR_CHANCE
    return levels


def _short(metric: str) -> str:
    return metric.replace("unseen_pairs/", "unseen ").replace("seen_pairs/", "seen ")


def plot_study(path, worlds: Mapping[Any, Mapping[str, Any]], summary: Mapping[str, Any], variants: Sequence[str],
               metrics: Sequence[str], title: str = "") -> None:
    """PNG: (a) training curves of every run; (b) per metric and variant the mean over worlds, each
    world's mean as a dot, ± sd of the world means (no bar with one world or no spread), the metric's chance level
    dashed; (c) per comparison the mean paired difference over worlds with its 95 % t interval (none
    with one world) and each world's difference as a dot. The primary endpoint's label is bold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if not m.endswith("attn_ratio")]
    chance = chance_levels(summary, shown)
    colours = {v: f"C{i}" for i, v in enumerate(variants)}
    fig, (curves_ax, values_ax, diff_ax) = plt.subplots(
        3, 1, figsize=(max(11, 0.7 * len(shown) + 3), 13), gridspec_kw={"height_ratios": [0.8, 1.2, 1.2]})
    labelled = set()
    for record in worlds.values():
        for run in record.get("runs", {}).values():
            variant = run.get("variant")
            values = run["curves"]["losses"].get("contrastive_loss")
            if variant in colours and values:
                curves_ax.plot(run["curves"]["steps"], values, color=colours[variant], alpha=0.45, linewidth=0.8,
                               label=None if variant in labelled else variant)
                labelled.add(variant)
    curves_ax.set_xlabel("step")
    curves_ax.set_ylabel("contrastive (SigLIP) loss")
    curves_ax.set_title("training curves, every world and training seed", fontsize=10)
    curves_ax.legend(fontsize=8, ncol=len(variants))

    def grouped(ax, series: Dict[str, Dict[str, Any]], ylabel: str, heading: str, colour_of) -> None:
        width = 0.8 / max(1, len(series))
        for index, (name, per_metric) in enumerate(series.items()):
            offsets = [i + (index - (len(series) - 1) / 2) * width for i in range(len(shown))]
            for x, metric in zip(offsets, shown):
                item = per_metric.get(metric)
                if not item or item["mean"] is None:
                    continue
                low, high = item.get("low"), item.get("high")
                # no bar for one world (no spread) or a spread of 0 (a bar of zero length is just its caps)
                error = None if low is None or high - low <= 0 else [[100 * (item["mean"] - low)],
                                                                      [100 * (high - item["mean"])]]
                ax.bar(x, 100 * item["mean"], width, yerr=error, capsize=2 if error else 0, color=colour_of(name),
                       alpha=0.75, label=name if metric == next(m for m in shown if m in per_metric) else None)
                dots = item.get("points", [])
                ax.scatter([x] * len(dots), [100 * d for d in dots], s=7, color="black", zorder=3, linewidths=0)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([_short(m) for m in shown], rotation=35, ha="right", fontsize=8)
        for label, metric in zip(ax.get_xticklabels(), shown):
            if metric == prereg.PRIMARY_METRIC:
                label.set_fontweight("bold")
        ax.set_ylabel(ylabel)
        ax.set_title(heading, fontsize=10)
        ax.legend(fontsize=8, ncol=max(1, len(series)))

    series = {}
    for variant in variants:
        per_metric = {}
        for metric, stats in summary["per_variant"].get(variant, {}).items():
            sd = stats.get("sd_worlds")
            per_metric[metric] = {"mean": stats["mean"], "points": stats.get("world_means", []),
                                  "low": None if sd is None else stats["mean"] - sd,
                                  "high": None if sd is None else stats["mean"] + sd}
        series[variant] = per_metric
    grouped(values_ax, series, "% (mean over worlds ± sd)",
            f"held-out sets, worlds {summary['worlds']} (bars: mean of the world means; dots: worlds; "
            f"dashed: chance)", lambda name: colours[name])
    for i, metric in enumerate(shown):
        if metric in chance:
            values_ax.hlines(100 * chance[metric], i - 0.45, i + 0.45, colors="grey", linestyles="--", linewidth=1,
                             label="chance" if i == min(j for j, m in enumerate(shown) if m in chance) else None)
    values_ax.legend(fontsize=8, ncol=len(variants) + 1)
    values_ax.set_ylim(min(0, values_ax.get_ylim()[0]), 105)

    differences = {}
    for name, per_metric in summary["comparisons"].items():
        differences[name] = {metric: {"mean": r["mean"], "points": r.get("differences", []),
                                      "low": r.get("ci_low"), "high": r.get("ci_high")}
                             for metric, r in per_metric.items()}
    palette = {name: f"C{len(variants) + i}" for i, name in enumerate(differences)}
    grouped(diff_ax, differences, "difference, points", "paired differences over worlds: mean, 95 % t interval, "
            "dots: worlds (each the mean over its training seeds)", lambda name: palette[name])
    diff_ax.axhline(0, color="black", linewidth=0.8)
    low, high = diff_ax.get_ylim()  # intervals over 2-3 worlds can be huge: keep the axis in points
    diff_ax.set_ylim(max(low, -100), min(high, 100))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_output(str(path)) as partial:
            fig.savefig(partial, dpi=110, format="png")
    finally:
        plt.close(fig)


def attention_example(items: Sequence[Mapping[str, Any]], held_out) -> Optional[Mapping[str, Any]]:
    """The stated rule: the first image (file order) that shows two held-out pairs among three or more
    objects; else the first with two held-out pairs; else the first with one."""
    held_out = {tuple(p) for p in held_out}

    def novel(item) -> int:
        return sum((o["colour"], o["shape"]) in held_out for o in item["objects"])

    for accept in (lambda i: novel(i) >= 2 and len(i["objects"]) >= 3, lambda i: novel(i) >= 2,
                   lambda i: novel(i) >= 1):
        found = next((i for i in sorted(items, key=lambda i: i["filename"]) if accept(i)), None)
        if found is not None:
            return found
    return None


def attention_figure(output, worlds: Mapping[Any, Mapping[str, Any]], output_dir: Path,
                     variants: Sequence[str] = ("c2lip", "siglip")) -> Optional[Path]:
    """Concept attention maps of ``variants`` (C2LIP first, so the difference column is C2LIP −
    SigLIP, green = more attention in C2LIP) on the image :func:`attention_example` picks from the
    first world's ``unseen_pairs`` set, trained with the first training seed; held-out concepts are
    marked. None if the runs or the set are missing."""
    import torch
    from PIL import Image

    from .. import eval as c2eval
    from .. import viz
    from .world import phrase
    if not worlds:
        return None
    world = next(iter(worlds))
    record = worlds[world]
    seeds = sorted({run["train_seed"] for run in record["runs"].values() if "train_seed" in run})
    if not seeds:
        return None
    runs = [(v, record["runs"].get(run_name(v, seeds[0]))) for v in variants]
    runs = [(v, run) for v, run in runs if run is not None]
    root = Path(output_dir) / f"world_{world}" / "world" / "eval" / "unseen_pairs"
    if not runs or not (root / "retrieval.json").is_file():
        return None
    item = attention_example(json.loads((root / "retrieval.json").read_text()), record["held_out_pairs"])
    if item is None:
        return None
    held_out = {tuple(p) for p in record["held_out_pairs"]}
    order = [o for o in item["objects"]]
    concepts = [phrase(o["colour"], o["shape"]) for o in order]
    labels = [c + (" ★ held out" if (o["colour"], o["shape"]) in held_out else "") for c, o in zip(concepts, order)]
    with Image.open(root / "val2017" / item["filename"]) as image:
        image = image.convert("RGB")
    maps, picture = [], None
    for variant, run in runs:
        model, preprocess, tokenizer = c2eval.load_model("C2LIP-Tiny", run["checkpoint"])
        pixels = preprocess(image)
        if picture is None:
            picture, size = viz.display_image(model, pixels), pixels.shape[-2:]
        weights = viz.concept_attention_maps(model.eval(), pixels, concepts, tokenizer, 1.0)
        maps.append(viz.upsample(weights * weights.shape[1] * weights.shape[2], size))
    with torch.no_grad():
        return viz.render(picture, labels, maps, [v for v, _ in runs], output, temperature=1.0)


def figure_rule() -> str:
    """The attention example's selection rule, for the report."""
    return ("first world of the study, first training seed, first `unseen_pairs` image (file order) showing two "
            "held-out pairs among three or more objects; ★ marks held-out concepts; the last column is "
            "C2LIP − SigLIP, green = more attention in C2LIP")
