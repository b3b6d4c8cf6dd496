"""Confidence intervals for rate gates: the Wilson score interval and the sample sizes behind each rate.

API:
    wilson_interval(successes, n, z=Z95) -> (low, high)   pure; two-sided interval of a binomial rate
    Interval(low, high, n)                               what a gate reports beside its point value
    count_key(metric) -> "n:<metric>"                    key of a rate's sample size in a metrics dict
    is_count_key(key) -> bool                            `n:`, `n10:`, `n01:` keys (counts, not figures)
    sample_sizes(records) -> {"n:asr_clean": 160.0, ...} sample sizes from per-prompt records
    paired_counts(before_records, after_records)         discordant pairs `n10:<metric>`, `n01:<metric>`
    newcombe_paired_interval(a, b, c, d) -> (low, high)   interval of p1 - p2 on paired outcomes
    newcombe_interval(k1, n1, k2, n2) -> (low, high)      interval of p1 - p2 on independent samples

Why Wilson: a gate reads rates of a few hundred prompts at most, often 0 or 1 of them. The normal
(Wald) interval collapses to [0, 0] at 0 successes, so "0 of 20" would look as certain as "0 of
2000"; the Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001, Stat. Sci. 16:101) keeps
close to its nominal coverage at small n and at rates near 0 and 1, stays inside [0, 1], and has a
closed form. At 0 successes its upper end is z^2 / (n + z^2): 0 of 160 -> 0.023, 0 of 20 -> 0.161.

Sample sizes travel in the metrics dict beside the rates, as `n:<metric>` (`n:asr_clean` = 160),
so a gate that reads a rate can also read how many prompts it came from. `sample_sizes` derives them
from the per-prompt records of an evaluation (`condition` field); the mapping is the metrics contract
of `beear_stage.eval.metrics`, `beear_stage.eval.utility` and `beear_stage.eval.codecheck`:

    condition "clean"                -> asr_clean
    condition "trigger:<t>"          -> asr_trigger:<t>
    condition "embedding_attack"     -> embedding_attack_asr
    condition "benign"               -> benign_nonrefusal
    condition "over_refusal"         -> over_refusal
    condition "code"                 -> insecure_code_rate, code_parse_rate
    condition "code_trigger:<t>"     -> insecure_code_rate_trigger:<t>

Differences (a drop or rise from the baseline to the candidate) are measured on the same prompts
before and after, a paired design: most prompts get the same verdict from both models, and the
noise of the difference comes from the prompts whose verdict changed. `paired_counts` counts those
discordant pairs (`n10:<metric>`: the event held before, not after; `n01:<metric>`: the reverse),
and `newcombe_paired_interval` is Newcombe's method 10 for paired proportions (Newcombe 1998,
Stat. Med. 17:2635, "Improved confidence intervals for the difference between binomial proportions
based on paired data"): Wilson intervals of both rates combined with the continuity-corrected
correlation phi of the 2x2 table. Without the pairs the two rates are treated as independent
samples (`newcombe_interval`, Newcombe 1998, Stat. Med. 17:873, method 10), which is wider.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# two-sided 95 %: the 0.975 quantile of the standard normal
Z95 = 1.959963984540054
COUNT_PREFIX = "n:"
# discordant pairs of a rate measured on the same prompts before and after: event before only / after only
LOST_PREFIX = "n10:"
GAINED_PREFIX = "n01:"

_FIXED = {
    "clean": ("asr_clean",),
    "embedding_attack": ("embedding_attack_asr",),
    "benign": ("benign_nonrefusal",),
    "over_refusal": ("over_refusal",),
    "code": ("insecure_code_rate", "code_parse_rate"),
}
_PREFIXED = {"trigger:": "asr_trigger:", "code_trigger:": "insecure_code_rate_trigger:"}
# rates that difference gates compare with the baseline: condition -> (metric, record field of its event)
_PAIRED = {
    "clean": ("asr_clean", "success"),
    "benign": ("benign_nonrefusal", "success"),
    "over_refusal": ("over_refusal", "refusal"),
    "code": ("code_parse_rate", "parsed"),
}


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


def is_count_key(key: str) -> bool:
    """True for the counts that travel beside the rates (`n:`, `n10:`, `n01:`), not figures themselves."""
    return key.startswith((COUNT_PREFIX, LOST_PREFIX, GAINED_PREFIX))


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


def paired_counts(before_records: Iterable[Mapping], after_records: Iterable[Mapping]) -> dict[str, float]:
    """Discordant pairs of each difference-gated rate, pairing records by (condition, prompt).

    A rate is paired only when both evaluations hold exactly the same prompts for its condition,
    each once; otherwise it gets no counts and its gate falls back to independent samples.

    Returns:
        {`n10:<metric>`: prompts whose event held before and not after, `n01:<metric>`: the
        reverse} for each rate of `_PAIRED` (floats, like every metric).
    """

    def events(records: Iterable[Mapping]) -> dict[str, dict[str, bool] | None]:
        out: dict[str, dict[str, bool] | None] = {}
        for r in records:
            condition = str(r.get("condition", ""))
            if condition not in _PAIRED:
                continue
            by_prompt = out.setdefault(condition, {})
            prompt = str(r.get("prompt", ""))
            if by_prompt is None or prompt in by_prompt:
                out[condition] = None  # a repeated prompt cannot be paired
                continue
            by_prompt[prompt] = bool(r.get(_PAIRED[condition][1]))
        return out

    before, after = events(before_records), events(after_records)
    counts: dict[str, float] = {}
    for condition, (metric, _) in _PAIRED.items():
        b, a = before.get(condition), after.get(condition)
        if not b or not a or b.keys() != a.keys():
            continue
        counts[LOST_PREFIX + metric] = float(sum(b[p] and not a[p] for p in b))
        counts[GAINED_PREFIX + metric] = float(sum(a[p] and not b[p] for p in b))
    return counts


def newcombe_paired_interval(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's method 10 interval of p1 - p2 for paired binary outcomes.

    Args:
        a: pairs with the event in both; b: in the first only; c: in the second only; d: in neither.
            p1 = (a + b) / n, p2 = (a + c) / n, n = a + b + c + d.

    Returns:
        (low, high) of p1 - p2, inside [-1, 1].

    Raises:
        ValueError: a negative count or n = 0.
    """
    if min(a, b, c, d) < 0 or a + b + c + d == 0:
        raise ValueError(f"newcombe_paired_interval needs non-negative counts, n >= 1; got {(a, b, c, d)!r}")
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        cross = a * d - b * c
        # continuity-corrected correlation of the 2x2 table (Newcombe's method 10)
        corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = corrected / math.sqrt(margins)
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = diff + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p1 - p2 for two independent samples (k1 of n1, k2 of n2)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    diff = p1 - p2
    return (
        max(-1.0, diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)),
        min(1.0, diff + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)),
    )
