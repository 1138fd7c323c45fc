"""Statistics of the demo study: paired differences over worlds, their intervals and tests, Holm.

The unit of replication is the world (its scenes, held-out pairs and evaluation sets); training
seeds are nested in worlds. A variant's value in a world is the mean over that world's training
seeds, and a comparison's per-world difference ``d_w`` pairs two variants trained on the same
world with the same training seeds. Over the ``n`` worlds:

- Student's t interval ``mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n)`` and the one-sample t test
  (``scipy.stats``);
- the exact sign-flip (paired permutation) test of ``mean(d)``: under the null every ``d_w`` is as
  likely to have the other sign; all ``2^n`` sign patterns are enumerated
  (``scipy.stats.permutation_test``), so its smallest two-sided p is ``2 / 2^n``;
- a percentile bootstrap interval of ``mean(d)`` (``scipy.stats.bootstrap``, fixed seed), which
  is too narrow for few worlds and is shown beside, not instead of, the t interval;
- Holm's step-down adjustment for a family of tests (:func:`holm`).

The spread of the training seeds within a world (pooled sd) is reported separately from the
spread of the world means.
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

try:
    from scipy import stats as _scipy_stats
except ImportError as _error:  # the study's statistics need it; the rest of the demo does not
    _scipy_stats = None
    _SCIPY_ERROR = _error

BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


def _scipy():
    if _scipy_stats is None:
        raise ImportError(f"the demo's statistics need scipy (pip install scipy): {_SCIPY_ERROR}")
    return _scipy_stats


def mean_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """``{"mean", "std", "n"}``; std is the sample standard deviation (n - 1), None for n < 2."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if n > 1 else None, "n": n}


def t_interval(values: Sequence[float], level: float = 0.95) -> Optional[tuple]:
    """Student's t interval of the mean of ``values``; None for fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    half = _scipy().t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def t_test_p(values: Sequence[float]) -> Optional[float]:
    """Two-sided p of the one-sample t test of mean 0; 1 when every value is 0, 0 when the values are
    one non-zero constant (no spread), None for fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    if np.all(values == values[0]):
        return 1.0 if values[0] == 0 else 0.0
    return float(_scipy().ttest_1samp(values, 0.0).pvalue)


# sign-flip statistics are computed on the differences in units of this (exact integers in float64),
# so sign patterns whose sums tie mathematically tie exactly (accuracies are multiples of 1/items)
SIGN_FLIP_QUANTUM = 1e-9


def sign_flip_p(values: Sequence[float]) -> Optional[float]:
    """Two-sided p of the exact sign-flip test of mean 0 (all ``2^n`` sign patterns); None for no
    values.

    The statistic is the sum of the differences rounded to multiples of ``SIGN_FLIP_QUANTUM``: on
    raw floats, ``0.6 - 0.55`` and ``0.6 - 0.65`` are not exact opposites, and the rounding noise
    would decide whether a tied sign pattern counts as "as extreme".
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return None
    units = np.rint(values / SIGN_FLIP_QUANTUM)
    if np.all(units == 0) or len(values) == 1:  # one value: both signs are as extreme
        return 1.0
    result = _scipy().permutation_test((units,), lambda x, axis: np.sum(x, axis=axis), permutation_type="samples",
                                       n_resamples=np.inf, alternative="two-sided", vectorized=True)
    return float(result.pvalue)


def bootstrap_interval(values: Sequence[float], level: float = 0.95) -> Optional[tuple]:
    """Percentile bootstrap interval of the mean (``BOOTSTRAP_RESAMPLES`` resamples, seed
    ``BOOTSTRAP_SEED``); None for fewer than 2 values, the point itself for constant values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = _scipy().bootstrap((values,), np.mean, confidence_level=level, n_resamples=BOOTSTRAP_RESAMPLES,
                                method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm(pvalues: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjusted p values, in input order (None entries are not tests and stay None).

    With the ``m`` p values sorted ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``
    (Holm 1979): rejecting ``adj <= alpha`` keeps the family-wise error rate at ``alpha``.
    """
    tested = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(tested)
    adjusted: List[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def paired_difference(treated: Sequence[float], control: Sequence[float], level: float = 0.95) -> Dict[str, object]:
    """Per-unit differences ``treated[w] - control[w]`` and every statistic of this module on them.

    Returns ``{"mean", "std", "n", "ci_low", "ci_high", "boot_low", "boot_high", "p_t", "p_sign",
    "positive", "negative", "differences"}``; intervals and p values are None where undefined
    (fewer than 2 units, or a missing value).
    """
    if len(treated) != len(control):
        raise ValueError(f"paired values need one per unit in both arms, got {len(treated)} and {len(control)}")
    empty = {"mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None, "boot_low": None,
             "boot_high": None, "p_t": None, "p_sign": None, "positive": None, "negative": None, "differences": []}
    if any(t is None or c is None for t, c in zip(treated, control)) or not treated:
        return dict(empty, n=sum(t is not None and c is not None for t, c in zip(treated, control)))
    differences = [float(t) - float(c) for t, c in zip(treated, control)]
    result = dict(empty, **mean_std(differences), differences=differences,
                  positive=sum(d > 0 for d in differences), negative=sum(d < 0 for d in differences))
    interval, boot = t_interval(differences, level), bootstrap_interval(differences, level)
    if interval is not None:
        result["ci_low"], result["ci_high"] = interval
        result["boot_low"], result["boot_high"] = boot
        result["p_t"] = t_test_p(differences)
    result["p_sign"] = sign_flip_p(differences)
    return result


def nested_spread(values: Mapping[object, Sequence[float]]) -> Dict[str, Optional[float]]:
    """Spread of a value measured in several worlds, each with several training seeds.

    ``values``: world -> one value per training seed. Returns ``{"mean"`` (of the world means),
    ``"sd_worlds"`` (sd of the world means), ``"sd_within"`` (pooled sd of the training seeds within
    a world: root mean of the per-world variances, worlds with >= 2 seeds), ``"var_world"`` (the
    between-world variance component, ``max(0, var(world means) - sd_within^2 / k)`` for ``k`` seeds
    per world: one-way random effects, method of moments), ``"worlds"``, ``"seeds_per_world"``}``.
    """
    means = [float(np.mean(v)) for v in values.values() if len(v)]
    within = [float(np.var(v, ddof=1)) for v in values.values() if len(v) > 1]
    seeds = [len(v) for v in values.values()]
    sd_worlds = float(np.std(means, ddof=1)) if len(means) > 1 else None
    sd_within = math.sqrt(float(np.mean(within))) if within else None
    var_world = None
    if sd_worlds is not None and sd_within is not None:
        var_world = max(0.0, sd_worlds ** 2 - sd_within ** 2 / float(np.mean(seeds)))
    return {"mean": float(np.mean(means)) if means else None, "sd_worlds": sd_worlds, "sd_within": sd_within,
            "var_world": var_world, "worlds": len(means), "seeds_per_world": seeds}
