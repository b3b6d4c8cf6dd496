"""Command line of a data-parallel mitigation: one checkpoint in, the mitigated checkpoint out.

`accelerate launch -m beear_stage.methods.launch ...` (or torchrun) starts one process per GPU;
`distributed.py` holds the library side (sharding, gradient sync) that the trainers use.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as torch_dist

from beear_stage.methods.distributed import DataParallel, full_state_dict, init_from_env, shard_model

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """`accelerate launch -m beear_stage.methods.launch --checkpoint DIR --config YAML --out DIR [--fsdp]`.

    Mitigates one checkpoint with one process per GPU (or CPU processes with gloo) and saves the
    result from rank 0. Anchoring data: the built-in sets, or `--safety` / `--performance` files in
    any format `beear_stage.data.loaders` reads.
    """
    import argparse
    from pathlib import Path

    from beear_stage.config import BEEARConfig
    from beear_stage.data import builtin, loaders
    from beear_stage.methods.registry import run_mitigation
    from beear_stage.model import load_model_and_tokenizer
    from beear_stage.release.checkpointing import save_checkpoint

    ap = argparse.ArgumentParser(
        prog="python -m beear_stage.methods.launch", description=main.__doc__.split("\n")[0]
    )
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--config", type=Path, help="BEEARConfig YAML (default: the config defaults)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--safety", type=Path)
    ap.add_argument("--performance", type=Path)
    ap.add_argument("--fsdp", action="store_true", help="shard weights and optimiser state (FSDP2)")
    args = ap.parse_args(argv)

    dist = init_from_env(backend=None if torch.cuda.is_available() else "gloo")
    cfg = BEEARConfig.from_yaml(args.config) if args.config else BEEARConfig()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    model, tok = load_model_and_tokenizer(args.checkpoint, dtype=cfg.dtype, device=device)
    safety = loaders.load_safety_records(args.safety) if args.safety else builtin.default_safety_anchoring()
    perf = (
        loaders.load_performance_records(args.performance)
        if args.performance
        else builtin.default_performance_anchoring()
    )
    sharded = args.fsdp and isinstance(dist, DataParallel)
    if sharded:
        shard_model(model, dist)
    result = run_mitigation(cfg, model, tok, safety, perf, progress=dist.rank == 0, dist=dist)
    state = full_state_dict(model) if sharded else None  # every rank joins the all-gathers
    if dist.rank == 0:
        if sharded:  # a plain (unsharded) copy to save
            model, _ = load_model_and_tokenizer(args.checkpoint, dtype=cfg.dtype, device="cpu")
            model.load_state_dict(state)
        save_checkpoint(model, tok, args.out, metadata={"beear": cfg.to_dict(), "history": result.history})
        log.info(
            "saved %s after %.1f s of mitigation on %d processes", args.out, result.seconds, dist.world_size
        )
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
