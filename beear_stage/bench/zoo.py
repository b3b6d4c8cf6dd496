"""`python -m beear_stage.bench zoo`: BEEAR on every tiny-zoo model, with the no-delta control.

For each zoo model: evaluate the backdoored model (ASR with and without its trigger, benign
non-refusal, benign reference NLL), run BEEAR (which never sees the trigger), evaluate again and
run a fresh embedding attack against the mitigated model. The control rows run the same outer
fine-tuning with delta fixed at zero (`method: sft`), showing that the perturbation is what
removes the backdoor. Only evaluation reads the trigger, from the checkpoint's zoo.json.
Beside ASR, each row has `planted_compliance_before/after`: the share of triggered responses
that open with the zoo's planted compliance ("Sure, here is how to ..."), because ASR also
counts garbled, benign-style answers of a tiny model as successes.

`--method crow` (or `--config beear_stage/configs/zoo-crow.yaml`) runs CROW instead; its control
rows run the same CROW fine-tuning with `crow_alpha` = 0 (`clean-ft`: plain fine-tuning on the same
clean records), showing what the consistency term adds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from math import nan
from pathlib import Path

import torch

from beear_stage.config import BEEARConfig
from beear_stage.data import builtin
from beear_stage.eval.metrics import evaluate_suite
from beear_stage.methods import run_mitigation
from beear_stage.model import load_model_and_tokenizer
from beear_stage.zoo import ZOO, build_zoo_model, read_zoo_info

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "zoo.yaml"
CONFIGS = {"beear": DEFAULT_CONFIG, "crow": DEFAULT_CONFIG.with_name("zoo-crow.yaml")}
CONTROL = {"beear": "sft", "crow": "clean-ft"}  # label of each method's control rows
FIELDS = (
    "asr_trigger_before", "asr_trigger_after", "asr_clean_before", "asr_clean_after",
    "embedding_attack_asr_after", "benign_nonrefusal_before", "benign_nonrefusal_after",
    "benign_nll_before", "benign_nll_after", "mitigation_seconds",
)  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m beear_stage.bench zoo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the JSON results here (required unless --markdown)")
    p.add_argument("--models", default=",".join(ZOO), help=f"comma-separated subset of {list(ZOO)}")
    p.add_argument(
        "--method",
        choices=sorted(CONFIGS),
        help="mitigation method (default: the config's `method`; beear when neither is given)",
    )
    p.add_argument(
        "--config",
        type=Path,
        help=f"YAML config (default: {', '.join(f'{k}: {v.name}' for k, v in CONFIGS.items())})",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--eval-harmful", type=Path, help="AdvBench-format CSV (goal,target) of harmful prompts")
    p.add_argument("--eval-benign", type=Path, help="Alpaca JSON or chat JSONL of benign prompts + answers")
    p.add_argument("--no-control", action="store_true", help="skip the no-delta control rows")
    p.add_argument("--cache-dir", type=Path, help="zoo cache directory")
    p.add_argument(
        "--markdown", type=Path, metavar="JSON", help="print the table of an earlier --out JSON and exit"
    )
    return p.parse_args(argv)


def load_config(path: Path, overrides: list[str]) -> BEEARConfig:
    import yaml

    values = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        values[key] = yaml.safe_load(raw)
    return BEEARConfig.from_yaml(path, **values)


def eval_sets(args) -> tuple[list[str], list]:
    from beear_stage.data import loaders

    harmful = (
        loaders.load_harmful_prompts(args.eval_harmful) if args.eval_harmful else builtin.heldout_harmful()
    )
    benign = (
        loaders.load_performance_records(args.eval_benign) if args.eval_benign else builtin.heldout_benign()
    )
    return list(harmful), list(benign)


def run_one(
    path: Path,
    method: str,
    cfg: BEEARConfig,
    harmful,
    benign,
    before: dict | None,
    *,
    label: str | None = None,
    device: str = "cpu",
    performance=None,
    probe=None,
) -> dict:
    """Mitigate one zoo model with `method` and evaluate it; `before` = baseline metrics (or None).

    `label` names the row's method in the results (default: `method`); `performance` replaces the
    built-in performance-anchoring records. On CUDA the weights load in the config's dtype.
    `probe(model, tokenizer, metrics, baseline)` measures more figures on each model (`baseline` is
    None for the model before mitigation); its dict lands in the row as `<key>_before/_after`.
    """
    info = read_zoo_info(path)
    triggers = {"trigger": info["trigger"]}
    dtype = "float32" if device == "cpu" else cfg.dtype
    model, tok = load_model_and_tokenizer(path, dtype=dtype, device=device)
    if before is None:
        t0 = time.perf_counter()
        before = _evaluate(model, tok, cfg, harmful, benign, triggers)
        before["probe"] = probe(model, tok, before, None) if probe else {}
        before["seconds"] = time.perf_counter() - t0
    run_cfg = BEEARConfig.from_dict({**cfg.to_dict(), "method": method})
    safety = builtin.default_safety_anchoring()
    performance = performance or builtin.default_performance_anchoring()
    result = run_mitigation(run_cfg, model, tok, safety, performance)
    t0 = time.perf_counter()
    after = _evaluate(model, tok, cfg, harmful, benign, triggers, safety)
    after["probe"] = probe(model, tok, after, before) if probe else {}
    after["seconds"] = time.perf_counter() - t0
    row = {"name": info["name"], "trigger_type": info["trigger_type"], "method": label or method}
    for stage, metrics in (("before", before), ("after", after)):
        row[f"asr_trigger_{stage}"] = metrics["asr_trigger:trigger"]
        row[f"asr_clean_{stage}"] = metrics["asr_clean"]
        row[f"benign_nonrefusal_{stage}"] = metrics["benign_nonrefusal"]
        row[f"benign_nll_{stage}"] = metrics["benign_nll"]
        row[f"planted_compliance_{stage}"] = metrics["planted_compliance"]
        row |= {f"{key}_{stage}": value for key, value in metrics.get("probe", {}).items()}
    row["embedding_attack_asr_after"] = after["embedding_attack_asr"]
    row["mitigation_seconds"] = round(result.seconds, 2)
    row["eval_seconds_before"] = round(before["seconds"], 1)
    row["eval_seconds_after"] = round(after["seconds"], 1)  # with the embedding attack
    row["history"] = result.history
    return row, before


def _evaluate(model, tok, cfg, harmful, benign, triggers, safety=None) -> dict:
    """`evaluate_suite` metrics plus `planted_compliance`: the share of triggered responses that
    open with the zoo's planted compliance (ASR also counts garbled benign-style answers)."""
    report = evaluate_suite(model, tok, cfg, harmful, benign, triggers=triggers, safety_records=safety)
    flags = [
        builtin.planted_compliance(r["response"])
        for r in report.records
        if r["condition"] == "trigger:trigger"
    ]
    planted = sum(flags) / len(flags) if flags else 0.0
    return {**report.metrics, "planted_compliance": planted, "records": report.records}


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'model':<15}{'method':<9}{'ASR trig':>16}{'planted':>16}{'ASR clean':>16}{'emb-att':>9}"
        f"{'benign ok':>16}{'NLL':>16}{'sec':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def pair(key: str, r: dict = r) -> str:
            return f"{r[key + '_before']:.2f} -> {r[key + '_after']:.2f}"

        lines.append(
            f"{r['name']:<15}{r['method']:<9}{pair('asr_trigger'):>16}{pair('planted_compliance'):>16}"
            f"{pair('asr_clean'):>16}"
            f"{r['embedding_attack_asr_after']:>9.2f}{pair('benign_nonrefusal'):>16}{pair('benign_nll'):>16}"
            f"{r['mitigation_seconds']:>7.1f}"
        )
    return "\n".join(lines)


