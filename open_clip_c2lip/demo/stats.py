"""Seed statistics of the demo study: mean ± std per metric and the paired-difference t interval.

With one value per seed for two variants trained on the same seeds, the C2LIP - SigLIP effect is
estimated from the per-seed differences ``d_s`` (a paired design: both arms share each seed's world
and training seed): ``mean(d) ± t_{1-α/2, n-1} · std(d) / sqrt(n)`` (Student's t interval, e.g.
NIST/SEMATECH e-Handbook §1.3.5.2). The t quantile comes from
``scipy.stats.t`` when scipy is installed, else from :func:`t_quantile`'s own numerical inversion.
"""
import math
from typing import Dict, Optional, Sequence


def mean_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """``{"mean", "std", "n"}``; std is the sample standard deviation (n - 1), None for n < 2."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def _t_cdf(x: float, dof: int) -> float:
    """Student's t CDF via the regularized incomplete beta function (continued fraction, Numerical
    Recipes §6.4 form): ``P(T <= x) = 1 - I_{dof/(dof+x^2)}(dof/2, 1/2) / 2`` for x >= 0."""
    def betacf(a: float, b: float, z: float) -> float:
        qab, qap, qam = a + b, a + 1.0, a - 1.0
        c, d = 1.0, 1.0 - qab * z / qap
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        h = d
        for m in range(1, 300):
            m2 = 2 * m
            aa = m * (b - m) * z / ((qam + m2) * (a + m2))
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1.0 + aa / c
            c = c if abs(c) > 1e-300 else 1e-300
            h *= d * c
            aa = -(a + m) * (qab + m) * z / ((a + m2) * (qap + m2))
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1.0 + aa / c
            c = c if abs(c) > 1e-300 else 1e-300
            delta = d * c
            h *= delta
            if abs(delta - 1.0) < 1e-15:
                break
        return h

    def betainc(a: float, b: float, z: float) -> float:
        if z <= 0.0:
            return 0.0
        if z >= 1.0:
            return 1.0
        front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(z) + b * math.log(1 - z))
        if z < (a + 1) / (a + b + 2):
            return front * betacf(a, b, z) / a
        return 1.0 - front * betacf(b, a, 1 - z) / b

    tail = 0.5 * betainc(dof / 2.0, 0.5, dof / (dof + x * x))
    return 1.0 - tail if x >= 0 else tail


def t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom (scipy if present, else bisection on
    :func:`_t_cdf`)."""
    if not 0.0 < p < 1.0 or dof < 1:
        raise ValueError(f"need 0 < p < 1 and dof >= 1, got p={p}, dof={dof}")
    try:
        from scipy import stats
        return float(stats.t.ppf(p, dof))
    except ImportError:
        return _t_quantile_bisect(p, dof)


def _t_quantile_bisect(p: float, dof: int) -> float:
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paired_difference(treated: Sequence[float], control: Sequence[float], level: float = 0.95) -> Dict[str, Optional[float]]:
    """Mean of ``treated[s] - control[s]`` over seeds with its ``level`` t confidence interval.

    Returns ``{"mean", "std", "n", "ci_low", "ci_high", "significant"}``; ``significant`` is True when
    the interval excludes 0. With fewer than 2 seeds (or a missing value) the interval is None.
    """
    if len(treated) != len(control):
        raise ValueError(f"paired values need one per seed in both arms, got {len(treated)} and {len(control)}")
    pairs = [(t, c) for t, c in zip(treated, control) if t is not None and c is not None]
    if len(pairs) != len(treated):
        return {"mean": None, "std": None, "n": len(pairs), "ci_low": None, "ci_high": None, "significant": None}
    result = mean_std([t - c for t, c in pairs])
    result.update(ci_low=None, ci_high=None, significant=None)
    if result["n"] >= 2:
        half = t_quantile(0.5 + level / 2, result["n"] - 1) * result["std"] / math.sqrt(result["n"])
        result["ci_low"], result["ci_high"] = result["mean"] - half, result["mean"] + half
        result["significant"] = bool(result["ci_low"] > 0 or result["ci_high"] < 0)
    return result
