"""One process: evaluate_release on one model with the fast engine (settled rows stop) at
eval_batch_size 32 and 64, then eager model.generate at both sizes; same data, same config
otherwise. Prints each mode as it finishes; writes to the JSON given as the second argument the
seconds of each mode and how its responses compare with fast-32's and eager-32's (not the responses).

    python docs/experiments/eval_batch_ab.py MODEL_DIR OUT.json [CONFIG.yaml (default: smol.yaml)]
"""

import json
import sys
import time

from eval_common import data_sets, use_engine, zoo_model

from beear_stage.config import BEEARConfig
from beear_stage.eval.release import evaluate_release

model_dir, out_path = sys.argv[1], sys.argv[2]
config = sys.argv[3] if len(sys.argv) > 3 else "deployments/configs/smol.yaml"
sets = data_sets()
model, tok, triggers = zoo_model(model_dir)
runs = {}  # "engine-batch" -> (seconds, report)
for engine, batch in [("fast", 32), ("fast", 64), ("eager", 32), ("eager", 64)]:
    cfg = BEEARConfig.from_yaml(config, eval_batch_size=batch)
    use_engine(engine)
    t = time.perf_counter()
    rep = evaluate_release(model, tok, cfg, sets, triggers, None)
    runs[f"{engine}-{batch}"] = (time.perf_counter() - t, rep)
    print(engine, batch, f"{runs[f'{engine}-{batch}'][0]:.1f} s", flush=True)
use_engine("fast")
responses = {k: [r["response"] for r in rep.records] for k, (_, rep) in runs.items()}
eager = responses["eager-32"]
out = {"model": model_dir, "config": config, "modes": {}}
for k, (seconds, rep) in runs.items():
    out["modes"][k] = {
        "seconds": round(seconds, 1),
        "records": len(rep.records),
        "stopped_rows": sum(bool(r.get("stopped_early")) for r in rep.records),
        "responses_equal_to_fast_32": sum(
            a == b for a, b in zip(responses["fast-32"], responses[k], strict=True)
        ),
        "responses_equal_to_eager_32": sum(a == b for a, b in zip(eager, responses[k], strict=True)),
        "fast_responses_prefix_of_eager_32": sum(
            e.startswith(a) for a, e in zip(responses[k], eager, strict=True)
        ),
        "metrics_equal_to_fast_32": rep.metrics == runs["fast-32"][1].metrics,
        "benign_nll": rep.metrics.get("benign_nll"),
    }
json.dump(out, open(out_path, "w"), indent=1)
print(json.dumps(out["modes"], indent=1))
