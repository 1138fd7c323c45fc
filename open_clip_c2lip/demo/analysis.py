"""The study's analysis: world means over training seeds, paired differences over worlds, the
pre-registered tests (``preregistration.py``) and Holm families.

``worlds`` is the study's record: ``{world seed: {"runs": {run name: {"variant", "train_seed",
"metrics": {metric: value}}}}}``.
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import preregistration as prereg
from .stats import holm, nested_spread, paired_difference


def run_name(variant: str, train_seed: int) -> str:
    return f"{variant}_t{train_seed}"


def complete_worlds(worlds: Mapping[Any, Mapping[str, Any]], variants: Sequence[str],
                    train_seeds: Sequence[int]) -> List[Any]:
    """Worlds where every variant finished with every training seed."""
    return [w for w, record in worlds.items()
            if all(run_name(v, t) in record.get("runs", {}) for v in variants for t in train_seeds)]


def metric_names(worlds: Mapping[Any, Mapping[str, Any]]) -> List[str]:
    """Metrics of the finished runs, in first-seen order."""
    names: List[str] = []
    for record in worlds.values():
        for run in record.get("runs", {}).values():
            names += [name for name in run["metrics"] if name not in names]
    return names


def per_seed(worlds, complete, variant: str, metric: str, train_seeds) -> Optional[Dict[Any, List[float]]]:
    """``{world: [value per training seed]}``; None if a value is missing."""
    out = {}
    for w in complete:
        values = [worlds[w]["runs"][run_name(variant, t)]["metrics"].get(metric) for t in train_seeds]
        if any(v is None for v in values):
            return None
        out[w] = values
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def compare(worlds, complete, comparison: Tuple[str, str], metric: str, train_seeds) -> Optional[Dict[str, Any]]:
    """Paired difference ``comparison[0] - comparison[1]`` of the world means over ``complete``
    worlds (``stats.paired_difference``), plus ``sd_within``: the pooled sd over training seeds of the
    per-seed differences within a world."""
    treated = per_seed(worlds, complete, comparison[0], metric, train_seeds)
    control = per_seed(worlds, complete, comparison[1], metric, train_seeds)
    if treated is None or control is None:
        return None
    result = paired_difference([_mean(treated[w]) for w in complete], [_mean(control[w]) for w in complete])
    per_world = {w: [a - b for a, b in zip(treated[w], control[w])] for w in complete}
    result["sd_within"] = nested_spread(per_world)["sd_within"]
    result["worlds"] = list(complete)
    return result


def summarize(worlds: Mapping[Any, Mapping[str, Any]], variants: Sequence[str], train_seeds: Sequence[int],
              comparisons: Optional[Sequence[Tuple[str, str]]] = None) -> Dict[str, Any]:
    """Per variant and metric the nested spread (``stats.nested_spread``); per comparison and metric the
    paired difference over worlds; and, when the study has the pre-registered variants, the primary
    and secondary tests with Holm-adjusted p values."""
    complete = complete_worlds(worlds, variants, train_seeds)
    metrics = metric_names(worlds)
    if comparisons is None:
        comparisons = [c for c in prereg.COMPARISONS if set(c) <= set(variants)]
        if not comparisons and len(variants) > 1:
            comparisons = [(v, variants[0]) for v in variants[1:]]
    summary: Dict[str, Any] = {"worlds": complete, "train_seeds": list(train_seeds), "per_variant": {},
                               "comparisons": {}}
    for variant in variants:
        for metric in metrics:
            values = per_seed(worlds, complete, variant, metric, train_seeds)
            if values is not None and complete:
                spread = nested_spread(values)
                spread["world_means"] = [_mean(values[w]) for w in complete]
                summary["per_variant"].setdefault(variant, {})[metric] = spread
    for comparison in comparisons:
        name = prereg.comparison_name(comparison)
        for metric in metrics:
            result = compare(worlds, complete, comparison, metric, train_seeds)
            if result is not None:
                summary["comparisons"].setdefault(name, {})[metric] = result
    if set(prereg.VARIANTS) <= set(variants):
        summary["tests"] = preregistered_tests(summary)
    return summary


def preregistered_tests(summary: Mapping[str, Any]) -> Dict[str, Any]:
    """The pre-registered primary tests (sign-flip p, Holm over the primary comparisons) and secondary
    family (t p, Holm over the family; sign-flip p Holm-adjusted beside)."""
    def result(metric, comparison):
        return summary["comparisons"].get(prereg.comparison_name(comparison), {}).get(metric)

    primary = [(prereg.PRIMARY_METRIC, c) for c in prereg.PRIMARY_COMPARISONS]
    family = list(prereg.secondary_family())
    out: Dict[str, Any] = {"alpha": prereg.ALPHA, "primary": [], "secondary": []}
    for key, tests, p_key in (("primary", primary, "p_sign"), ("secondary", family, "p_t")):
        found = [result(m, c) for m, c in tests]
        adjusted = holm([r[p_key] if r else None for r in found])
        adjusted_sign = holm([r["p_sign"] if r else None for r in found])
        for (metric, comparison), r, p_adj, p_sign_adj in zip(tests, found, adjusted, adjusted_sign):
            row = {"metric": metric, "comparison": prereg.comparison_name(comparison), "test": p_key,
                   "p_holm": p_adj, "p_sign_holm": p_sign_adj, "result": r}
            row["supported"] = None if p_adj is None else bool(p_adj < prereg.ALPHA)
            out[key].append(row)
    return out
