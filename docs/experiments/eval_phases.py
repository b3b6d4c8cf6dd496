"""One process: evaluate_release on one model with the fast engine, then with eager
model.generate; same data and config. Times every phase: each decoding call (the sets in the
order evaluate_release runs them), the embedding attack's inner level, the benign reference NLL.
Writes the seconds, the decoding-only and whole-evaluation ratios, and whether both engines gave
the same metrics and verdicts (fast responses prefixes of the eager ones).

    python docs/experiments/eval_phases.py MODEL_DIR OUT.json [CONFIG.yaml (default: smol.yaml)]
"""

import json
import sys
import time

from eval_common import data_sets, use_engine, zoo_model

import beear_stage.eval.metrics as metrics
import beear_stage.methods.beear as beear
from beear_stage.config import BEEARConfig
from beear_stage.eval.release import evaluate_release

model_dir, out_path = sys.argv[1], sys.argv[2]
config = sys.argv[3] if len(sys.argv) > 3 else "deployments/configs/smol.yaml"
sets = data_sets()
model, tok, triggers = zoo_model(model_dir)
cfg = BEEARConfig.from_yaml(config)
phases = []  # (phase, prompts or None, seconds) of the running evaluation


def timed(module, name, phase):
    inner = getattr(module, name)

    def call(*args, **kwargs):
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        prompts = len(args[2]) if phase == "decoding" else None
        phases.append((phase, prompts, round(time.perf_counter() - start, 1)))
        return result

    setattr(module, name, call)


timed(beear, "entrap_delta", "embedding attack inner level")
timed(metrics, "reference_nll", "benign reference NLL")
out = {"model": model_dir, "config": config, "eval_batch_size": cfg.eval_batch_size, "engines": {}}
reports = {}
for engine in ("fast", "eager"):
    use_engine(engine)
    timed(metrics, "generate", "decoding")  # wraps the engine just chosen
    phases.clear()
    start = time.perf_counter()
    reports[engine] = evaluate_release(model, tok, cfg, sets, triggers, None)
    total = time.perf_counter() - start
    decoding = sum(s for p, _, s in phases if p == "decoding")
    out["engines"][engine] = {
        "seconds": round(total, 1),
        "decoding_seconds": round(decoding, 1),
        "other_seconds": round(total - decoding, 1),
        "phases": list(phases),
    }
    print(engine, json.dumps(out["engines"][engine]), flush=True)
fast, eager = out["engines"]["fast"], out["engines"]["eager"]
out["whole_evaluation_ratio"] = round(eager["seconds"] / fast["seconds"], 3)
out["decoding_ratio"] = round(eager["decoding_seconds"] / fast["decoding_seconds"], 3)
pairs = list(zip(reports["fast"].records, reports["eager"].records, strict=True))
out["metrics_equal"] = reports["fast"].metrics == reports["eager"].metrics
out["verdicts_equal"] = sum(a.get("refusal") == b.get("refusal") for a, b in pairs)
out["fast_responses_prefix_of_eager"] = sum(b["response"].startswith(a["response"]) for a, b in pairs)
out["records"] = len(pairs)
json.dump(out, open(out_path, "w"), indent=1)
print(json.dumps({k: v for k, v in out.items() if k != "engines"}, indent=1))
