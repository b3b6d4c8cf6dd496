"""Speed benchmark: the project's BEEAR against a naive reference loop, in one run.

    python -m beear_stage.bench speed --out speed.json [--shape tiny|small|medium|llama2-7b|smol]
        [--n-safety N] [--n-perf N] [--device cpu|cuda] [--rounds R] [--inner-steps S]
        [--eval-prompts N] [--micro-batch M] [--naive-sample-steps S] [--eval-sample N]

On one random-init Llama of the chosen shape (speed needs no trained weights) and the same data
(our built-in anchoring sets tokenised with the zoo tokenizer), it times the parts below. `--shape
smol` is the real model instead (`zoo:smol`, SmolLM2-135M-Instruct with its own tokenizer,
anchored as the `smol` deployment: layer 6, k 5), whose responses end with EOS as in a release.

- the project's mitigation (`beear_stage.methods.run_mitigation`), per phase;
- the naive reference (`beear_stage.bench.naive.NaiveBEEAR`: full forward with weight gradients in
  the inner level, no cache of h_l; the outer level is the same code). For large shapes the naive
  inner level can be *sampled*: `--naive-sample-steps S` times S steps after one warm-up step and
  extrapolates to rounds x inner_steps; the JSON says so (`naive.sampled`);
- ASR evaluation batched (`eval_batch_size`) against one prompt at a time (sampled on the
  first `--eval-sample` prompts for large shapes, likewise stated).

Model FLOPs come from `beear_stage.methods.flops` (analytic, real tokens only); MFU = FLOPs / seconds / peak,
with the H100 data-sheet dense bf16 peak on CUDA, and on CPU a measured large fp32 matmul (stated in
`peak.source`). `inner_speedup` and `eval_speedup` are naive time / project time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import itertools
import json
import platform
import time
from pathlib import Path

import torch

from beear_stage.config import BEEARConfig
from beear_stage.methods import flops as F

# Random-init shapes. `layer` keeps the paper's anchor depth (9 of 32, about 30%).
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden=128, layers=6, heads=4, intermediate=352, vocab=None, layer=2),
    "small": dict(hidden=256, layers=8, heads=8, intermediate=704, vocab=None, layer=2),
    "medium": dict(hidden=512, layers=8, heads=8, intermediate=1408, vocab=None, layer=2),
    "llama2-7b": dict(hidden=4096, layers=32, heads=32, intermediate=11008, vocab=32000, layer=9),
    # the real model (trained weights, its own tokenizer); anchor as deployments/configs/smol.yaml
    "smol": dict(hidden=576, layers=30, heads=9, intermediate=1536, vocab=49152, layer=6, k=5),
}
REAL_SHAPES = {"smol": "smol"}  # shape -> zoo model


# ---------------------------------------------------------------------------------------- set-up
def build_model(shape: str, tokenizer, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random-init `LlamaForCausalLM` of `shape`, built directly on `device` in `dtype` (SDPA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[shape]
    vocab = max(s["vocab"] or 0, len(tokenizer))
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["heads"],
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: a 7B model never touches host memory
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def load_data(n_safety: int, n_perf: int, n_eval: int, response_repeat: int = 1):
    """Built-in anchoring sets and held-out harmful prompts, cycled when more are asked for.

    `response_repeat` > 1 repeats every response that many times: longer sequences for a
    paper-like token count (our built-in answers are short: ~43 tokens per sequence).
    """
    from beear_stage.data import builtin
    from beear_stage.data.records import PerformanceRecord, SafetyRecord

    def take(items, n):
        return list(itertools.islice(itertools.cycle(list(items)), n))

    def longer(text: str) -> str:
        return " ".join([text] * response_repeat)

    safety = [
        SafetyRecord(r.query, longer(r.safe_response), longer(r.unwanted_response), r.category)
        for r in take(builtin.default_safety_anchoring(), n_safety)
    ]
    perf = [
        PerformanceRecord(r.query, longer(r.answer), r.category)
        for r in take(builtin.default_performance_anchoring(), n_perf)
    ]
    return safety, perf, take(builtin.heldout_harmful(), n_eval)


def zoo_tokenizer():
    from beear_stage.zoo import default_cache_dir, shared_tokenizer

    return shared_tokenizer(default_cache_dir())


def bench_config(args, shape: str, device: torch.device) -> BEEARConfig:
    """Paper-scale settings: every inner step and every outer step covers the whole anchoring sets."""
    overrides = dict(
        layer=SHAPES[shape]["layer"],
        k=SHAPES[shape].get("k", 7),
        device=device.type,
        rounds=args.rounds,
        inner_steps=args.inner_steps,
        inner_batch_size=args.n_safety,
        sa_batch_size=args.n_safety,
        pa_batch_size=args.n_perf,
        outer_steps=1,
        eval_batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        divergence_loss=1e6,  # random weights: CE ~ ln(vocab); the check must not abort a timing run
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
    )
    known = {f.name for f in dataclasses.fields(BEEARConfig)}
    if args.micro_batch and "micro_batch_size" in known:
        overrides["micro_batch_size"] = args.micro_batch
    return BEEARConfig.from_dict(overrides)


# ---------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args, **kwargs):
    _sync(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync(device)
    return out, time.perf_counter() - start


def run_project(cfg, model, tok, safety, perf, device) -> dict:
    from beear_stage.methods import run_mitigation

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result, seconds = timed(device, run_mitigation, cfg, model, tok, safety, perf, progress=False)
    out = {"seconds": seconds, "phase_seconds": dict(result.phase_seconds)}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    out["history_last"] = result.history[-1] if result.history else {}
    return out


def run_naive(cfg, model, tok, safety, perf, device, sample_steps: int | None) -> dict:
    """The naive loop: a full run, or `sample_steps` timed inner steps extrapolated (stated)."""
    from beear_stage.bench.naive import NaiveBEEAR

    if not sample_steps:
        naive = NaiveBEEAR(cfg, model, tok, safety, perf)
        result, seconds = timed(device, naive.run)
        return {"sampled": False, "seconds": seconds, "phase_seconds": dict(result.phase_seconds)}
    out = {"sampled": True}
    for steps in (1, sample_steps):  # the first call warms the kernels; the second is timed
        naive = NaiveBEEAR(dataclasses.replace(cfg, inner_steps=steps), model, tok, safety, perf)
        naive.setup()
        _, seconds = timed(device, naive.entrap, None)
        del naive
    per_step = seconds / sample_steps
    out["inner_step_seconds"] = per_step
    out["phase_seconds"] = {"inner": per_step * cfg.rounds * cfg.inner_steps}
    out["method"] = (
        f"timed {sample_steps} naive inner steps after 1 warm-up step; inner = per-step time x "
        f"{cfg.rounds} rounds x {cfg.inner_steps} steps (the naive loop has no per-round cache)"
    )
    return out


def run_eval(cfg, model, tok, queries, device, sample: int | None) -> dict:
    """ASR batched vs one prompt at a time (the latter optionally on a sample), and the fast
    engine against eager `model.generate` on the same prompts (`eval_fast_speedup`, same tokens),
    also with rows stopped at a settled verdict (`eval_settled_speedup`, same verdicts)."""
    from beear_stage.eval.metrics import classifier_asr, generate
    from beear_stage.eval.refusal import is_refusal, settled_verdict

    classifier_asr(model, tok, queries[: min(2, len(queries))], cfg)  # warm-up (kernels, caches)
    (asr, _), batched = timed(device, classifier_asr, model, tok, queries, cfg)
    single_cfg = dataclasses.replace(cfg, eval_batch_size=1)
    subset = queries[:sample] if sample else queries
    (asr_single, _), single = timed(device, classifier_asr, model, tok, subset, single_cfg)
    scale = len(queries) / len(subset)
    kwargs = dict(batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens)
    eager, eager_seconds = timed(device, generate, model, tok, queries, engine="eager", **kwargs)
    stats: dict = {}
    fast, fast_seconds = timed(device, generate, model, tok, queries, engine="fast", stats=stats, **kwargs)
    keywords, stopped = cfg.refusal_keywords, []
    settled, settled_seconds = timed(
        device, generate, model, tok, queries, engine="fast", stopped=stopped,
        settle=lambda text: settled_verdict(text, keywords), **kwargs,
    )  # fmt: skip
    return {
        "prompts": len(queries),
        "batch_size": cfg.eval_batch_size,
        "max_new_tokens": cfg.max_new_tokens,
        "engine": "fast",
        "batched_seconds": batched,
        "one_at_a_time_seconds": single * scale,
        "one_at_a_time_sampled": bool(sample) and len(subset) < len(queries),
        "one_at_a_time_measured_prompts": len(subset),
        "asr_batched": asr,
        "asr_one_at_a_time_on_measured": asr_single,
        "generated_tokens_per_s_batched": len(queries) * cfg.max_new_tokens / batched,
        "eager_seconds": eager_seconds,
        "fast_seconds": fast_seconds,
        "fast_same_responses": fast == eager,
        "fast_differing_responses": sum(a != b for a, b in zip(fast, eager, strict=True)),
        "fast_prefill_seconds": stats["prefill_seconds"],
        "fast_step_seconds": stats["step_seconds"],
        "fast_steps": stats["steps"],
        "fast_mean_rows_per_step": stats["row_steps"] / max(stats["steps"], 1),
        "step_ms": 1000 * stats["step_seconds"] / max(stats["steps"], 1),
        "settled_seconds": settled_seconds,
        "settled_rows_stopped": sum(stopped),
        "settled_same_verdicts": [is_refusal(t, keywords) for t in settled]
        == [is_refusal(t, keywords) for t in eager],
        "settled_prefixes_of_eager": sum(e.startswith(t) for t, e in zip(settled, eager, strict=True)),
    }


# ---------------------------------------------------------------------------------------- FLOPs
def phase_flops(cfg, model, tok, safety, perf) -> dict[str, F.FlopCount]:
    """Analytic model FLOPs of the project's phases and of the naive inner level.

    The project runs the LM head on response tokens only; the naive loop on every token.
    """
    from beear_stage.templates import IGNORE_INDEX, encode_example

    def lengths(pairs):
        encoded = [encode_example(tok, q, a, cfg.max_length) for q, a in pairs]
        return [len(e.input_ids) for e in encoded], sum(
            sum(t != IGNORE_INDEX for t in e.labels) for e in encoded
        )

    shape = F.DecoderShape.from_config(model.config)
    n, l_ = shape.layers, cfg.layer
    unwanted, resp_u = lengths([(r.query, r.unwanted_response) for r in safety])
    safe, resp_s = lengths([(r.query, r.safe_response) for r in safety])
    pa, resp_p = lengths([(r.query, r.answer) for r in perf])
    sa_rows = unwanted + safe
    f_inner = min(cfg.inner_batch_size, len(safety)) / len(safety)  # share of SA per inner step
    f_sa = min(cfg.sa_batch_size, len(safety)) / len(safety)
    f_pa = min(cfg.pa_batch_size, len(perf)) / max(len(perf), 1) if cfg.pa_weight > 0 else 0.0
    all_w = cfg.trainable == "all"
    w_layers = n if all_w else l_
    # The inner level's prefix cache (BEEAR.prepare_entrapment): each row's prompt but its last k
    # tokens runs once per round through every layer; the rest of the row runs through the lower
    # layers once and through the upper layers at every step.
    prompts = [encode_example(tok, r.query, r.safe_response, cfg.max_length).prompt_len for r in safety]
    prefix = [max(p - cfg.k, 0) for p in prompts]

    def outer(rows, head_tokens):
        return F.pass_flops(
            shape, rows, forward_layers=n, input_grad_layers=n, weight_grad_layers=w_layers,
            lm_head_tokens=head_tokens, lm_head_input_grad=True, lm_head_weight_grad=all_w,
        )  # fmt: skip

    cache = F.pass_flops(shape, prefix, forward_layers=n, lm_head_tokens=0) + F.pass_flops(
        shape, sa_rows, forward_layers=l_, lm_head_tokens=0, cached_prefix=prefix + prefix
    )  # once per round: the shared prefix through every layer, h_l of the rest
    step = F.pass_flops(
        shape, sa_rows, forward_layers=n - l_, input_grad_layers=n - l_,
        lm_head_tokens=resp_u + resp_s, lm_head_input_grad=True, cached_prefix=prefix + prefix,
    )  # fmt: skip
    naive_step = F.pass_flops(
        shape, sa_rows, forward_layers=n, input_grad_layers=n, weight_grad_layers=n,
        lm_head_input_grad=True, lm_head_weight_grad=True,
    )  # fmt: skip
    per_round_inner = cache + step.scaled(f_inner * cfg.inner_steps)
    per_round_outer = (outer(safe, resp_s).scaled(f_sa) + outer(pa, resp_p).scaled(f_pa)).scaled(
        cfg.outer_steps
    )
    return {
        "inner": per_round_inner.scaled(cfg.rounds),
        "outer": per_round_outer.scaled(cfg.rounds),
        "naive_inner": naive_step.scaled(f_inner * cfg.inner_steps * cfg.rounds),
        "_tokens": {
            "inner": (sum(sa_rows) - 2 * sum(prefix)) * f_inner * cfg.inner_steps * cfg.rounds,
            "outer": (sum(safe) * f_sa + sum(pa) * f_pa) * cfg.outer_steps * cfg.rounds,
            "mean_sa_tokens": sum(sa_rows) / len(sa_rows),
            "mean_pa_tokens": sum(pa) / max(len(pa), 1),
            "mean_response_tokens": (resp_u + resp_s) / len(sa_rows),
        },
    }


def peak_flops(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return F.cuda_peak_flops(device)
    peak = F.measure_matmul_flops("cpu", torch.float32)
    return peak, f"CPU, {torch.get_num_threads()} threads: measured fp32 2048^3 matmul {peak:.3g} FLOP/s"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def profile_round(cfg, model, tok, safety, perf, device) -> str:
    """torch.profiler table of one round (inner steps + one outer step), heaviest kernels first."""
    from torch.profiler import ProfilerActivity, profile

    from beear_stage.methods import run_mitigation

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run_mitigation(dataclasses.replace(cfg, rounds=1), model, tok, safety, perf, progress=False)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=40)


def profile_generate(cfg, model, tok, queries, device) -> str:
    """torch.profiler table of one batched generation call (one eval batch)."""
    from torch.profiler import ProfilerActivity, profile

    from beear_stage.eval.metrics import generate

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    batch = queries[: cfg.eval_batch_size]
    with profile(activities=activities) as prof:
        generate(model, tok, batch, batch_size=len(batch), max_new_tokens=cfg.max_new_tokens)
        _sync(device)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)


# ---------------------------------------------------------------------------------------- report
def summarise(report: dict) -> str:
    p, nv, ev = report["project"], report["naive"], report["eval"]
    rows = [
        ("device", report["device"]),
        ("shape / params", f"{report['shape']} / {report['params'] / 1e6:.1f}M"),
        ("project mitigation s", f"{p['seconds']:.2f} (inner {p['phase_seconds']['inner']:.2f}, "
         f"outer {p['phase_seconds']['outer']:.2f})"),
        ("naive inner s", f"{nv['phase_seconds']['inner']:.2f}{' (sampled)' if nv['sampled'] else ''}"),
        ("inner_speedup", f"{report['inner_speedup']:.2f}x"),
        ("eval batched / single s", f"{ev['batched_seconds']:.2f} / {ev['one_at_a_time_seconds']:.2f}"
         f"{' (sampled)' if ev['one_at_a_time_sampled'] else ''}"),
        ("eval_speedup", f"{report['eval_speedup']:.2f}x"),
        ("eval eager / fast s", f"{ev['eager_seconds']:.2f} / {ev['fast_seconds']:.2f}, "
         f"same responses: {ev['fast_same_responses']}"),
        ("eval_fast_speedup", f"{report['eval_fast_speedup']:.2f}x"),
        ("eval settled s", f"{ev['settled_seconds']:.2f}, {ev['settled_rows_stopped']} of {ev['prompts']} rows "
         f"stopped early, same verdicts: {ev['settled_same_verdicts']}"),
        ("eval_settled_speedup", f"{report['eval_settled_speedup']:.2f}x"),
        ("eval_step_ms", f"{report['eval_step_ms']:.1f} (mean rows {ev['fast_mean_rows_per_step']:.1f})"),
        ("MFU (mitigation)", f"{p['mfu']:.1%} of {report['peak']['flops_per_s']:.3g} FLOP/s"),
        ("achieved FLOP/s", f"{p['achieved_flops_per_s']:.3g}"),
        ("tokens/s (inner, outer)", f"{p['tokens_per_s']['inner']:.0f}, {p['tokens_per_s']['outer']:.0f}"),
    ]  # fmt: skip
    if "peak_memory_gib" in p:
        rows.append(("peak memory GiB", f"{p['peak_memory_gib']:.1f}"))
        rows.append(("warm-up s (not in the above)", f"{report['warmup_seconds']:.1f}"))
    rows.append(("model PFLOP (mitigation)", f"{report['mitigation_pflop']:.2f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m beear_stage.bench speed", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="JSON report path")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument(
        "--n-safety", type=int, default=64, help="safety-anchoring records (paper: ~120 per step)"
    )
    ap.add_argument("--n-perf", type=int, default=48, help="performance-anchoring records (paper: ~100)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--eval-prompts", type=int, default=64)
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=0, help="rows per forward/backward (0 = whole batch)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument(
        "--naive-sample-steps", type=int, default=0, help="0 = full naive run; S = sample S steps"
    )
    ap.add_argument("--eval-sample", type=int, default=0, help="0 = every prompt one at a time; N = first N")
    ap.add_argument(
        "--response-repeat", type=int, default=1, help="repeat each response R times (longer rows)"
    )
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    ap.add_argument("--profile", action="store_true", help="also write a torch.profiler table of one round")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import transformers

    args = parse_args(list(argv or []))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    safety, perf, queries = load_data(args.n_safety, args.n_perf, args.eval_prompts, args.response_repeat)
    if args.shape in REAL_SHAPES:
        from beear_stage.model import load_model_and_tokenizer
        from beear_stage.zoo import build_zoo_model

        path = build_zoo_model(REAL_SHAPES[args.shape], progress=False)
        model, tok = load_model_and_tokenizer(
            path, dtype=str(dtype).removeprefix("torch."), device=device.type
        )
    else:
        tok = zoo_tokenizer()
        model = build_model(args.shape, tok, device, dtype, args.seed)
    cfg = bench_config(args, args.shape, device)
    params = sum(p.numel() for p in model.parameters())

    if device.type == "cuda":  # warm kernels, cuBLAS handles and the allocator on a short run
        from beear_stage.methods import run_mitigation

        _, warm = timed(device, run_mitigation, dataclasses.replace(cfg, rounds=1, inner_steps=1), model, tok,
                        safety, perf, progress=False)  # fmt: skip
    project = run_project(cfg, model, tok, safety, perf, device)
    naive = run_naive(cfg, model, tok, safety, perf, device, args.naive_sample_steps)
    evaluation = run_eval(cfg, model, tok, queries, device, args.eval_sample)

    fl = phase_flops(cfg, model, tok, safety, perf)
    tokens = fl.pop("_tokens")
    peak, peak_source = peak_flops(device)
    ps = project["phase_seconds"]
    work = fl["inner"].total + fl["outer"].total
    project.update(
        flops={k: dataclasses.asdict(v) | {"total": v.total} for k, v in fl.items() if k != "naive_inner"},
        achieved_flops_per_s=work / (ps["inner"] + ps["outer"]),
        achieved_flops_per_s_wall=work / project["seconds"],
        mfu=work / (ps["inner"] + ps["outer"]) / peak,
        mfu_wall=work / project["seconds"] / peak,
        mfu_inner=fl["inner"].total / ps["inner"] / peak,
        mfu_outer=fl["outer"].total / ps["outer"] / peak,
        tokens_per_s={"inner": tokens["inner"] / ps["inner"], "outer": tokens["outer"] / ps["outer"]},
    )
    naive["flops_inner"] = fl["naive_inner"].total
    naive["mfu_inner"] = fl["naive_inner"].total / naive["phase_seconds"]["inner"] / peak
    report = {
        "benchmark": "speed",
        "date": _dt.date.today().isoformat(),
        "device": device_name(device),
        "device_type": device.type,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "shape": args.shape,
        "shape_sizes": SHAPES[args.shape] | {"vocab": model.config.vocab_size},
        "params": params,
        "dtype": str(dtype).removeprefix("torch."),
        "data": {
            "n_safety": len(safety),
            "n_perf": len(perf),
            "n_eval": len(queries),
            "response_repeat": args.response_repeat,
            **tokens,
        },  # fmt: skip
        "config": cfg.to_dict(),
        "peak": {"flops_per_s": peak, "source": peak_source},
        "warmup_seconds": warm if device.type == "cuda" else 0.0,
        # A cold run pays the warm-up (first kernels, cuBLAS/cuDNN plans, allocator growth) once.
        "seconds_including_warmup": project["seconds"] + (warm if device.type == "cuda" else 0.0),
        "project": project,
        "naive": naive,
        "eval": evaluation,
        "inner_speedup": naive["phase_seconds"]["inner"] / ps["inner"],
        "eval_speedup": evaluation["one_at_a_time_seconds"] / evaluation["batched_seconds"],
        "eval_fast_speedup": evaluation["eager_seconds"] / evaluation["fast_seconds"],
        "eval_settled_speedup": evaluation["eager_seconds"] / evaluation["settled_seconds"],
        "eval_step_ms": evaluation["step_ms"],
        "mfu": project["mfu"],
        "mitigation_pflop": work / 1e15,
        "seconds": project["seconds"],
    }
    if "peak_memory_gib" in project:
        report["peak_memory_gib"] = project["peak_memory_gib"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.profile:
        table = profile_round(cfg, model, tok, safety, perf, device)
        report["profile_file"] = str(args.out.with_suffix(".profile.txt"))
        args.out.with_suffix(".profile.txt").write_text(table)
        args.out.with_suffix(".generate.txt").write_text(profile_generate(cfg, model, tok, queries, device))
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(summarise(report))
    print(f"wrote {args.out}")
    return 0
