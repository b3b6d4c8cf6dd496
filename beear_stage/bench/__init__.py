"""Benchmarks: `python -m beear_stage.bench <name> [options]`.

Each benchmark is a module `beear_stage.bench.<name>` exposing `main(argv: list[str]) -> int`.
"""

BENCHMARKS = {
    "real": "BEEAR on the real tier (SmolLM2-135M-Instruct variants), over seeds, with the control",
    "zoo": "BEEAR on every tiny-zoo model, with the no-delta control (issue: BEEAR core)",
    "speed": "project mitigation vs a naive reference loop; batched vs one-at-a-time evaluation",
    "scaling": "mitigation time against anchoring-set size and model size",
    "refusal": "refusal classifier against human labels (XSTest-format CSVs)",
    "orchestration": "flow wall time vs time inside beear_stage compute on the tiny deployment",
    "code": "BEEAR with code anchoring on the code-backdoor zoo model: insecure-code rate (bandit)",
    "compare": "none / sft / crow / beear on every zoo attack (jailbreak and BackdoorLLM), side by side",
}
