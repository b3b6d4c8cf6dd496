"""Gates with a fixed outcome, for tests and dry runs of the release pipeline.

API: `always.AlwaysPass` (scores 0.0 against a fixed threshold of 0.5), `always.AlwaysFail` (1.0).
Use them to drill the pass and fail paths of a flow without evaluating a model, e.g.
`evaluate_gates({}, {}, gates=["always.AlwaysFail"])`.
"""

from __future__ import annotations

from beear_stage.gates.base import Gate, Metrics


class AlwaysPass(Gate):
    """A gate that always passes, whatever the metrics.

    Scores 0.0 against a fixed threshold of 0.5. For tests and dry runs only.
    """

    name = "always_pass"
    default_threshold = 0.5

    def score(self, before: Metrics, after: Metrics) -> float | None:
        return 0.0


class AlwaysFail(Gate):
    """A gate that always fails, whatever the metrics.

    Scores 1.0 against a fixed threshold of 0.5. For tests and gate-failure drills only.
    """

    name = "always_fail"
    default_threshold = 0.5

    def score(self, before: Metrics, after: Metrics) -> float | None:
        return 1.0
