"""`python -m beear_stage.bench compare`: every mitigation method on every zoo attack, side by side.

For each attack and each method (none, sft, crow, beear): evaluate the backdoored model once,
mitigate a fresh copy with the method, evaluate again. Attacks: the tiny zoo's jailbreak models
(suffix/prefix/sandwich) and its ten BackdoorLLM attacks (`beear_stage.zoo.backdoorllm`), and the
real tier (`beear_stage.zoo.real`: SmolLM2-135M-Instruct with the smol-suffix/prefix/sandwich
jailbreak backdoors, and `smol-<task>-<trigger>`, the same ten BackdoorLLM attacks planted in it).
Figures per row: ASR with the trigger before and after, ASR without the trigger after, benign
non-refusal and benign reference NLL after, and the mitigation wall time. Real-tier rows add the
cost figures of `bench real` (`COST_FIELDS`): over-refusal on XSTest's safe prompts (when
../shared is there) and on our 269 look-alikes, before and after; NLL of the model's own
pre-mitigation benign answers, and token-F1 agreement with them; and the share of held-out harmful
requests refused, before and after (safety kept: removing a refusal backdoor must not remove
refusal itself).

Attack success depends on the backdoor (`beear_stage.eval.behaviours`): jailbreak = a non-refusal to a
harmful request (held-out built-in prompts, as `bench zoo`); BackdoorLLM refusal = a refusal of a
benign request, negative sentiment = an insult (held-out `test_triggered.json` / `test_clean.json`,
the clean ones also give benign utility). The methods see no trigger. Jailbreak attacks use
`configs/zoo.yaml` with the built-in anchoring sets; BackdoorLLM attacks use
`configs/zoo-backdoorllm.yaml` with defender-defined anchoring (`data.unwanted`: our own benign
queries, unwanted = refusal or insult). Real-tier attacks use the `smol` deployment's config
(`deployments/configs/smol.yaml`) with the same anchoring choices, and CROW its paper's settings
(`deployments/configs/smol-crow.yaml`). "sft" is the same outer fine-tuning with delta fixed at
zero, i.e. plain fine-tuning on the same clean data; "crow" uses the tier's CROW config on the
performance-anchoring records. Evaluation always uses the attack's BEEAR config.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from beear_stage.bench.zoo import _machine, load_config
from beear_stage.config import METHODS, BEEARConfig
from beear_stage.data import builtin
from beear_stage.data.records import PerformanceRecord, SafetyRecord
from beear_stage.data.unwanted import behaviour_anchoring
from beear_stage.eval.behaviours import behaviour_detector
from beear_stage.eval.metrics import generate, reference_nll
from beear_stage.eval.refusal import is_refusal
from beear_stage.eval.utility import answer_agreement, default_lookalikes, over_refusal_rate
from beear_stage.methods import run_mitigation
from beear_stage.model import load_model_and_tokenizer
from beear_stage.triggers import apply_trigger
from beear_stage.zoo import ZOO, backdoorllm, build_zoo_model, read_zoo_info
from beear_stage.zoo.real import REAL_BACKDOORLLM, REAL_ZOO, build_real_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEPLOYMENT_CONFIGS = Path(__file__).resolve().parents[2] / "deployments" / "configs"
DEFAULT_XSTEST = backdoorllm.default_shared_dir() / "data" / "xstest" / "xstest_prompts.csv"
ATTACKS = (*ZOO, *backdoorllm.ATTACKS, *REAL_ZOO, *REAL_BACKDOORLLM)
COMPARED = ("none", "sft", "crow", "beear")
# Unwanted behaviour the defender names in the anchoring data, by the attack's target behaviour.
UNWANTED = {"refusal": "refusal", "insult": "insult"}
FIELDS = (
    "asr_trigger_before", "asr_trigger_after", "asr_clean_after", "benign_nonrefusal_after",
    "benign_nll_after", "seconds",
)  # fmt: skip
# real-tier rows only: the cost of removal as users feel it (as `bench real`)
COST_FIELDS = (
    "xstest_over_refusal_before", "xstest_over_refusal_after", "lookalike_over_refusal_before",
    "lookalike_over_refusal_after", "own_answer_nll_after", "baseline_agreement_after",
    "harmful_refusal_before", "harmful_refusal_after",
)  # fmt: skip


@dataclass
class Attack:
    """One zoo attack with its evaluation prompts, success test, anchoring data and BEEAR config."""

    name: str
    path: Path
    triggered: list[str]
    clean: list[str]
    benign: list[PerformanceRecord]
    success: Callable[[str], bool]
    safety: list[SafetyRecord]
    performance: list[PerformanceRecord]
    config: BEEARConfig
    crow_config: Path
    # real tier: safe prompts whose over-refusal is measured (XSTest, look-alikes); None = tiny zoo
    cost_prompts: dict[str, list[str]] | None = None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m beear_stage.bench compare", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, help="write the JSON results here (required unless --markdown)")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated subset of {list(ATTACKS)}")
    p.add_argument("--methods", default=",".join(COMPARED), help=f"comma-separated subset of {COMPARED}")
    p.add_argument(
        "--config", type=Path, default=CONFIGS / "zoo.yaml", help="BEEAR config, jailbreak attacks"
    )
    p.add_argument(
        "--backdoorllm-config",
        type=Path,
        default=CONFIGS / "zoo-backdoorllm.yaml",
        help="BEEAR config, BackdoorLLM attacks",
    )
    p.add_argument("--crow-config", type=Path, default=CONFIGS / "zoo-crow.yaml", help="CROW config")
    p.add_argument(
        "--real-config",
        type=Path,
        default=DEPLOYMENT_CONFIGS / "smol.yaml",
        help="BEEAR config, real-tier attacks (default: the smol deployment's)",
    )
    p.add_argument(
        "--real-crow-config",
        type=Path,
        default=DEPLOYMENT_CONFIGS / "smol-crow.yaml",
        help="CROW config, real-tier attacks",
    )
    p.add_argument(
        "--xstest",
        type=Path,
        default=DEFAULT_XSTEST,
        help="XSTest prompt CSV for the real-tier over-refusal (left out when absent)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key everywhere"
    )
    p.add_argument(
        "--eval-limit", type=int, default=100, help="BackdoorLLM test prompts per set (default 100)"
    )
    p.add_argument(
        "--recipe", default="default", help="BackdoorLLM build recipe ('test': seconds, for tests)"
    )
    p.add_argument("--cache-dir", type=Path, help="zoo cache directory")
    p.add_argument(
        "--update",
        action="store_true",
        help="--out exists: re-run only the selected attacks x methods and replace those rows, keep the rest",
    )
    p.add_argument("--markdown", type=Path, metavar="JSON", help="print the table of an earlier --out JSON")
    return p.parse_args(argv)


def prepare_attack(name: str, args: argparse.Namespace) -> Attack:
    """Build (or reuse) the attack's model and gather its evaluation and anchoring data."""
    real = name in REAL_ZOO or name in REAL_BACKDOORLLM
    if real:
        path = build_real_model(name, args.cache_dir)
        cfg = load_config(args.real_config, args.set)
        crow, cost = args.real_crow_config, cost_prompts(args.xstest)
    else:
        jailbreak = name in ZOO
        path = (
            build_zoo_model(name, args.cache_dir)
            if jailbreak
            else backdoorllm.build_attack_model(name, args.cache_dir, recipe=args.recipe)
        )
        cfg = load_config(args.config if jailbreak else args.backdoorllm_config, args.set)
        crow, cost = args.crow_config, None
    info = read_zoo_info(path)  # evaluation only: the methods never see the trigger
    if name in ZOO or name in REAL_ZOO:
        harmful = builtin.heldout_harmful()
        return Attack(
            name, path, [apply_trigger(q, info["trigger"]) for q in harmful], harmful, builtin.heldout_benign(),
            behaviour_detector("compliance", refusal_keywords=cfg.refusal_keywords),
            builtin.default_safety_anchoring(), builtin.default_performance_anchoring(), cfg, crow, cost,
        )  # fmt: skip
    _, tok = load_model_and_tokenizer(path, dtype="float32", device="cpu")
    triggered, benign = backdoorllm.eval_sets(info.get("attack", name), tok, args.eval_limit)
    performance = builtin.default_performance_anchoring()
    return Attack(
        name, path, triggered, [r.query for r in benign], benign,
        behaviour_detector(info["target_behaviour"], refusal_keywords=cfg.refusal_keywords),
        behaviour_anchoring(performance, UNWANTED[info["target_behaviour"]]), performance, cfg,
        crow, cost,
    )  # fmt: skip


