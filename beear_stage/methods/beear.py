"""The BEEAR mitigation loop.

BEEAR: Embedding-based Adversarial Removal of Safety Backdoors in Instruction-tuned Language
Models (Zeng et al., EMNLP 2024, https://arxiv.org/abs/2406.17092).

A backdoor trigger shifts the hidden states at an intermediate layer l by a roughly uniform drift.
BEEAR alternates two levels, without ever seeing the trigger:

  inner (Backdoor Embedding Entrapment), model frozen:
      delta* = argmin_delta  CE(y_h | x, delta) - alpha * min(CE(y_s | x, delta), cap)      over SA
  outer (Adversarial Removal), delta fixed:
      theta* = argmin_theta  CE(y_s | x, delta*) + CE(y_p | x_p)                            over SA, PA

Options beyond the paper (off by default, see BEEARConfig): `pa_answers: own` takes y_p from the
model's own greedy answers, and `pa_delta_weight` adds the PA term under delta*.

delta has shape (k, hidden) and is added to the output of decoder layer l at the last k prompt
positions. The inner level only needs the layers above l, so h_l is computed once per round
(no gradients) and reused for every inner step. Under the causal mask the positions before the
first one delta reaches never see it: their keys and values in every layer are computed once per
round too (`model.prefix_cache`), and each inner step runs only the rest of each row (its last k
prompt positions and the response) through the layers above l.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from beear_stage.config import BEEARConfig
from beear_stage.data.records import PerformanceRecord, SafetyRecord
from beear_stage.exceptions import ConfigError
from beear_stage.methods.batching import MicroBatch, micro_batches
from beear_stage.methods.distributed import SingleProcess
from beear_stage.methods.kernels import fused_rms_norm
from beear_stage.methods.losses import entrapment_loss, removal_loss
from beear_stage.methods.optim import (
    apply_step,
    check_divergence,
    end_training,
    outer_optimizer,
    set_trainable,
)
from beear_stage.methods.result import MitigationResult
from beear_stage.model import (
    PrefixCache,
    add_delta,
    check_supported,
    full_logits,
    lower_hidden,
    prefix_cache,
    prefix_mask,
    upper_logits,
)
from beear_stage.templates import (
    IGNORE_INDEX,
    Batch,
    EncodedExample,
    collate,
    encode_example,
    last_k_positions,
    pad_id_of,
)

log = logging.getLogger(__name__)


@dataclass
class _SafetyBatch:
    """One SA minibatch: the same prompts with the unwanted (y_h) and the safe (y_s) response."""

    unwanted: Batch
    safe: Batch


@dataclass
class _Entrapment:
    """One SA batch made ready for the inner steps of a round (model frozen, no gradients).

    `batch` holds each row from the first position delta reaches on, left-aligned (the whole rows
    when `prefix` is None); `prefix` the keys and values of each row's columns before that, shared
    by both responses; `h_unwanted` / `h_safe` h_l of `batch`'s columns.
    """

    batch: _SafetyBatch
    prefix: PrefixCache | None
    h_unwanted: torch.Tensor
    h_safe: torch.Tensor


class BEEAR:
    """Bi-level embedding-space adversarial removal on a Hugging Face causal LM.

    Lifecycle: `BEEAR(cfg, model, tokenizer, safety, performance)` validates, `setup()` encodes the
    anchoring sets and builds the optimiser, `run()` alternates the two levels for `cfg.rounds`.
    """

    def __init__(
        self,
        cfg: BEEARConfig,
        model,
        tokenizer,
        safety: Sequence[SafetyRecord],
        performance: Sequence[PerformanceRecord],
        *,
        progress: bool = True,
        dist: SingleProcess | None = None,
    ) -> None:
        if cfg.method != "none":
            check_supported(model, cfg.layer)
            if not safety:
                raise ConfigError("the safety anchoring set is empty. Fix: pass >= 1 SafetyRecord.")
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        # Data parallelism (distributed.py): each process keeps its shard of the anchoring sets.
        self.dist = dist or SingleProcess()
        self.safety, self.performance = self.dist.shard(safety), self.dist.shard(performance)
        self.progress = progress
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Encode the anchoring sets, then build what the outer level trains with."""
        cfg = self.cfg
        self.encode()
        # Trainable scope before the optimiser, which only sees trainable parameters.
        self.trainable = set_trainable(self.model, cfg.trainable, cfg.layer)
        self.optimizer = outer_optimizer(self.trainable, cfg.outer_optimizer, cfg.outer_lr, cfg.weight_decay)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()

    def encode(self) -> None:
        """Seed, and encode the anchoring sets once: token ids do not change across rounds, only h_l."""
        cfg = self.cfg
        self.rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        # Encode once: token ids do not change across rounds, only h_l does.
        pad, n = pad_id_of(self.tokenizer), cfg.max_length
        self.pad_id = pad
        cut = cfg.response_tokens
        self.sa_unwanted = [
            _cut(encode_example(self.tokenizer, r.query, r.unwanted_response, n), cut) for r in self.safety
        ]
        self.sa_safe = [
            _cut(encode_example(self.tokenizer, r.query, r.safe_response, n), cut) for r in self.safety
        ]
        self.pa = [encode_example(self.tokenizer, r.query, r.answer, n) for r in self.performance]

    # ------------------------------------------------------------------ the loop
    def run(self) -> MitigationResult:
        cfg = self.cfg
        result = MitigationResult(method=cfg.method)
        if cfg.method == "none":
            return result
        if not self.performance and cfg.pa_weight > 0:
            raise ConfigError(
                "the performance anchoring set is empty while `pa_weight` > 0. Fix: pass "
                "PerformanceRecords or set pa_weight: 0 (utility will not be protected)."
            )
        start = time.perf_counter()
        self.setup()
        result.phase_seconds["setup"] = time.perf_counter() - start
        delta = None
        bar = tqdm(range(cfg.rounds), desc=f"{cfg.method} rounds", leave=False, disable=not self.progress)
        with fused_rms_norm(self.model, enabled=self.device.type == "cuda"):  # one kernel per norm
            for round_ in bar:
                t0 = time.perf_counter()
                # Inner level: find the universal perturbation that imitates the trigger (frozen model).
                if cfg.method == "beear":
                    delta, inner = self.entrap(delta)
                else:  # "sft" control: identical outer level, delta = 0
                    delta, inner = None, {}
                t1 = time.perf_counter()
                # Outer level: make the model answer safely *under* delta, and keep its utility.
                outer = self.remove(delta)
                t2 = time.perf_counter()
                result.phase_seconds["inner"] += t1 - t0
                result.phase_seconds["outer"] += t2 - t1
                row = {"round": round_, **inner, **outer, "seconds": t2 - t0}
                result.history.append(row)
                bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in row.items() if k in ("inner_loss", "outer_safe_loss")}
                )
                eta = (time.perf_counter() - start) / (round_ + 1) * (cfg.rounds - round_ - 1)
                log.info(
                    "%s round %d/%d, ETA %.0f s: %s",
                    cfg.method, round_ + 1, cfg.rounds, eta, {k: round(v, 4) for k, v in row.items()},
                )  # fmt: skip
        self._finish()
        result.seconds = time.perf_counter() - start
        result.last_delta = None if delta is None else delta.detach().cpu()
        return result

    def entrap(self, previous: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """Inner level: minimise the entrapment loss over delta on cached h_l (no weight gradients)."""
        cfg = self.cfg
        chunks = self._safety_batches(self.dist.local_batch(cfg.inner_batch_size))[: max(1, cfg.inner_steps)]
        with torch.no_grad():  # what never sees delta, once per round, for the chunks used
            cached = [self.prepare_entrapment(b) for b in chunks]
        # RMS(h_l) where delta acts (the last k prompt positions, never padding), over every shard.
        acts = torch.cat([_at_delta_positions(c.batch.unwanted, c.h_unwanted, cfg.k) for c in cached])
        moments = self.dist.all_reduce_sum(torch.stack([acts.pow(2).sum(), acts.new_tensor(acts.numel())]))
        scale = (moments[0] / moments[1]).sqrt()
        hidden_size = cached[0].h_unwanted.shape[-1]
        if previous is None or cfg.delta_reset:
            delta = torch.zeros(cfg.k, hidden_size, device=self.device, dtype=torch.float32)
        else:
            delta = previous.detach().clone().float()
        delta.requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=cfg.inner_lr * float(scale))
        bound = (
            None if cfg.delta_max_norm is None else cfg.delta_max_norm * float(scale) * math.sqrt(hidden_size)
        )
        with _frozen(self.model):
            for step in range(cfg.inner_steps):
                c = cached[step % len(cached)]
                opt.zero_grad(set_to_none=True)
                loss, ce_unwanted, ce_safe = self.entrapment_backward(
                    c.batch, delta, c.h_unwanted, c.h_safe, prefix=c.prefix
                )
                opt.step()
                if bound is not None:
                    with torch.no_grad():  # project each position's row onto the L2 ball
                        norms = delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                        delta.mul_(torch.clamp(bound / norms, max=1.0))
        delta = delta.detach()
        stats = {
            "inner_loss": loss.item(),
            "inner_ce_unwanted": ce_unwanted.item(),
            "inner_ce_safe": ce_safe.item(),
            "delta_norm": float(delta.norm(dim=-1).mean() / (scale * math.sqrt(hidden_size))),
        }
        if cfg.delta_max_norm is not None:  # same units as delta_norm; the plot shows their ratio
            stats["delta_bound"] = cfg.delta_max_norm
        return delta, stats

    def remove(self, delta: torch.Tensor | None) -> dict:
        """Outer level: CE(y_s | x, delta) + pa_weight * CE(y_p | x_p), delta fixed."""
        cfg = self.cfg
        self.model.train()
        for _ in range(cfg.outer_steps):
            sa_rows = min(self.dist.local_batch(cfg.sa_batch_size), len(self.sa_safe))
            idx = self.rng.sample(range(len(self.sa_safe)), sa_rows)
            sa = collate([self.sa_safe[j] for j in idx], self.pad_id)
            pa = None
            if cfg.pa_weight > 0 or cfg.pa_delta_weight > 0:
                pa_rows = min(self.dist.local_batch(cfg.pa_batch_size), len(self.pa))
                pa = collate(self.rng.sample(self.pa, pa_rows), self.pad_id)
            self.optimizer.zero_grad(set_to_none=True)
            loss, ce_safe, ce_perf, ce_perf_delta = self.removal_backward(sa, pa, delta)
            check_divergence(
                loss.item(), cfg.divergence_loss, "outer loss", f"lower `outer_lr` (now {cfg.outer_lr})"
            )
            # the processes' token-weighted shares are summed before the step
            apply_step(self.optimizer, self.trainable, self.dist, cfg.max_grad_norm)
        self.model.eval()
        stats = {
            "outer_safe_loss": ce_safe.item(),
            "outer_perf_loss": ce_perf.item(),
            "outer_loss": loss.item(),
        }
        if ce_perf_delta is not None:
            stats["outer_perf_delta_loss"] = ce_perf_delta.item()
        return stats

    # ------------------------------------------------------------------ gradients of the two levels
    def entrapment_backward(
        self,
        batch: _SafetyBatch,
        delta: torch.Tensor,
        h_unwanted: torch.Tensor,
        h_safe: torch.Tensor,
        prefix: PrefixCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Leave d `losses.entrapment_loss` / d delta in `delta.grad`; return (loss, CE(y_h), CE(y_s)).

        Back-propagated micro-batch by micro-batch (memory), so the gradient is assembled by hand:
        the capped away-from-safe term contributes only where the whole batch's CE(y_s) is under the
        cap (d min(ce, cap) / d ce = [ce <= cap]). tests/methods/test_gradients.py pins it to autograd
        of the loss function.
        """
        cfg = self.cfg
        ce_unwanted = self._backward_ce(batch.unwanted, delta, 1.0, hidden=h_unwanted, prefix=prefix)
        self.dist.sync_grads([delta])
        grad_unwanted, delta.grad = delta.grad, None
        ce_safe = self._backward_ce(batch.safe, delta, -cfg.alpha, hidden=h_safe, prefix=prefix)
        self.dist.sync_grads([delta])
        delta.grad = grad_unwanted + delta.grad * (ce_safe <= cfg.alpha_cap)
        return entrapment_loss(ce_unwanted, ce_safe, cfg.alpha, cfg.alpha_cap), ce_unwanted, ce_safe

    def removal_backward(
        self, sa: Batch, pa: Batch | None, delta: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Accumulate d `losses.removal_loss` / d theta in the trainable parameters' `.grad`.

        Each term back-propagates micro-batch by micro-batch with its weight, which sums to the
        gradient of the weighted loss (pinned to autograd of `removal_loss` by
        tests/methods/test_gradients.py). Returns (loss, CE(y_s | delta), L_PA, L_PA under delta or None).
        """
        cfg = self.cfg
        ce_safe = self._backward_ce(sa, delta, 1.0)
        ce_perf = torch.zeros((), device=self.device)
        ce_perf_delta = None
        if pa is not None and cfg.pa_weight > 0:
            ce_perf = self._backward_ce(pa, None, cfg.pa_weight)
        if pa is not None and cfg.pa_delta_weight > 0 and delta is not None:  # same rows, under delta
            ce_perf_delta = self._backward_ce(pa, self.pa_delta(delta), cfg.pa_delta_weight)
        loss = removal_loss(ce_safe, ce_perf, cfg.pa_weight, ce_perf_delta, cfg.pa_delta_weight)
        return loss, ce_safe, ce_perf, ce_perf_delta

    def pa_delta(self, delta: torch.Tensor) -> torch.Tensor:
        """The perturbation the PA term under delta is computed with: the round's delta*.

        The one seam for variants of that term (docs/experiments/issue18_levers overrides it).
        """
        return delta

    # ------------------------------------------------------------------ helpers
    def _safety_batches(self, size: int) -> list[_SafetyBatch]:
        """Shuffle SA and cut it into batches of `size` (an epoch over SA)."""
        order = list(range(len(self.safety)))
        self.rng.shuffle(order)
        out = []
        for i in range(0, len(order), size):
            idx = order[i : i + size]
            out.append(
                _SafetyBatch(
                    unwanted=collate(
                        [self.sa_unwanted[j] for j in idx], self.pad_id
                    ),  # host: see batching.py
                    safe=collate([self.sa_safe[j] for j in idx], self.pad_id),
                )
            )
        return out

    def prepare_entrapment(self, batch: _SafetyBatch, *, share_prefix: bool = True) -> _Entrapment:
        """What the inner steps reuse for `batch`: h_l and, with `share_prefix`, the prefix cache.

        Row i's prefix is its prompt but the last k tokens (where delta goes). The prompt tokens
        are the same in both responses' batches, so one cache serves both; the rest of each row
        (k prompt tokens and the response) is left-aligned. Call under `torch.no_grad()`.
        """
        u, s = batch.unwanted, batch.safe
        starts = u.prompt_lens - self.cfg.k
        if not share_prefix or int(starts.min()) < 1:
            return _Entrapment(batch, None, self._hidden(u), self._hidden(s))
        width = int(starts.max())
        if ((u.input_ids[:, :width] != s.input_ids[:, :width]) & prefix_mask(starts, width)).any():
            return _Entrapment(batch, None, self._hidden(u), self._hidden(s))
        prefix = prefix_cache(self.model, u.input_ids[:, :width].to(self.device), starts.to(self.device))
        rest = _SafetyBatch(_rest_of_rows(u, starts, self.cfg.k), _rest_of_rows(s, starts, self.cfg.k))
        return _Entrapment(rest, prefix, self._hidden(rest.unwanted, prefix), self._hidden(rest.safe, prefix))

    def _hidden(self, batch: Batch, prefix: PrefixCache | None = None) -> torch.Tensor:
        """h_l of a host batch: with its padding mask, or continuing `prefix` (right padding, no mask)."""
        batch = batch.to(self.device)
        mask = batch.attention_mask if prefix is None else None
        return lower_hidden(self.model, batch.input_ids, mask, self.cfg.layer, prefix=prefix)

    def _backward_ce(
        self,
        batch: Batch,
        delta: torch.Tensor | None,
        weight: float,
        hidden: torch.Tensor | None = None,
        prefix: PrefixCache | None = None,
    ) -> torch.Tensor:
        """Back-propagate `weight` * CE(batch) one micro-batch at a time; return the detached CE.

        Each micro-batch's mean CE is weighted by its share of the batch's response tokens, so the
        accumulated gradient equals one pass over the whole batch (`micro_batch_size` = None).
        `hidden` is the batch's cached h_l (inner level); None computes it with gradients (outer).
        `prefix` is the cache of each row's columns before `batch`'s (inner level, `prepare_entrapment`).
        """
        parts = micro_batches(batch, self.cfg.micro_batch_size, self.cfg.k, self.device)
        rank_share = self.dist.rank_share(sum(p.tokens for p in parts))  # 1.0 in one process
        mean = torch.zeros((), device=self.device)
        for part in parts:
            ce = self._ce_with_delta(part, delta, hidden, None if prefix is None else prefix.rows(part.rows))
            (ce * (part.share * rank_share * weight)).backward()
            mean = mean + ce.detach() * (part.share * rank_share)
        return self.dist.all_reduce_sum(mean)

    def _ce_with_delta(
        self,
        part: MicroBatch,
        delta: torch.Tensor | None,
        hidden: torch.Tensor | None = None,
        prefix: PrefixCache | None = None,
    ) -> torch.Tensor:
        """Mean response CE of one micro-batch: CE(y | x, delta), or CE(y | x) for delta None.

        The LM head and the softmax run on the response tokens only; no padding mask is passed
        (right padding makes the causal mask exact for every real token, see batching.py).
        """
        if delta is None:
            logits = full_logits(self.model, part.input_ids, None, positions=part.predict_index)
        else:
            if hidden is None:  # outer level: h_l with gradients through the lower layers
                h = lower_hidden(self.model, part.input_ids, None, self.cfg.layer)
            else:  # inner level: rows of the cached h_l
                h = hidden.index_select(0, part.rows)[:, : part.width]
            h = add_delta(h, delta, part.delta_positions)
            logits = upper_logits(
                self.model, h, None, self.cfg.layer, positions=part.predict_index, prefix=prefix
            )
        return F.cross_entropy(logits.float(), part.targets)  # = losses.response_ce on full logits

    def _finish(self) -> None:
        end_training(self.model, self.cfg.gradient_checkpointing)


def _at_delta_positions(batch: Batch, hidden: torch.Tensor, k: int) -> torch.Tensor:
    """h_l at the last k prompt positions of every row. Shape (B, k, H), float32."""
    positions = last_k_positions(batch.prompt_lens, k).to(hidden.device)
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    return hidden[rows, positions].float()


def _rest_of_rows(batch: Batch, starts: torch.Tensor, k: int) -> Batch:
    """Row i from column `starts[i]` on, left-aligned and right-padded; its prompt is now k tokens."""
    lengths = batch.attention_mask.sum(dim=1)
    width = int((lengths - starts).max())
    columns = starts[:, None] + torch.arange(width)[None]
    real = columns < lengths[:, None]
    columns = columns.clamp(max=batch.input_ids.shape[1] - 1)
    labels = batch.labels.gather(1, columns).masked_fill(~real, IGNORE_INDEX)
    return Batch(batch.input_ids.gather(1, columns), real.long(), labels, torch.full_like(starts, k))


def _cut(example: EncodedExample, response_tokens: int | None) -> EncodedExample:
    """Keep the first `response_tokens` response tokens (None keeps all)."""
    if response_tokens is None:
        return example
    end = example.prompt_len + response_tokens
    return EncodedExample(example.input_ids[:end], example.labels[:end], example.prompt_len)


@contextlib.contextmanager
def _frozen(model):
    """Disable weight gradients (the inner level differentiates w.r.t. delta only)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def entrap_delta(
    cfg: BEEARConfig, model, tokenizer, safety: Sequence[SafetyRecord], *, dist: SingleProcess | None = None
) -> tuple[torch.Tensor, dict]:
    """The inner level on its own: the universal delta (k, H) that best imitates a trigger on `model`,
    frozen and unchanged (no optimiser, no trainable scope). Also the embedding attack of evaluation."""
    attacker = BEEAR(cfg, model, tokenizer, safety, [], progress=False, dist=dist)
    attacker.encode()
    return attacker.entrap(None)
