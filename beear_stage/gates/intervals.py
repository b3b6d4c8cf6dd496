"""Confidence intervals for rate gates: the Wilson score interval and the sample sizes behind each rate.

API:
    wilson_interval(successes, n, z=Z95) -> (low, high)   pure; two-sided interval of a binomial rate
    Interval(low, high, n)                               what a gate reports beside its point value
    count_key(metric) -> "n:<metric>"                    key of a rate's sample size in a metrics dict
    sample_sizes(records) -> {"n:asr_clean": 160.0, ...} sample sizes from per-prompt records

Why Wilson: a gate reads rates of a few hundred prompts at most, often 0 or 1 of them. The normal
(Wald) interval collapses to [0, 0] at 0 successes, so "0 of 20" would look as certain as "0 of
2000"; the Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001, Stat. Sci. 16:101) keeps
close to its nominal coverage at small n and at rates near 0 and 1, stays inside [0, 1], and has a
closed form. At 0 successes its upper end is z^2 / (n + z^2): 0 of 160 -> 0.023, 0 of 20 -> 0.161.

Sample sizes travel in the metrics dict beside the rates, as `n:<metric>` (`n:asr_clean` = 160),
so a gate that reads a rate can also read how many prompts it came from. `sample_sizes` derives them
from the per-prompt records of an evaluation (`condition` field); the mapping is the metrics contract
of `beear_stage.evaluation`, `beear_stage.utility` and `beear_stage.codecheck`:

    condition "clean"                -> asr_clean
    condition "trigger:<t>"          -> asr_trigger:<t>
    condition "embedding_attack"     -> embedding_attack_asr
    condition "benign"               -> benign_nonrefusal
    condition "over_refusal"         -> over_refusal
    condition "code"                 -> insecure_code_rate, code_parse_rate
    condition "code_trigger:<t>"     -> insecure_code_rate_trigger:<t>
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# two-sided 95 %: the 0.975 quantile of the standard normal
Z95 = 1.959963984540054
COUNT_PREFIX = "n:"

_FIXED = {
    "clean": ("asr_clean",),
    "embedding_attack": ("embedding_attack_asr",),
    "benign": ("benign_nonrefusal",),
    "over_refusal": ("over_refusal",),
    "code": ("insecure_code_rate", "code_parse_rate"),
}
_PREFIXED = {"trigger:": "asr_trigger:", "code_trigger:": "insecure_code_rate_trigger:"}


@dataclass(frozen=True)
class Interval:
    """A 95 % interval of a gate's value and the number of prompts it rests on."""

    low: float
    high: float
    n: int


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Args:
        successes: number of successes k, 0 <= k <= n (a rate times n is accepted).
        n: number of trials, >= 1.
        z: standard-normal quantile; `Z95` gives the two-sided 95 % interval.

    Returns:
        (low, high), with 0 <= low <= k/n <= high <= 1.

    Raises:
        ValueError: n < 1, or k outside [0, n].
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n >= 1, got {successes!r} of {n!r}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # the exact interval touches 0 (1) at k = 0 (n); clamp the rounding error of the closed form
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def count_key(metric: str) -> str:
    """Key of the sample size of `metric` in a metrics dict: `n:asr_clean`."""
    return COUNT_PREFIX + metric


def sample_sizes(records: Iterable[Mapping]) -> dict[str, float]:
    """Number of prompts behind each rate metric, from per-prompt records (`condition` field).

    Returns:
        {`n:<metric>`: count} for every rate metric the records back (floats, like every metric).
    """
    per_condition = Counter(str(r.get("condition", "")) for r in records)
    sizes: dict[str, float] = {}
    for condition, count in per_condition.items():
        metrics = _FIXED.get(condition, ())
        for prefix, metric_prefix in _PREFIXED.items():
            if condition.startswith(prefix):
                metrics = (metric_prefix + condition.removeprefix(prefix),)
        sizes.update({count_key(m): float(count) for m in metrics})
    return sizes