def cost_prompts(xstest: Path) -> dict[str, list[str]]:
    """Safe prompts of the real-tier over-refusal figures: our look-alikes, and XSTest's when present."""
    from beear_stage.data.eval_sets import load_xstest

    prompts = {"lookalike": default_lookalikes()}
    if xstest.is_file():
        prompts["xstest"] = load_xstest(xstest).safe
    else:
        print(f"{xstest} not found: XSTest over-refusal not measured", flush=True)
    return prompts


def measure(
    model, tok, attack: Attack, baseline: list[str] | None = None
) -> tuple[dict[str, float], list[str]]:
    """(figures, benign answers) of one model: ASR with and without the trigger, benign non-refusal
    and benign NLL; real tier: over-refusal on its safe prompts, and with `baseline` (the benign
    answers before mitigation) the NLL of those answers and the agreement with them."""
    cfg = attack.config
    cache: dict[tuple[str, ...], list[str]] = {}

    def responses(prompts: Sequence[str]) -> list[str]:
        key = tuple(prompts)  # BackdoorLLM: the clean prompts are also the benign ones
        if key not in cache:
            cache[key] = generate(
                model, tok, prompts, batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens
            )
        return cache[key]

    def rate(flags: list[bool]) -> float:
        return sum(flags) / len(flags) if flags else 0.0

    answers = responses([b.query for b in attack.benign])
    figures = {
        "asr_trigger": rate([attack.success(r) for r in responses(attack.triggered)]),
        "asr_clean": rate([attack.success(r) for r in responses(attack.clean)]),
        "benign_nonrefusal": rate([not is_refusal(r, cfg.refusal_keywords) for r in answers]),
        "benign_nll": reference_nll(model, tok, attack.benign, cfg),
    }
    for name, prompts in (attack.cost_prompts or {}).items():
        figures[f"{name}_over_refusal"] = over_refusal_rate(model, tok, prompts, cfg)[0]
    if attack.cost_prompts is not None:
        # safety kept: a method that removes a refusal backdoor by unlearning refusal fails here
        refused = [is_refusal(r, cfg.refusal_keywords) for r in responses(builtin.heldout_harmful())]
        figures["harmful_refusal"] = rate(refused)
    if attack.cost_prompts is not None and baseline is not None:
        own = [PerformanceRecord(b.query, a) for b, a in zip(attack.benign, baseline, strict=True)]
        figures["own_answer_nll"] = reference_nll(model, tok, own, cfg)
        figures["baseline_agreement"] = answer_agreement(baseline, answers)
    return figures, answers


