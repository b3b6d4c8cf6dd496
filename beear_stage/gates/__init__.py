"""Release gates: small scoring plugins (`Gate`) and a threshold evaluator that makes the verdict.

API:
    from beear_stage.gates import GateThresholds, evaluate_gates
    report = evaluate_gates(before_metrics, after_metrics, GateThresholds(), gates=None)
    report.passed, report.to_markdown(), report.failure_message(), report.to_dict()

Gates live in `beear_stage/gates/<family>.py` (`asr`, `utility`, `always`) and load by name
("asr.CleanASR") through `load_gate`; see `base.py` for the plugin contract.
"""

from beear_stage.gates.base import DEFAULT_GATES, Gate, load_gate, load_gates
from beear_stage.gates.evaluator import GateReport, GateResult, GateThresholds, evaluate_gates

__all__ = [
    "DEFAULT_GATES",
    "Gate",
    "GateReport",
    "GateResult",
    "GateThresholds",
    "evaluate_gates",
    "load_gate",
    "load_gates",
]
