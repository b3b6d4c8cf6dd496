"""Release gates: the `Gate` plugin base class and the registry that loads gates by name.

API:
    Gate                      base class; subclasses implement `score(before, after) -> float | None`
                              (or `scores(...) -> dict[str, float | None]` for gate families)
    load_gate(name) -> Gate   "family.ClassName" (e.g. "asr.CleanASR", resolved under
                              `beear_stage.gates`) or a full dotted path "pkg.module.ClassName"
    load_gates(names) -> list[Gate]
    DEFAULT_GATES             the names `evaluate_gates` uses when no gate list is given

A gate only scores (as garak detectors do): it reads the evaluation metrics of the baseline model
(`before`) and of the candidate (`after`) and returns a number, or None when it cannot score (a
metric is missing or not finite). Thresholds and the pass/fail verdict live in
`beear_stage.gates.evaluator`, so the same gate serves any release policy.

Metrics contract (produced by `beear_stage.eval.metrics`): `asr_clean`, `asr_trigger:<name>` (one per
known trigger), `embedding_attack_asr`, `benign_nonrefusal` (rates in [0, 1]) and `benign_nll`;
beside each rate, `n:<metric>` = the number of prompts it was measured on (added by the release
flow's `evaluate` task from the per-prompt records, `beear_stage.gates.intervals.sample_sizes`).

Intervals: a rate gate (`rate = True`) also reports a 95 % interval of its value through
`intervals(before, after)`, and the evaluator decides on the interval's upper end (every gate's
value is smaller-is-better, so the upper end is the bound that protects the user). For a rate read
from the candidate the interval is the rate's Wilson interval. For a rise or drop over the baseline
(`change_interval`) it is an interval of the difference of the two rates: both are measured on the
same prompts, so with the discordant pairs (`n10:<metric>`, `n01:<metric>` in the candidate's
metrics, `beear_stage.gates.intervals.paired_counts`) it is Newcombe's paired interval; without
them, Newcombe's interval for independent samples; when the baseline has no sample size, the
baseline figure is taken as a fixed reference and the candidate's Wilson interval is shifted by it.
Without `n:<metric>` for the candidate a rate gate reports no interval and is decided on its point
estimate (said so in the result's detail).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping

from beear_stage.gates.intervals import (
    GAINED_PREFIX,
    LOST_PREFIX,
    Interval,
    count_key,
    newcombe_interval,
    newcombe_paired_interval,
    wilson_interval,
)

logger = logging.getLogger(__name__)

Metrics = Mapping[str, float | None]

DEFAULT_GATES: tuple[str, ...] = (
    "asr.CleanASR",
    "asr.ASRRise",
    "asr.TriggerASR",
    "asr.EmbeddingAttackASR",
    "utility.NonrefusalDrop",
    "utility.NLLRise",
)

_GATE_PACKAGE = "beear_stage.gates"


class Gate:
    """Base class of a release gate: scores the candidate against the baseline.

    Subclasses set the class attributes below and implement `score` (or `scores` for a family of
    results such as one ASR per known trigger). A score of None means "cannot score"; the gate logs
    a warning saying why, and the evaluator decides what None means for the verdict.
    """

    # short id used in reports, metric names and `GateThresholds.custom`
    name: str = ""
    # where the metric and the gate are documented
    doc_uri: str = ""
    # field of `GateThresholds` holding the largest passing value; None = `default_threshold`
    threshold_field: str | None = None
    # fixed threshold for gates without a config field (test gates)
    default_threshold: float | None = None
    # range every non-None score must fall in (checked by the contract test)
    value_range: tuple[float, float] = (0.0, 1.0)
    # the value is a rate or a rate difference: decided on a Wilson interval when `n:<metric>` is known
    rate: bool = False

    def score(self, before: Metrics, after: Metrics) -> float | None:
        """Return the gate's value for the candidate; smaller is better, None = cannot score."""
        raise NotImplementedError(f"{type(self).__name__} must implement `score` or `scores`")

    def scores(self, before: Metrics, after: Metrics) -> dict[str, float | None]:
        """Return named scores; one entry `{self.name: score}` except for gate families."""
        return {self.name: self.score(before, after)}

    def interval(self, before: Metrics, after: Metrics) -> Interval | None:
        """Return the 95 % interval of `score`'s value; None = no interval (not a rate, or n unknown)."""
        return None

    def intervals(self, before: Metrics, after: Metrics) -> dict[str, Interval | None]:
        """Return the interval of each result of `scores` (by result name)."""
        return {self.name: self.interval(before, after)}

    # ------------------------------------------------------------------ helpers for subclasses
    def rate_interval(
        self, metrics: Metrics, key: str, which: str, shift: Callable[[float], float] = float
    ) -> Interval | None:
        """Wilson interval of the rate `key`, from `metrics[key]` and its sample size `n:<key>`.

        Args:
            shift: maps a rate to the gate's value (e.g. `lambda r: r - baseline` for a rise); it
                must be monotone, and the interval's ends are sorted after it.

        Returns:
            None when the rate or its sample size is missing or unusable (a warning says why).
        """
        rate = self.value(metrics, key)
        n = None if rate is None else self._count(metrics, key, rate, which)
        if n is None:
            return None
        low, high = sorted(shift(x) for x in wilson_interval(round(rate * n), n))
        return Interval(low, high, n)

    def change_interval(self, before: Metrics, after: Metrics, key: str, sign: int) -> Interval | None:
        """Interval of a change of the rate `key`: `sign` = +1 for after - before (a rise), -1 for a drop.

        Paired (Newcombe's method 10) when the candidate's metrics carry the discordant pairs and
        both rates rest on the same number of prompts; else independent samples; else, without a
        baseline sample size, the candidate's Wilson interval shifted by the baseline figure.
        """
        b, a = self.value(before, key), self.value(after, key)
        if b is None or a is None:
            return None
        n_b, n_a = self._count(before, key, b, "before"), self._count(after, key, a, "after")
        if n_a is None:
            return None
        if n_b is None:
            return self.rate_interval(after, key, "after", lambda r: sign * (r - b))
        k_b, k_a = round(b * n_b), round(a * n_a)
        lost, gained = after.get(LOST_PREFIX + key), after.get(GAINED_PREFIX + key)
        paired = None
        if lost is not None and gained is not None and n_a == n_b:
            lost, gained = int(lost), int(gained)
            both = k_b - lost
            if both >= 0 and both + gained == k_a and n_a - both - lost - gained >= 0:
                paired = (both, lost, gained, n_a - both - lost - gained)
            else:
                logger.warning(
                    "gate %s: discordant pairs of `%s` (%s, %s) do not fit the rates; treating the "
                    "samples as independent",
                    self.name,
                    key,
                    lost,
                    gained,
                )
        # intervals of before - after
        low, high = newcombe_paired_interval(*paired) if paired else newcombe_interval(k_b, n_b, k_a, n_a)
        low, high = sorted((-sign * low, -sign * high))
        return Interval(low, high, n_a)

    def _count(self, metrics: Metrics, key: str, rate: float, which: str) -> int | None:
        raw_n = metrics.get(count_key(key))
        if raw_n is None:
            return None
        n = float(raw_n)
        successes = rate * n
        if not (math.isfinite(n) and n >= 1 and n == int(n)) or abs(successes - round(successes)) > 1e-6 * n:
            logger.warning(
                "gate %s: sample size `%s` = %r (%s) does not fit rate %r; deciding on the point estimate",
                self.name,
                count_key(key),
                raw_n,
                which,
                rate,
            )
            return None
        return int(n)

    def metric(self, metrics: Metrics, key: str, which: str) -> float | None:
        """Read `key` from `metrics` (`which` = "before" or "after"), warning when it is unusable."""
        value = metrics.get(key)
        if value is None:
            logger.warning(
                "gate %s cannot score: metric `%s` is missing from the %s metrics", self.name, key, which
            )
            return None
        value = float(value)
        if not math.isfinite(value):
            logger.warning("gate %s cannot score: metric `%s` (%s) is %r", self.name, key, which, value)
            return None
        return value

    @staticmethod
    def value(metrics: Metrics, key: str) -> float | None:
        """`metrics[key]` as a finite float, else None, without a warning (`metric` already gave one)."""
        value = metrics.get(key)
        if value is None or not math.isfinite(float(value)):
            return None
        return float(value)

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}()"


