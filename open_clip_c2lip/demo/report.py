"""Demo outputs: markdown tables of the study (``analysis.summarize``) and ``results.json``."""
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..fileio.atomic import write_text
from . import preregistration as prereg
from .analysis import run_name
from .blind import RULES

# a determinism caveat printed with every report
DETERMINISM = ("Same world seed and training seed give the same numbers only within one software and hardware "
               "environment (torch build, BLAS, CPU instruction set); elsewhere a seed's outcome can move as much "
               "as a new seed's, so conclusions rest on the spread over worlds, not on one seed's numbers.")


def write_results(path, results: Mapping[str, Any]) -> None:
    """``results.json``, written to a temporary name and renamed so a reader never sees half a file."""
    write_text(str(path), json.dumps(results, indent=2, sort_keys=False))


def is_shown(metric: str) -> bool:
    """Metrics of the study tables (the chance level of retrieval is reported once, not per variant)."""
    return not metric.endswith("chance_R@1")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_metric(metric: str, value: Optional[float], signed: bool = False) -> str:
    """Accuracies, recalls, top-1 hits and their differences in %, the attention ratio as a multiple
    of uniform."""
    if _missing(value):
        return "—"
    sign = "+" if signed else ""
    if metric.endswith("attn_ratio"):
        return f"{value:{sign}.2f}×"
    return f"{100 * value:{sign}.1f}"


def format_p(p: Optional[float]) -> str:
    if _missing(p):
        return "—"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _interval(metric: str, low, high) -> str:
    if _missing(low):
        return "—"
    return f"[{format_metric(metric, low, True)}, {format_metric(metric, high, True)}]"


def _spread(metric: str, stats: Optional[Mapping[str, Any]]) -> str:
    """``mean ± sd of the world means (sd within worlds)``."""
    if not stats or _missing(stats.get("mean")):
        return "—"
    text = format_metric(metric, stats["mean"])
    if not _missing(stats.get("sd_worlds")):
        text += f" ± {format_metric(metric, stats['sd_worlds']).rstrip('×')}"
    if not _missing(stats.get("sd_within")):
        text += f" ({format_metric(metric, stats['sd_within']).rstrip('×')})"
    return text


def variant_table(summary: Mapping[str, Any], variants: Sequence[str], metrics: Sequence[str]) -> str:
    """One row per metric: per variant the mean over worlds of the world means ± their sd, and in
    parentheses the pooled sd of the training seeds within a world."""
    lines = ["| metric | " + " | ".join(variants) + " |", "|" + "---|" * (len(variants) + 1)]
    for metric in metrics:
        cells = [_spread(metric, summary["per_variant"].get(v, {}).get(metric)) for v in variants]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _difference_cells(metric: str, r: Mapping[str, Any]) -> List[str]:
    worlds = f"{r['positive']} / {r['negative']} of {r['n']}" if r.get("positive") is not None else "—"
    within = format_metric(metric, r.get("sd_within")).rstrip("×")
    return [format_metric(metric, r["mean"], True), _interval(metric, r["ci_low"], r["ci_high"]),
            _interval(metric, r["boot_low"], r["boot_high"]), worlds, within]


def tests_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The pre-registered tests (``analysis.preregistered_tests`` rows): difference, intervals, the
    test's raw and Holm-adjusted p, the sign-flip p Holm-adjusted, and whether it is supported."""
    lines = ["| metric | comparison | mean difference | 95 % t interval | 95 % bootstrap | worlds + / − | "
             "sd within worlds | p | p (Holm) | sign-flip p (Holm) | supported at α = 0.05 |",
             "|" + "---|" * 11]
    for row in rows:
        r = row["result"]
        if not r or r["mean"] is None:
            lines.append(f"| {row['metric']} | {row['comparison']} |" + " — |" * 9)
            continue
        supported = "—" if row["supported"] is None else ("**yes**" if row["supported"] else "no")
        lines.append(f"| {row['metric']} | {row['comparison']} | " + " | ".join(_difference_cells(row["metric"], r))
                     + f" | {format_p(r[row['test']])} | {format_p(row['p_holm'])} | "
                     f"{format_p(row['p_sign_holm'])} | {supported} |")
    return "\n".join(lines)


def comparison_table(summary: Mapping[str, Any], metrics: Sequence[str]) -> str:
    """Every comparison and metric, unadjusted (descriptive): difference, intervals, raw t and
    sign-flip p."""
    lines = ["| metric | comparison | mean difference | 95 % t interval | 95 % bootstrap | worlds + / − | "
             "sd within worlds | t p | sign-flip p |", "|" + "---|" * 9]
    for metric in metrics:
        for name, per_metric in summary["comparisons"].items():
            r = per_metric.get(metric)
            if not r or r["mean"] is None:
                continue
            lines.append(f"| {metric} | {name} | " + " | ".join(_difference_cells(metric, r))
                         + f" | {format_p(r['p_t'])} | {format_p(r['p_sign'])} |")
    return "\n".join(lines)


def blind_table(worlds: Mapping[Any, Mapping[str, Any]]) -> str:
    """Image-blind rules (``blind.py``) on every split, mean over worlds (min–max), in %."""
    rows: Dict[str, List[Mapping[str, float]]] = {}
    for record in worlds.values():
        for set_name, splits in record.get("blind", {}).items():
            for split, values in splits.items():
                rows.setdefault(f"{set_name}/{split}", []).append(values)
    lines = ["| split | items (mean) | " + " | ".join(RULES) + " |", "|" + "---|" * (len(RULES) + 2)]
    for name, values in rows.items():
        cells = [f"{sum(v['n'] for v in values) / len(values):.0f}"]
        for rule in RULES:
            present = [v[rule] for v in values if v.get(rule) is not None]
            if not present:
                cells.append("—")
                continue
            mean = 100 * sum(present) / len(present)
            low, high = 100 * min(present), 100 * max(present)
            cells.append(f"{mean:.1f}" if high - low < 0.05 else f"{mean:.1f} ({low:.0f}–{high:.0f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(worlds: Mapping[Any, Mapping[str, Any]], variants: Sequence[str], train_seeds: Sequence[int],
              metrics: Sequence[str]) -> str:
    """One row per finished run (world, training seed, variant) with every metric."""
    lines = ["| world | train seed | variant | " + " | ".join(metrics) + " | last contrastive loss | train s |",
             "|" + "---|" * (len(metrics) + 5)]
    for world, record in worlds.items():
        for seed in train_seeds:
            for variant in variants:
                run = record.get("runs", {}).get(run_name(variant, seed))
                if run is None:
                    continue
                cells = [format_metric(m, run["metrics"].get(m)) for m in metrics]
                curve = run["curves"]["losses"].get("contrastive_loss", [])
                cells.append(f"{curve[-1]:.2f}" if curve else "—")
                cells.append(f"{run['train_s']:.0f}" if run.get("train_s") is not None else "—")
                lines.append(f"| {world} | {seed} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ordered_metrics(metrics: Sequence[str]) -> List[str]:
    """The pre-registered metrics first (primary, secondary, descriptive), then the rest."""
    first = [prereg.PRIMARY_METRIC, *prereg.SECONDARY_METRICS, *prereg.DESCRIPTIVE_METRICS]
    return [m for m in first if m in metrics] + [m for m in metrics if m not in first]
