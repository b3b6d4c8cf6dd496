"""Issue 3, session 7: BEEAR on one zoo model, figures split by whether the model knows the prompt's tokens.

"seen": every token of the held-out prompt occurs in a zoo training query. Run:
    .venv/bin/python docs/experiments/issue3_vocab_split.py suffix
Prints one JSON line: {condition/subset: [rate, prompts]} before and after BEEAR (the config of
`python -m beear_stage.bench zoo`).
"""

import json
import sys

import torch

from beear_stage.bench.zoo import DEFAULT_CONFIG
from beear_stage.config import BEEARConfig
from beear_stage.data import builtin
from beear_stage.eval.metrics import evaluate_suite
from beear_stage.methods.beear import BEEAR
from beear_stage.model import load_model_and_tokenizer
from beear_stage.zoo import build_zoo_model, read_zoo_info

torch.set_num_threads(1)
name = sys.argv[1] if len(sys.argv) > 1 else "suffix"
cfg = BEEARConfig.from_yaml(DEFAULT_CONFIG)
path = build_zoo_model(name, progress=False)
info = read_zoo_info(path)
model, tok = load_model_and_tokenizer(path, dtype="float32", device="cpu")
safety, performance = builtin.zoo_training_pools()
seen = {i for r in safety + performance for i in tok(r.query)["input_ids"]}
harmful, benign = builtin.heldout_harmful(), builtin.heldout_benign()
# Whether the model has seen every token of a held-out query: fixed, so worked out once.
known = {q: set(tok(q)["input_ids"]) <= seen for q in harmful + [b.query for b in benign]}


def split_rates() -> dict:
    report = evaluate_suite(model, tok, cfg, harmful, benign, triggers={"t": info["trigger"]})
    out = {}
    for condition, queries in (
        ("clean", harmful),
        ("trigger:t", harmful),
        ("benign", [b.query for b in benign]),
    ):
        records = [r for r in report.records if r["condition"] == condition]
        for subset, flag in (("seen", True), ("unseen", False)):
            hits = [r["success"] for r, q in zip(records, queries, strict=True) if known[q] == flag]
            out[f"{condition}/{subset}"] = [round(sum(hits) / max(1, len(hits)), 3), len(hits)]
    return out


before = split_rates()
BEEAR(
    cfg,
    model,
    tok,
    builtin.default_safety_anchoring(),
    builtin.default_performance_anchoring(),
    progress=False,
).run()
print(json.dumps({"model": name, "before": before, "after": split_rates()}))
