"""Data-parallel BEEAR: two CPU processes (gloo, launched the way `accelerate launch` does) stay in
lock-step and reproduce the single-process run."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import performance_records, safety_records, tiny_model, tiny_tokenizer

from beear_stage.config import BEEARConfig
from beear_stage.methods import run_mitigation
from beear_stage.methods.distributed import (
    DataParallel,
    SingleProcess,
    full_state_dict,
    init_from_env,
    shard_model,
)

N = 8  # records per anchoring set; every step covers the whole set, so 2 x 4 rows == 1 x 8 rows


def _cfg(**kw):
    base = dict(layer=2, k=3, rounds=2, inner_steps=2, inner_lr=0.1, outer_lr=1e-3, inner_batch_size=N,
                sa_batch_size=N, pa_batch_size=N, micro_batch_size=3, max_grad_norm=1.0)  # fmt: skip
    base.update(kw)
    return BEEARConfig(**base)


def _run(dist, fsdp: bool = False) -> tuple[list[dict], torch.Tensor]:
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0)
    if fsdp:
        assert shard_model(model, dist) == 4 + 3, "4 layers + embeddings, final norm, LM head"
    records = safety_records(N), performance_records(N)
    result = run_mitigation(_cfg(), model, tok, *records, progress=False, dist=dist)
    flat = torch.cat([t.flatten() for t in full_state_dict(model).values()])
    return result.history, flat


def _worker(rank: int, world: int, port: int, out_dir: str, fsdp: bool) -> None:
    # What `accelerate launch` / torchrun export for each process.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))  # fmt: skip
    dist = init_from_env(backend="gloo")
    assert isinstance(dist, DataParallel) and dist.world_size == world
    history, flat = _run(dist, fsdp)
    torch.save(flat, os.path.join(out_dir, f"params{rank}.pt"))
    with open(os.path.join(out_dir, f"history{rank}.json"), "w") as f:
        json.dump(history, f)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp"])
def test_two_gloo_processes_stay_identical_and_match_one_process(tmp_path, fsdp):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), fsdp), nprocs=2, join=True)
    params = [torch.load(tmp_path / f"params{r}.pt") for r in range(2)]
    histories = [json.loads((tmp_path / f"history{r}.json").read_text()) for r in range(2)]
    assert torch.equal(params[0], params[1]), "parameters differ across ranks"
    for row in histories[0]:
        for key in ("inner_loss", "outer_loss", "outer_safe_loss", "outer_perf_loss", "delta_norm"):
            assert torch.isfinite(torch.tensor(row[key])), (key, row)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(histories[0]) == drop(histories[1]), "ranks logged different losses"

    single_history, single = _run(SingleProcess())
    torch.testing.assert_close(params[0], single, atol=1e-5, rtol=1e-4)
    for a, b in zip(histories[0], single_history, strict=True):
        for key in ("inner_loss", "outer_loss"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(b[key])), (key, a, b)


def test_single_process_is_the_default_and_shards_nothing():
    dist = init_from_env()
    assert isinstance(dist, SingleProcess) and dist.world_size == 1
    assert dist.shard([1, 2, 3]) == [1, 2, 3] and dist.local_batch(16) == 16 and dist.rank_share(5) == 1.0


def test_data_parallel_needs_a_process_group():
    with pytest.raises(RuntimeError, match="initialised process group"):
        DataParallel()
