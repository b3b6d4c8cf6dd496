"""Which gates a release run applies: those whose metrics the run measures.

`release_gates(names, data)` is the gate policy of the release flow, here so that a benchmark or a
review reproduces a run's verdict without Prefect.
"""

from __future__ import annotations

from beear_stage.data.eval_sets import detect_eval_format
from beear_stage.data.sources import DataSources
from beear_stage.gates.base import DEFAULT_GATES
from beear_stage.gates.code import CODE_GATES

# judge-free utility gates: every release evaluation measures their metrics (`eval.release`)
UTILITY_GATES: tuple[str, ...] = ("utility.OverRefusalRise", "utility.BaselineAgreement")


def release_gates(names: list[str] | None, data: DataSources) -> list[str]:
    """The gates of a release run: `names` when given (`gates: {gates: [...]}`), else those whose
    metrics the run measures: `DEFAULT_GATES` (its ASR gates only when there are harmful
    text prompts, i.e. not for a `builtin: code` run without `harmful_eval`), the utility gates
    `UTILITY_GATES`, and `CODE_GATES` when coding prompts are evaluated (`code_eval`, `builtin: code`);
    no reference-NLL gate when `benign_eval` is an MT-Bench question file (no reference answers).
    """
    if names is not None:
        return list(names)
    harmful = data.builtin != "code" or bool(data.harmful_eval)
    gates = [g for g in DEFAULT_GATES if harmful or not g.startswith("asr.")] + list(UTILITY_GATES)
    if data.benign_eval and detect_eval_format(data.benign_eval) == "mtbench":
        gates.remove("utility.NLLRise")  # MT-Bench questions have no reference answers to score
    return gates + (list(CODE_GATES) if data.builtin == "code" or data.code_eval else [])