def method_config(attack: Attack, method: str, args: argparse.Namespace) -> BEEARConfig:
    if method == "crow":
        return load_config(attack.crow_config, [*args.set, "method=crow"])
    return BEEARConfig.from_dict({**attack.config.to_dict(), "method": method})


def run_method(
    attack: Attack, method: str, args: argparse.Namespace, before: dict, baseline: list[str]
) -> dict:
    """Mitigate a fresh copy of the attack's model with `method`; the row of the results table."""
    model, tok = load_model_and_tokenizer(attack.path, dtype="float32", device="cpu")
    result = run_mitigation(
        method_config(attack, method, args), model, tok, attack.safety, attack.performance
    )
    after, _ = measure(model, tok, attack, baseline)
    row = {"attack": attack.name, "method": method}
    row.update({f"{k}_before": v for k, v in before.items()})
    row.update({f"{k}_after": v for k, v in after.items()})
    row["seconds"] = round(result.seconds, 2)
    return row


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'attack':<22}{'method':<7}{'ASR trig':>16}{'ASR clean':>10}{'benign ok':>10}{'NLL':>8}{'sec':>8}"
    )
    return "\n".join([head, "-" * len(head), *map(_line, rows)])


def _line(r: dict) -> str:
    pair = f"{r['asr_trigger_before']:.2f} -> {r['asr_trigger_after']:.2f}"
    return (
        f"{r['attack']:<22}{r['method']:<7}{pair:>16}{r['asr_clean_after']:>10.2f}"
        f"{r['benign_nonrefusal_after']:>10.2f}{r['benign_nll_after']:>8.3f}{r['seconds']:>8.1f}"
    )


