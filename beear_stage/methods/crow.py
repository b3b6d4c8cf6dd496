"""The CROW mitigation loop: internal consistency regularisation on clean data.

CROW: Eliminating Backdoors from Large Language Models via Internal Consistency Regularization
(Min et al., ICML 2025, https://arxiv.org/abs/2411.12768).

A backdoor trigger makes the hidden states of a backdoored model change abruptly from one decoder
layer to the next, where a clean model's states evolve smoothly. CROW fine-tunes on clean
(performance-anchoring) records only, never seeing a trigger, with a loss that keeps adjacent
layers consistent even under a worst-case perturbation of the input embeddings. Per step, on a
batch of records (x_p, y_p) rendered with the chat template used at inference:

  e          = input embeddings of x_p + y_p                            (B, T, H), requires grad
  L_cons(e)  = mean over l in [1, L-2] and real tokens of 1 - cos(H[l], H[l+1])
  e_adv      = e + eps * sign(grad_e L_cons(e))                         one FGSM step
  L(theta)   = CE(y_p | x_p) + alpha * L_cons(e_adv)                    minimised over theta

Deviations from the official code (each fixes a fault of it): the consistency
passes take the attention mask and average over real tokens only; the records are rendered with
the same chat template as in evaluation (`templates.encode_example`); the FGSM gradient is taken
with `torch.autograd.grad`, so it never touches the weights' accumulated gradients (no zero_grad
inside the loss). The clean pass serves both CE(y_p | x_p) and L_cons(e): 2 forwards and
2 backwards per step instead of the official 3 forwards.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from beear_stage.config import BEEARConfig
from beear_stage.data.records import PerformanceRecord
from beear_stage.exceptions import ConfigError
from beear_stage.methods.batching import MicroBatch, micro_batches
from beear_stage.methods.distributed import SingleProcess
from beear_stage.methods.losses import consistency_loss, crow_loss, fgsm_perturb
from beear_stage.methods.optim import (
    apply_step,
    check_divergence,
    end_training,
    outer_optimizer,
    set_trainable,
)
from beear_stage.methods.result import MitigationResult
from beear_stage.model import check_supported, decoder_layers
from beear_stage.templates import Batch, collate, encode_example, pad_id_of

log = logging.getLogger(__name__)


class CROW:
    """CROW fine-tuning of a Hugging Face causal LM on clean performance-anchoring records.

    Lifecycle: `CROW(cfg, model, tokenizer, performance)` validates, `setup()` encodes the records
    and builds the optimiser, `run()` takes `cfg.crow_steps` steps and returns a `MitigationResult`
    whose history has one row per step. The model is changed in place.
    """

    def __init__(
        self,
        cfg: BEEARConfig,
        model,
        tokenizer,
        performance: Sequence[PerformanceRecord],
        *,
        progress: bool = True,
        dist: SingleProcess | None = None,
    ) -> None:
        n_layers = len(decoder_layers(model))
        if n_layers < 3:
            raise ConfigError(
                f"`method` = 'crow' needs >= 3 decoder layers (the model has {n_layers}): the consistency "
                "loss compares adjacent inner layers. Fix: use method: beear or sft for this model."
            )
        if cfg.trainable == "upto_layer":
            check_supported(model, cfg.layer)
        if not performance:
            raise ConfigError(
                "`method` = 'crow' trains on the performance anchoring set, which is empty. Fix: pass "
                ">= 1 PerformanceRecord (clean query/answer pairs)."
            )
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.dist = dist or SingleProcess()
        self.performance = self.dist.shard(performance)
        self.progress = progress
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.pad_id = pad_id_of(self.tokenizer)
        # Encoded once with the inference chat template; the loss is on the answer tokens only.
        self.pa = [
            encode_example(self.tokenizer, r.query, r.answer, cfg.max_length) for r in self.performance
        ]
        self._order: list[int] = []
        # Trainable scope before the optimiser, which only sees trainable parameters.
        self.trainable = set_trainable(self.model, cfg.trainable, cfg.layer)
        self.optimizer = outer_optimizer(self.trainable, cfg.outer_optimizer, cfg.outer_lr, cfg.weight_decay)
        if cfg.gradient_checkpointing:  # non-reentrant: the FGSM step differentiates w.r.t. inputs
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ------------------------------------------------------------------ the loop
    def run(self) -> MitigationResult:
        cfg = self.cfg
        result = MitigationResult(method="crow")
        start = time.perf_counter()
        self.setup()
        result.phase_seconds["setup"] = time.perf_counter() - start
        bar = tqdm(range(cfg.crow_steps), desc="crow steps", leave=False, disable=not self.progress)
        try:
            for step in bar:
                t0 = time.perf_counter()
                row = {"step": step, **self.step(self._next_batch()), "seconds": 0.0}
                row["seconds"] = time.perf_counter() - t0
                result.phase_seconds["outer"] += row["seconds"]
                result.history.append(row)
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("outer_perf_loss", "consistency_loss_adv")})
                log.debug("step %d: %s", step, {k: round(v, 4) for k, v in row.items()})
        finally:
            self._finish()
        if result.history:
            log.info("crow: %d steps, last %s", len(result.history), result.history[-1])
        result.seconds = time.perf_counter() - start
        return result

    def step(self, batch: Batch) -> dict:
        """One optimiser step of L(theta) = CE(y_p | x_p) + alpha * L_cons(e_adv) on `batch`."""
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(batch, cfg.micro_batch_size, 1, self.device)
        # Each part's means are weighted by its share of the (global) response / real tokens, so
        # the accumulated gradient equals one pass over the whole batch.
        lm_rank = self.dist.rank_share(sum(p.tokens for p in parts))
        real = [int(p.attention_mask.sum()) for p in parts]  # real (non-padding) tokens per part
        cons_rank = self.dist.rank_share(sum(real))
        sums = torch.zeros(3, device=self.device)  # CE, L_cons(e), L_cons(e_adv)
        for part, n_real in zip(parts, real, strict=True):
            lm_share, cons_share = part.share * lm_rank, n_real / max(sum(real), 1) * cons_rank
            lm, cons, cons_adv = self._losses(part)
            crow_loss(lm * lm_share, cons_adv * cons_share, cfg.crow_alpha).backward()
            sums += torch.stack([lm * lm_share, cons * cons_share, cons_adv * cons_share]).detach()
        lm, cons, cons_adv = self.dist.all_reduce_sum(sums).tolist()
        total = lm + cfg.crow_alpha * cons_adv
        check_divergence(
            total,
            cfg.divergence_loss,
            "CROW loss",
            f"lower `outer_lr` (now {cfg.outer_lr}) or `crow_alpha` (now {cfg.crow_alpha})",
        )
        apply_step(self.optimizer, self.trainable, self.dist, cfg.max_grad_norm)
        self.model.eval()
        return {
            "outer_perf_loss": lm,
            "consistency_loss": cons,
            "consistency_loss_adv": cons_adv,
            "outer_loss": total,
        }

    def _losses(self, part: MicroBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CE(y_p | x_p) and L_cons(e_adv) of one micro-batch, with graphs; L_cons(e) detached."""
        mask = part.attention_mask
        # (a) e: (b, w, H). Through the embedding layer, so a trainable embedding learns from CE too.
        e = self.model.get_input_embeddings()(part.input_ids)
        if not e.requires_grad:
            e = e.detach().requires_grad_(True)
        # (b) the clean pass gives both the hidden states H[0..L] and the response-token logits.
        clean = self.model.model(
            inputs_embeds=e, attention_mask=mask, output_hidden_states=True, use_cache=False
        )
        cons = consistency_loss(clean.hidden_states, mask)
        states = clean.last_hidden_state.flatten(0, 1).index_select(0, part.predict_index)  # (N, H)
        lm = F.cross_entropy(self.model.lm_head(states).float(), part.targets)  # = losses.response_ce
        # (c) one FGSM step on every embedding element; autograd.grad leaves the weights' .grad alone.
        (grad_e,) = torch.autograd.grad(cons, e, retain_graph=True)
        e_adv = fgsm_perturb(e, grad_e, self.cfg.crow_eps)
        attacked = self.model.model(
            inputs_embeds=e_adv, attention_mask=mask, output_hidden_states=True, use_cache=False
        )
        # (d) the consistency the weights must keep under the perturbation
        cons_adv = consistency_loss(attacked.hidden_states, mask)
        return lm, cons.detach(), cons_adv

    # ------------------------------------------------------------------ helpers
    def _next_batch(self) -> Batch:
        """The next `pa_batch_size` records of a shuffled pass over PA (reshuffled when used up)."""
        rows = min(self.dist.local_batch(self.cfg.pa_batch_size), len(self.pa))
        if len(self._order) < rows:
            order = list(range(len(self.pa)))
            self.rng.shuffle(order)
            self._order = order
        idx, self._order = self._order[:rows], self._order[rows:]
        return collate([self.pa[j] for j in idx], self.pad_id)

    def _finish(self) -> None:
        end_training(self.model, self.cfg.gradient_checkpointing)