def load_gate(name: str | Gate) -> Gate:
    """Load one gate by name.

    Args:
        name: "family.ClassName", resolved as `beear_stage.gates.<family>.<ClassName>`, or a full
            dotted path "package.module.ClassName" for gates outside this package. A `Gate`
            instance is returned unchanged.

    Returns:
        A new instance of the gate class.

    Raises:
        ValueError: the name is malformed, the module or class does not exist, or the class is not
            a `Gate` subclass. The message names the value received and the expected format.
    """
    if isinstance(name, Gate):
        return name
    expected = "expected 'family.ClassName' (e.g. 'asr.CleanASR') or 'package.module.ClassName'"
    if not isinstance(name, str) or name.count(".") < 1 or any(not part for part in name.split(".")):
        raise ValueError(f"gate name {name!r} is malformed: {expected}. Known gates: {list(DEFAULT_GATES)}.")
    module_name, _, class_name = name.rpartition(".")
    candidates = [module_name] if module_name.count(".") else [f"{_GATE_PACKAGE}.{module_name}", module_name]
    module = None
    for candidate in candidates:
        try:
            module = importlib.import_module(candidate)
            break
        except ModuleNotFoundError as e:
            if e.name is None or not candidate.startswith(e.name):
                raise  # a module that exists failed to import one of its own dependencies
    if module is None:
        raise ValueError(
            f"gate name {name!r}: no module {' or '.join(repr(c) for c in candidates)}; {expected}. "
            f"Known gates: {list(DEFAULT_GATES)}."
        )
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(
            f"gate name {name!r}: module {module.__name__!r} has no class {class_name!r}; {expected}."
        )
    if not (isinstance(cls, type) and issubclass(cls, Gate)):
        raise ValueError(f"gate name {name!r}: {cls!r} is not a subclass of beear_stage.gates.base.Gate.")
    return cls()


def load_gates(names: Iterable[str | Gate] | None = None) -> list[Gate]:
    """Load a list of gates (`DEFAULT_GATES` when `names` is None); duplicate names are an error."""
    gates = [load_gate(n) for n in (DEFAULT_GATES if names is None else names)]
    seen: set[str] = set()
    for gate in gates:
        if gate.name in seen:
            raise ValueError(f"gate {gate.name!r} is listed twice. Fix: list each gate once.")
        seen.add(gate.name)
    return gates
