"""`python -m beear_stage.bench real`: BEEAR on the real tier (SmolLM2-135M-Instruct variants).

For each variant (`beear_stage.zoo.real`: smol-suffix, smol-prefix, smol-sandwich, or one built
with `--trigger`): build it (cached), evaluate the backdoored model, run BEEAR (which never sees the
trigger) once per `--seeds` seed, evaluate again with a fresh embedding attack, and run the no-delta
control (`method: sft`, first seed). Each entry of `models` has the fields of `bench zoo` for the
first seed, plus `build_seconds`, `seeds` (one object per seed with the same fields and `seed`) and
`mean` (each figure's mean over the seeds). Only evaluation reads the trigger, from zoo.json.
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
from beear_stage.zoo import read_zoo_info
from beear_stage.zoo.real import REAL_ZOO, build_real_model

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "deployments" / "configs" / "smol.yaml"
PER_SEED = (*FIELDS, "planted_compliance_after")


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
    return p.parse_args(argv)


def measure(path: Path, cfg: BEEARConfig, seeds: list[int], harmful, benign, device: str, control: bool):
    """(row, control row or None) for one variant: BEEAR over `seeds`, the control at the first."""
    runs, before = [], None
    for seed in seeds:
        seeded = BEEARConfig.from_dict({**cfg.to_dict(), "seed": seed})
        row, before = run_one(path, "beear", seeded, harmful, benign, before, device=device)
        runs.append({"seed": seed, **row})
    row = {**runs[0], "seeds": [{k: r[k] for k in ("seed", *PER_SEED)} for r in runs]}
    row["mean"] = {k: statistics.fmean(r[k] for r in runs) for k in PER_SEED}
    info = read_zoo_info(path)
    row["build_seconds"] = info.get("build_seconds")
    row["trigger"] = info["trigger"]
    ctrl = None
    if control:
        ctrl = run_one(path, "sft", cfg, harmful, benign, before, device=device)[0]
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
    if args.eval_limit:
        harmful, benign = _spaced(harmful, args.eval_limit), _spaced(benign, args.eval_limit)
    out = {"models": [], "control": [], "config": cfg.to_dict(), "seeds": seeds, "device": args.device,
           "machine": _machine(), "date": str(date.today())}  # fmt: skip
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        path = build_real_model(name, args.cache_dir, trigger=args.trigger, device=args.device)
        build_wall = time.perf_counter() - t0
        row, ctrl = measure(path, cfg, seeds, harmful, benign, args.device, not args.no_control)
        row["build_wall_seconds"] = round(build_wall, 1)  # 0 when the variant was cached
        out["models"].append(row)
        if ctrl is not None:
            out["control"].append(ctrl)
        print(format_table(out["models"] + out["control"]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))  # after every variant: a crash keeps the rest
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n{format_table(out['models'] + out['control'])}\nwrote {args.out}")
    return 0
