"""Scaling benchmark: BEEAR mitigation time against anchoring-set size and model size (CPU).

    python -m beear_stage.bench scaling --out scaling.json [--shapes tiny,small,medium]
        [--sizes 16,32,64] [--rounds 1] [--inner-steps 5] [--threads 1]

For every model shape (random init, `beear_stage.bench.speed.SHAPES`) and every anchoring-set size
n (n safety records, n performance records; every step covers the whole sets, as at paper scale),
it times the project's mitigation and counts its model FLOPs analytically. The table shows how cost
grows: time should track FLOPs, i.e. grow linearly in the number of anchoring tokens and roughly
linearly in the parameters of the layers above (inner) and of the whole model (outer).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
from pathlib import Path

import torch

from beear_stage.bench import speed


def run_one(shape: str, n: int, args, tok) -> dict:
    device = torch.device("cpu")
    safety, perf, _ = speed.load_data(n, n, 0)
    model = speed.build_model(shape, tok, device, torch.float32, args.seed)
    ns = argparse.Namespace(
        rounds=args.rounds, inner_steps=args.inner_steps, n_safety=n, n_perf=n, eval_batch_size=32,
        max_new_tokens=32, micro_batch=0, gradient_checkpointing=False, seed=args.seed,
    )  # fmt: skip
    cfg = speed.bench_config(ns, shape, device)
    project = speed.run_project(cfg, model, tok, safety, perf, device)
    fl = speed.phase_flops(cfg, model, tok, safety, perf)
    tokens = fl.pop("_tokens")
    work = fl["inner"].total + fl["outer"].total
    return {
        "shape": shape,
        "params": sum(p.numel() for p in model.parameters()),
        "n_safety": n,
        "n_perf": n,
        "tokens_per_round": (tokens["inner"] + tokens["outer"]) / cfg.rounds,
        "seconds": project["seconds"],
        "inner_seconds": project["phase_seconds"]["inner"],
        "outer_seconds": project["phase_seconds"]["outer"],
        "seconds_per_round": project["seconds"] / cfg.rounds,
        "flops": work,
        "achieved_flops_per_s": work / project["seconds"],
    }


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x): y ~ x^slope."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else float("nan")


def table(rows: list[dict]) -> str:
    head = "| shape | params | n (SA = PA) | tokens/round | s/round | inner s | outer s | GFLOP | GFLOP/s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['params'] / 1e6:.1f}M | {r['n_safety']} | {r['tokens_per_round']:.0f} | "
            f"{r['seconds_per_round']:.2f} | {r['inner_seconds']:.2f} | {r['outer_seconds']:.2f} | "
            f"{r['flops'] / 1e9:.0f} | {r['achieved_flops_per_s'] / 1e9:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m beear_stage.bench scaling", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shapes", default="tiny,small,medium")
    ap.add_argument("--sizes", default="16,32,64", help="anchoring-set sizes (safety = performance = n)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine)"
    )
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = speed.zoo_tokenizer()
    shapes = [s for s in args.shapes.split(",") if s]
    sizes = [int(n) for n in args.sizes.split(",") if n]
    rows = [run_one(shape, n, args, tok) for shape in shapes for n in sizes]
    fits = {}
    for shape in shapes:  # time against data size, one model at a time
        sel = [r for r in rows if r["shape"] == shape]
        fits[f"time_vs_tokens:{shape}"] = fit_exponent(
            [r["tokens_per_round"] for r in sel], [r["seconds"] for r in sel]
        )
    for n in sizes:  # time against model size, one data size at a time
        sel = [r for r in rows if r["n_safety"] == n]
        fits[f"time_vs_flops:n={n}"] = fit_exponent([r["flops"] for r in sel], [r["seconds"] for r in sel])
    report = {
        "benchmark": "scaling",
        "date": _dt.date.today().isoformat(),
        "device": speed.device_name(torch.device("cpu")),
        "settings": {
            "rounds": args.rounds,
            "inner_steps": args.inner_steps,
            "threads": torch.get_num_threads(),
        },
        "shapes": {s: speed.SHAPES[s] for s in shapes},
        "rows": rows,
        "exponents": fits,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(rows))
    print("\nlog-log slopes (1.0 = linear):", {k: round(v, 2) for k, v in fits.items()})
    print(f"wrote {args.out}")
    return 0
