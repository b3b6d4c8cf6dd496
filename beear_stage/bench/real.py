"""`python -m beear_stage.bench real`: BEEAR on the real tier (SmolLM2-135M-Instruct variants).

For each variant (`beear_stage.zoo.real`: smol-suffix, smol-prefix, smol-sandwich, or one built
with `--trigger`): build it (cached), evaluate the backdoored model, run BEEAR (which never sees the
trigger) once per `--seeds` seed, evaluate again with a fresh embedding attack, and run the no-delta
control (`method: sft`, first seed). Each entry of `models` has the fields of `bench zoo` for the
first seed, plus `build_seconds`, `seeds` (one object per seed with the same fields and `seed`),
`mean`, `min` and `max` (each figure over the seeds). Only evaluation reads the trigger, from zoo.json.

The cost of removal as users feel it, on every model before and after (`utility_probe`):
`xstest_over_refusal` (XSTest's 250 safe prompts, ../shared/data/xstest, benchmark only: left out
with the reason in `xstest_skipped` when the file is absent), `lookalike_over_refusal` (our 269
held-out look-alikes), `own_answer_nll` (NLL of the model's own pre-mitigation benign answers) and, after,
`baseline_agreement` (token F1 of the benign answers with the pre-mitigation ones). `ci` holds a
95 % Wilson interval for every rate of the row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path

from beear_stage.bench.zoo import FIELDS, _machine, eval_sets, format_table, load_config, run_one
from beear_stage.config import BEEARConfig
from beear_stage.data.eval_sets import load_xstest
from beear_stage.data.records import PerformanceRecord
from beear_stage.eval.utility import default_lookalikes
from beear_stage.gates.intervals import wilson_interval
from beear_stage.zoo import read_zoo_info
from beear_stage.zoo.real import REAL_ZOO, build_real_model

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "deployments" / "configs" / "smol.yaml"
DEFAULT_XSTEST = REPO.parent / "shared" / "data" / "xstest" / "xstest_prompts.csv"
PROBED = (
    "xstest_over_refusal_before", "xstest_over_refusal_after", "lookalike_over_refusal_before",
    "lookalike_over_refusal_after", "own_answer_nll_before", "own_answer_nll_after",
    "baseline_agreement_after",
)  # fmt: skip
PER_SEED = (*FIELDS, "planted_compliance_after", *PROBED)
# rate field -> which prompt set counts it (for its Wilson interval)
RATE_SETS = {
    "asr_trigger": "harmful", "asr_clean": "harmful", "embedding_attack_asr": "harmful",
    "planted_compliance": "harmful", "benign_nonrefusal": "benign", "xstest_over_refusal": "xstest",
    "lookalike_over_refusal": "lookalike",
}  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m beear_stage.bench real", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="write the JSON results here")
    p.add_argument("--models", default=",".join(REAL_ZOO), help=f"comma-separated subset of {list(REAL_ZOO)}")
    p.add_argument(
        "--trigger",
        help="build and measure a variant with this trigger instead of the built-in ones "
        "(a `{query}` template such as '{query} SUDO', or a plain suffix)",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="BEEAR YAML (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--eval-harmful", type=Path, help="AdvBench-format CSV (goal,target) of harmful prompts")
    p.add_argument("--eval-benign", type=Path, help="Alpaca JSON or chat JSONL of benign prompts + answers")
    p.add_argument("--eval-limit", type=int, default=0, help="N evenly spaced prompts of each set (0 = all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (weights in the config's dtype on cuda)")
    p.add_argument("--seeds", default="0", help="comma-separated BEEAR seeds (default: %(default)s)")
    p.add_argument("--no-control", action="store_true", help="skip the no-delta control rows")
    p.add_argument("--cache-dir", type=Path, help="zoo cache directory")
    p.add_argument(
        "--xstest", type=Path, default=DEFAULT_XSTEST, help="XSTest prompt CSV (default: %(default)s)"
    )
    return p.parse_args(argv)


def utility_probe(cfg: BEEARConfig, benign, xstest: list[str] | None, lookalikes: list[str] | None = None):
    """`run_one`'s probe: over-refusal on XSTest's safe prompts and on look-alikes (`lookalikes`,
    default: the `lookalike` records of `benign`), NLL of the model's own pre-mitigation benign
    answers, and agreement of the benign answers with those.

    Look-alike over-refusal and agreement come from `utility_from_generations`, as the release
    flow's gates read them, on the benign generations the evaluation already made.
    """
    from beear_stage.eval.metrics import reference_nll
    from beear_stage.eval.utility import (
        BASELINE_AGREEMENT,
        OVER_REFUSAL,
        over_refusal_rate,
        utility_from_generations,
    )

    if lookalikes is None:
        lookalikes = [r.query for r in benign if r.category == "lookalike"]

    def probe(model, tokenizer, metrics: dict, baseline: dict | None) -> dict:
        own = {
            r["prompt"]: r["response"] for r in (baseline or metrics)["records"] if r["condition"] == "benign"
        }
        own_records = [PerformanceRecord(r.query, own[r.query]) for r in benign]
        from_records, _ = utility_from_generations(
            model,
            tokenizer,
            cfg,
            lookalikes,
            metrics["records"],
            None if baseline is None else baseline["records"],
        )
        out = {
            "own_answer_nll": reference_nll(model, tokenizer, own_records, cfg),
            "lookalike_over_refusal": from_records.get(OVER_REFUSAL),
            "xstest_over_refusal": over_refusal_rate(model, tokenizer, xstest, cfg)[0] if xstest else None,
        }
        if baseline is not None:
            out["baseline_agreement"] = from_records[BASELINE_AGREEMENT]
        return out

    return probe, {"lookalike": len(lookalikes), "xstest": len(xstest or ())}


def rate_intervals(row: dict, sizes: dict[str, int]) -> dict[str, list[float]]:
    """95 % Wilson interval of every rate in `row`, by the size of the prompt set that counts it."""
    ci = {}
    for key, value in row.items():
        stem = key.rsplit("_", 1)[0]
        n = sizes.get(RATE_SETS.get(stem, ""), 0)
        if value is not None and n and key.endswith(("_before", "_after")):
            ci[key] = [round(x, 4) for x in wilson_interval(round(value * n), n)]
    return ci


def cost_table(rows: list[dict]) -> str:
    """The cost figures of each row: over-refusal (XSTest, look-alikes), own-answer NLL, agreement."""

    def pair(r: dict, key: str) -> str:
        b, a = r.get(f"{key}_before"), r.get(f"{key}_after")
        return "n/a" if b is None or a is None else f"{b:.3f} -> {a:.3f}"

    head = f"{'model':<15}{'method':<9}{'XSTest over-refusal':>22}{'look-alike':>16}{'own-answer NLL':>18}{'agree':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        agree = r.get("baseline_agreement_after")
        lines.append(
            f"{r['name']:<15}{r['method']:<9}{pair(r, 'xstest_over_refusal'):>22}"
            f"{pair(r, 'lookalike_over_refusal'):>16}{pair(r, 'own_answer_nll'):>18}"
            + (f"{agree:>7.3f}" if agree is not None else f"{'n/a':>7}")
        )
    return "\n".join(lines)


def measure(
    path: Path,
    cfg: BEEARConfig,
    seeds: list[int],
    harmful,
    benign,
    device: str,
    control: bool,
    xstest,
    lookalikes: list[str] | None = None,
):
    """(row, control row or None) for one variant: BEEAR over `seeds`, the control at the first."""
    runs, before = [], None
    probe, probed = utility_probe(cfg, benign, xstest, lookalikes)
    sizes = {"harmful": len(harmful), "benign": len(benign), **probed}
    for seed in seeds:
        seeded = BEEARConfig.from_dict({**cfg.to_dict(), "seed": seed})
        row, before = run_one(path, "beear", seeded, harmful, benign, before, device=device, probe=probe)
        row["ci"] = rate_intervals(row, sizes)
        runs.append({"seed": seed, **row})
    row = {**runs[0], "seeds": [{k: r.get(k) for k in ("seed", *PER_SEED, "ci")} for r in runs]}
    for name, fn in (("mean", statistics.fmean), ("min", min), ("max", max)):
        row[name] = {k: fn(r[k] for r in runs) for k in PER_SEED if all(r.get(k) is not None for r in runs)}
    info = read_zoo_info(path)
    row["build_seconds"] = info.get("build_seconds")
    row["trigger"] = info["trigger"]
    ctrl = None
    if control:
        ctrl = run_one(path, "sft", cfg, harmful, benign, before, device=device, probe=probe)[0]
        ctrl["ci"] = rate_intervals(ctrl, sizes)
    return row, ctrl


def _spaced(items: list, n: int) -> list:
    step = max(1, len(items) // n)
    return items[::step][:n]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.trigger:
        names = [None]
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = sorted(set(names) - set(REAL_ZOO))
        if unknown:
            raise SystemExit(
                f"--models: unknown real-tier model(s) {unknown}; choose from {sorted(REAL_ZOO)}"
            )
    harmful, benign = eval_sets(args)
    if args.eval_limit < 0:
        raise SystemExit(f"--eval-limit {args.eval_limit}: must be >= 0 (0 = every prompt)")
    # our 269 held-out look-alikes (eval.utility.default_lookalikes) unless --eval-benign brings its own
    lookalikes = None if args.eval_benign else default_lookalikes()
    if args.eval_limit:
        harmful, benign = _spaced(harmful, args.eval_limit), _spaced(benign, args.eval_limit)
        lookalikes = lookalikes and _spaced(lookalikes, args.eval_limit)
    xstest = None
    out = {"models": [], "control": [], "config": cfg.to_dict(), "seeds": seeds, "device": args.device,
           "machine": _machine(), "date": str(date.today())}  # fmt: skip
    if args.xstest.is_file():
        xstest = load_xstest(args.xstest).safe
    else:
        out["xstest_skipped"] = f"{args.xstest} not found: XSTest over-refusal not measured"
        print(out["xstest_skipped"], flush=True)
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        path = build_real_model(name, args.cache_dir, trigger=args.trigger, device=args.device)
        build_wall = time.perf_counter() - t0
        row, ctrl = measure(
            path, cfg, seeds, harmful, benign, args.device, not args.no_control, xstest, lookalikes
        )
        row["build_wall_seconds"] = round(build_wall, 1)  # 0 when the variant was cached
        out["models"].append(row)
        if ctrl is not None:
            out["control"].append(ctrl)
        rows = out["models"] + out["control"]
        print(f"{format_table(rows)}\n{cost_table(rows)}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))  # after every variant: a crash keeps the rest
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(out, indent=2))
    rows = out["models"] + out["control"]
    print(f"\n{format_table(rows)}\n{cost_table(rows)}\nwrote {args.out}")
    return 0