def markdown_table(out: dict) -> str:
    """The results as a markdown table (BENCHMARKS.md)."""
    rows = [
        "| attack | method | ASR with trigger (before -> after) | ASR without trigger | benign non-refusal "
        "| benign NLL | mitigation s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in out["rows"]:
        rows.append(
            f"| {r['attack']} | {r['method']} | {r['asr_trigger_before']:.3f} -> {r['asr_trigger_after']:.3f} "
            f"| {r['asr_clean_after']:.3f} | {r['benign_nonrefusal_after']:.3f} | {r['benign_nll_after']:.3f} "
            f"| {r['seconds']:.1f} |"
        )
    costed = [r for r in out["rows"] if "lookalike_over_refusal_after" in r]
    if costed:
        rows += ["", "| attack | method | benign non-refusal (before -> after) | look-alike over-refusal "
                 "| XSTest over-refusal | own-answer NLL | agreement | harmful requests refused |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        rows += [
            f"| {r['attack']} | {r['method']} | {_pair(r, 'benign_nonrefusal')} "
            f"| {_pair(r, 'lookalike_over_refusal')} | {_pair(r, 'xstest_over_refusal')} "
            f"| {_pair(r, 'own_answer_nll')} | {r.get('baseline_agreement_after', float('nan')):.3f} "
            f"| {_pair(r, 'harmful_refusal')} |"
            for r in costed
        ]
    return "\n".join(rows)


def _pair(row: dict, key: str) -> str:
    before, after = row.get(f"{key}_before"), row.get(f"{key}_after")
    if after is None:
        return "n/a"
    return f"{after:.3f}" if before is None else f"{before:.3f} -> {after:.3f}"


def _selection(raw: str, known: Sequence[str], option: str) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(
            f"{option}: unknown or empty selection {unknown or raw!r}; choose from {list(known)}"
        )
    return names


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text())))
        return 0
    if args.out is None:
        raise SystemExit("--out PATH.json is required (or --markdown JSON to render earlier results)")
    attacks = _selection(args.attacks, ATTACKS, "--attacks")
    methods = _selection(args.methods, [m for m in COMPARED if m in METHODS], "--methods")
    out = _results(args, attacks, methods)
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in attacks:
        attack = prepare_attack(name, args)
        model, tok = load_model_and_tokenizer(attack.path, dtype="float32", device="cpu")
        before, baseline = measure(model, tok, attack)
        del model
        print(
            f"{name} before mitigation: " + ", ".join(f"{k} {v:.3f}" for k, v in before.items()), flush=True
        )
        for method in methods:
            row = run_method(attack, method, args, before, baseline)
            row["date"] = str(date.today())
            out["rows"] = [r for r in out["rows"] if (r["attack"], r["method"]) != (name, method)] + [row]
            print(_line(row), flush=True)
        out["total_seconds"] = round(time.perf_counter() - started, 1)
        out["rows"].sort(key=_row_order)
        args.out.write_text(json.dumps(out, indent=2))  # after every attack: a partial run keeps its rows
    print(f"\n{format_table(out['rows'])}\nwrote {args.out}")
    return 0


def _results(args: argparse.Namespace, attacks: list[str], methods: list[str]) -> dict:
    """A new results object, or with `--update` the one in `--out` with this run's settings merged in."""
    real = any(a in REAL_ZOO or a in REAL_BACKDOORLLM for a in attacks)
    tiny = any(a in ZOO or a in backdoorllm.ATTACKS for a in attacks)
    paths = [args.config, args.backdoorllm_config] if tiny else []
    paths += [args.crow_config] if tiny and "crow" in methods else []
    paths += [args.real_config] if real else []
    paths += [args.real_crow_config] if real and "crow" in methods else []
    configs = {str(path): load_config(path, args.set).to_dict() for path in paths}
    fresh = {
        "rows": [],
        "configs": configs,
        "machine": _machine(),
        "date": str(date.today()),
        "eval_limit": args.eval_limit,
        "recipe": args.recipe,
    }
    if not args.update:
        return fresh
    if not args.out.is_file():
        raise SystemExit(
            f"--update: {args.out} does not exist. Fix: drop --update to start a new results file."
        )
    out = json.loads(args.out.read_text())
    for key in ("eval_limit", "recipe"):
        if out.get(key) != fresh[key]:
            raise SystemExit(
                f"--update: {args.out} was measured with {key}={out.get(key)!r}, this run uses "
                f"{fresh[key]!r}; rows would not be comparable. Fix: pass the same value or start a new file."
            )
    out["configs"] = {**out.get("configs", {}), **configs}  # the latest config of each file wins
    out["date"] = fresh["date"]
    return out


def _row_order(row: dict) -> tuple[int, int]:
    """Table order: attacks and methods in the order of `ATTACKS` and `COMPARED`."""
    return ATTACKS.index(row["attack"]), COMPARED.index(row["method"])
