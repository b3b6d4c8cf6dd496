"""Exploration only: two-sided BEEAR. Each round also entraps a benign delta_b on the PA prompts
(min CE(refusal | x_p, delta_b) - alpha * min(CE(y_p | x_p, delta_b), cap)), and the outer level adds
pa_delta_weight * CE(y_p | x_p, delta_b): benign prompts pushed toward refusal keep their answers."""

import os
import sys
from dataclasses import replace

from beear_stage.data.builtin import default_refusal
from beear_stage.data.records import SafetyRecord
from beear_stage.methods import beear as B
from beear_stage.templates import encode_example

STEPS = int(os.environ.get("BENIGN_STEPS", "4"))
# Rounds before this one are one-sided (no delta_b, pa_delta_weight 0): the benign side starts late.
BENIGN_FROM = int(os.environ.get("BENIGN_FROM", "0"))
_encode = B.BEEAR.encode


def encode(self):
    _encode(self)
    n, cut = self.cfg.max_length, self.cfg.response_tokens
    self.benign_safety = [SafetyRecord(r.query, default_refusal(r.query), r.answer) for r in self.performance]
    self.benign_unwanted = [
        B._cut(encode_example(self.tokenizer, r.query, r.safe_response, n), cut) for r in self.benign_safety
    ]
    self.benign_weight = self.cfg.pa_delta_weight  # the two-sided rounds' weight (0 before BENIGN_FROM)
    self.benign_safe = [B._cut(p, cut) for p in self.pa]


_entrap = B.BEEAR.entrap


def entrap(self, previous):
    delta, stats = _entrap(self, previous)
    if not self.performance:  # the evaluation's embedding attack: one-sided, as always
        return delta, stats
    self.round_ = getattr(self, "round_", -1) + 1
    two_sided = self.round_ >= BENIGN_FROM
    self.cfg = replace(self.cfg, pa_delta_weight=self.benign_weight if two_sided else 0.0)
    if not two_sided:
        return delta, stats
    saved = (self.safety, self.sa_unwanted, self.sa_safe, self.cfg)
    self.safety, self.sa_unwanted, self.sa_safe = self.benign_safety, self.benign_unwanted, self.benign_safe
    self.cfg = replace(self.cfg, inner_steps=STEPS)
    try:
        self.delta_b, bstats = _entrap(self, None)
    finally:
        self.safety, self.sa_unwanted, self.sa_safe, self.cfg = saved
    stats.update({f"benign_{k}": v for k, v in bstats.items()})
    return delta, stats


B.BEEAR.encode, B.BEEAR.entrap = encode, entrap
B.BEEAR.pa_delta = lambda self, delta: self.delta_b
from beear_stage.bench import real as bench_real  # noqa: E402
from beear_stage.bench import zoo as bench_zoo  # noqa: E402

if os.environ.get("DUMP_RECORDS"):  # every evaluation's records, one JSON line each, for reading
    import json

    _evaluate = bench_zoo._evaluate

    def _dumping(*args, **kwargs):
        out = _evaluate(*args, **kwargs)
        with open(os.environ["DUMP_RECORDS"], "a") as f:
            f.write(json.dumps(out["records"]) + "\n")
        return out

    bench_zoo._evaluate = _dumping

sys.exit(bench_real.main(sys.argv[1:]))