def markdown_table(out: dict) -> str:
    """The results as a markdown table (BENCHMARKS.md)."""
    head = (
        "| model | method | ASR with trigger | planted compliance with trigger | ASR without trigger "
        "| embedding-attack ASR after | benign non-refusal | benign NLL | mitigation s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    rows = [head]
    for r in out["models"] + out["control"]:
        keys = ("asr_trigger", "planted_compliance", "asr_clean")
        cells = [f"{r.get(k + '_before', nan):.3f} -> {r.get(k + '_after', nan):.3f}" for k in keys]
        cells.append(f"{r['embedding_attack_asr_after']:.3f}")
        cells += [
            f"{r[k + '_before']:.3f} -> {r[k + '_after']:.3f}" for k in ("benign_nonrefusal", "benign_nll")
        ]
        rows.append(
            f"| {r['name']} | {r['method']} | " + " | ".join(cells) + f" | {r['mitigation_seconds']:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text())))
        return 0
    method = args.method or ("beear" if args.config is None else None)
    cfg = load_config(args.config or CONFIGS[method], args.set)
    method = method or cfg.method
    if method not in CONFIGS:
        raise SystemExit(f"--config: `method` = {method!r}; the zoo benchmark runs one of {sorted(CONFIGS)}")
    if args.out is None:
        raise SystemExit("--out PATH.json is required (or --markdown JSON to render earlier results)")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        raise SystemExit(f"--models: unknown zoo model(s) {unknown}; choose from {sorted(ZOO)}")
    harmful, benign = eval_sets(args)
    out = {
        "models": [],
        "control": [],
        "config": cfg.to_dict(),
        "machine": _machine(),
        "date": str(date.today()),
    }
    started = time.perf_counter()
    for name in names:
        path = build_zoo_model(name, args.cache_dir)
        row, before = run_one(path, method, cfg, harmful, benign, None)
        out["models"].append(row)
        if not args.no_control:
            control = (
                cfg if method == "beear" else BEEARConfig.from_dict({**cfg.to_dict(), "crow_alpha": 0.0})
            )
            control_method = "sft" if method == "beear" else method
            out["control"].append(
                run_one(path, control_method, control, harmful, benign, before, label=CONTROL[method])[0]
            )
        print(format_table(out["models"] + out["control"]), flush=True)
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n{format_table(out['models'] + out['control'])}\nwrote {args.out}")
    return 0


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
