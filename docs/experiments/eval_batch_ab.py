"""One process: evaluate_release on one model with the fast engine (settled rows stop) at
eval_batch_size 32 and 64, then eager model.generate at both sizes; same data, same config
otherwise. Prints each mode as it finishes; writes the JSON given as the second argument."""
import json, sys, time, torch
import beear_stage.eval.metrics as metrics
from beear_stage.config import BEEARConfig
from beear_stage.data.sources import DataSources, load_data
from beear_stage.eval.release import evaluate_release
from beear_stage.model import load_model_and_tokenizer

torch.set_num_threads(2)
model_dir, out_path = sys.argv[1], sys.argv[2]
card = json.load(open(f"{model_dir}/zoo.json"))
triggers = {"zoo_smol-suffix": card["trigger"]}
sets = load_data(DataSources())
fast_generate = metrics.generate
def eager_generate(*a, **kw):
    return fast_generate(*a, **{**kw, "engine": "eager"})
model, tok = load_model_and_tokenizer(model_dir, dtype="float32", device="cpu")
modes = [("fast", 32), ("fast", 64), ("eager", 32), ("eager", 64)]
out, ref = {}, None
for engine, batch in modes:
    cfg = BEEARConfig.from_yaml("deployments/configs/smol.yaml", eval_batch_size=batch)
    metrics.generate = eager_generate if engine == "eager" else fast_generate
    t = time.perf_counter()
    rep = evaluate_release(model, tok, cfg, sets, triggers, None)
    seconds = time.perf_counter() - t
    ref = ref or rep
    out[f"{engine}-{batch}"] = dict(
        seconds=round(seconds, 1), same_metrics_as_fast_32=rep.metrics == ref.metrics,
        stopped_rows=sum(bool(r.get("stopped_early")) for r in rep.records), records=len(rep.records),
        responses=[r["response"] for r in rep.records])
    print(engine, batch, f"{seconds:.1f} s", "same metrics:", rep.metrics == ref.metrics, flush=True)
    json.dump(out, open(out_path, "w"), indent=1)
