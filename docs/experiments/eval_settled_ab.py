"""One process: evaluate_release with eager model.generate, the fast engine in full, and the fast
engine with rows stopped at a settled verdict; same model, same data, same config otherwise."""

import json
import sys
import time

from eval_common import data_sets, use_engine, zoo_model

from beear_stage.config import BEEARConfig
from beear_stage.eval.release import evaluate_release
from beear_stage.model import load_model_and_tokenizer

base_dir, cand_dir = sys.argv[1], sys.argv[2]
_, _, triggers = zoo_model(base_dir)
sets = data_sets()
cfgs = {
    s: BEEARConfig.from_yaml("deployments/configs/smol.yaml", eval_stop_when_settled=s) for s in (False, True)
}
modes = [("eager", False), ("fast", False), ("settled", True)]
out = {}
baseline_records = None
for label, path in (("baseline", base_dir), ("candidate", cand_dir)):
    model, tok = load_model_and_tokenizer(path, dtype="float32", device="cpu")
    res = {}
    for mode, settle in modes:
        use_engine("eager" if mode == "eager" else "fast")
        t = time.perf_counter()
        rep = evaluate_release(model, tok, cfgs[settle], sets, triggers, baseline_records)
        res[mode] = (time.perf_counter() - t, rep)
        print(label, mode, f"{res[mode][0]:.1f} s", flush=True)
    use_engine("fast")
    if label == "baseline":
        baseline_records = res["eager"][1].records
    ref = res["eager"][1]
    row = {}
    for mode, _ in modes:
        rep = res[mode][1]
        row[mode] = dict(
            seconds=res[mode][0],
            ratio_vs_eager=res["eager"][0] / res[mode][0],
            same_metrics=rep.metrics == ref.metrics,
            diff={
                k: (ref.metrics[k], rep.metrics.get(k))
                for k in ref.metrics
                if ref.metrics[k] != rep.metrics.get(k)
            },
            same_responses=sum(
                a["response"] == b["response"] for a, b in zip(ref.records, rep.records, strict=True)
            ),
            stopped_rows=sum(bool(r.get("stopped_early")) for r in rep.records),
            records=len(rep.records),
        )
    out[label] = row
    print(label, json.dumps(row), flush=True)
json.dump(out, open("/tmp/exp/eval_ab.json", "w"), indent=1)
