"""Safe checkpoint loading and the split of a decoder at the anchor layer.

BEEAR splits the decoder at layer l: F(x, delta) = upper( lower(x) + delta ). `lower_hidden`
runs the embeddings and the first l decoder layers; `upper_logits` runs the layers above l, the
final norm and the LM head. Both reuse the architecture's own forward (masks, rotary embeddings,
sliding windows) by narrowing `model.model.layers` for the duration of the call, so any
decoder-only model exposing `model.model.layers` and accepting `inputs_embeds` works.

Both also continue a `prefix_cache`: the keys and values of every layer for each row's positions
before the first one delta reaches. Under a causal mask those positions never see delta, so the
inner level computes them once per round and runs only the rest of each row at every step.

Checkpoints are untrusted: weights load from safetensors only, `trust_remote_code` is never set,
and every file rule (symlinks, `auto_map`, JSON, config vs safetensors headers) lives in
`beear_stage.release.intake`, which runs before anything loads.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from beear_stage.exceptions import CheckpointError
from beear_stage.release.intake import (
    SUPPORTED_MODEL_TYPES,
    check_layer,
    check_weights_match_config,
    inspect_checkpoint_dir,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)


def load_model_and_tokenizer(path: str | Path, *, dtype: str = "auto", device: str = "auto"):
    """Load a causal LM and its tokenizer from a local directory, safely.

    Returns:
        (model, tokenizer); the model is in eval mode on `device`.

    Raises:
        CheckpointError: a symlink or special file, pickle-only weights, custom code, unsupported
            architecture, a config that disagrees with the safetensors headers.
        ConfigError: the tokenizer has no chat template.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = inspect_checkpoint_dir(path)  # links, code execution, pickle weights, unsupported architecture
    check_weights_match_config(path, config)  # the config's sizes are the stored tensors' sizes
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, dev), use_safetensors=True, trust_remote_code=False
    ).to(dev)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    from beear_stage.templates import check_chat_template

    check_chat_template(tokenizer)
    return model, tokenizer


def decoder_layers(model) -> nn.ModuleList:
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise CheckpointError(
            f"{type(model).__name__} does not expose `model.model.layers`; BEEAR needs a decoder-only "
            f"model of a supported family {SUPPORTED_MODEL_TYPES}. Fix: use one of these."
        )
    return layers


def check_supported(model, layer: int, k: int | None = None) -> None:
    """Validate that the anchor `layer` exists in `model`."""
    check_layer(layer, len(decoder_layers(model)))


@contextlib.contextmanager
def _narrowed(model, layers: list[nn.Module], final_norm: bool):
    """Temporarily run `model.model` with only `layers` (and optionally no final norm)."""
    base = model.model
    saved_layers, saved_norm = base.layers, base.norm
    base.layers = nn.ModuleList(layers)
    if not final_norm:
        base.norm = nn.Identity()
    try:
        yield base
    finally:
        base.layers, base.norm = saved_layers, saved_norm


def lower_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layer: int,
    prefix: PrefixCache | None = None,
) -> torch.Tensor:
    """h_l: the hidden state after the first `layer` decoder layers. Shape (B, T, H).

    With `prefix`, `input_ids` continue the cached positions (then `attention_mask` must be None).
    """
    layers = list(decoder_layers(model))
    with _narrowed(model, layers[:layer], final_norm=False) as base:
        out = base(input_ids=input_ids, **_continuing(prefix, attention_mask, input_ids.shape[1]))
    return out.last_hidden_state


def upper_logits(
    model,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layer: int,
    positions: torch.Tensor | None = None,
    prefix: PrefixCache | None = None,
) -> torch.Tensor:
    """Logits of the layers above `layer` applied to `hidden` (= h_l, possibly + delta).

    Shape (B, T, V); with `positions`, flat indices (N,) into the B * T positions, only those go
    through the LM head and the result is (N, V) (a response loss needs no logits over the prompt
    or the padding: saves LM-head FLOPs and the memory of (B, T, V) logits). With `prefix`,
    `hidden` continues the cached positions (then `attention_mask` must be None).
    """
    layers = list(decoder_layers(model))
    with _narrowed(model, layers[layer:], final_norm=True) as base:
        out = base(inputs_embeds=hidden, **_continuing(prefix, attention_mask, hidden.shape[1]))
    return _head(model, out.last_hidden_state, positions)


class PrefixCache:
    """Keys and values of every decoder layer for the first `starts[i]` tokens of each row i.

    Built by `prefix_cache` under `torch.no_grad()`; `lower_hidden` and `upper_logits` continue it
    with the rest of each row, left-aligned, at positions `starts[i]`, `starts[i] + 1`, ... The
    cached rows are right-padded to the longest prefix; the attention mask hides the padding. A
    forward appends to the cache it is given, so each call gets a fresh cache built from these
    tensors, and the prefix stays as it is for the next step.
    """

    def __init__(
        self, config, tensors: list[tuple[torch.Tensor, torch.Tensor]], starts: torch.Tensor
    ) -> None:
        self.config, self.tensors, self.starts = config, tensors, starts

    @property
    def length(self) -> int:
        """Columns of the cache (the longest row's prefix)."""
        return self.tensors[0][0].shape[-2]

    def rows(self, index: torch.Tensor) -> PrefixCache:
        """The cache of the rows `index` (a micro-batch of the batch it was built for)."""
        tensors = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.tensors]
        return PrefixCache(self.config, tensors, self.starts.index_select(0, index))

    def continuing(self, width: int) -> dict:
        """Forward keywords for `width` more columns: a fresh cache, the mask, the positions."""
        from transformers import DynamicCache

        mask = torch.cat(
            [
                prefix_mask(self.starts, self.length).long(),
                torch.ones(len(self.starts), width, dtype=torch.long, device=self.starts.device),
            ],
            dim=1,
        )
        positions = self.starts[:, None] + torch.arange(width, device=self.starts.device)[None]
        cache = DynamicCache(ddp_cache_data=self.tensors, config=self.config)
        return {"cache": cache, "use_cache": True, "attention_mask": mask, "position_ids": positions}


def prefix_mask(starts: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool: True where column j < starts[i], row i's cached prefix."""
    return torch.arange(width, device=starts.device)[None] < starts[:, None]


def prefix_cache(model, input_ids: torch.Tensor, starts: torch.Tensor) -> PrefixCache:
    """Run the whole decoder on the first `starts[i]` tokens of each row of `input_ids` (B, S) and
    keep every layer's keys and values. Call under `torch.no_grad()`: they are constants.

    The leading columns every row shares (the chat template's system turn) run once, as one row,
    and their keys and values are copied into each row; the rest of each row's prefix continues
    them. Same values as one forward over the whole batch, up to rounding.
    """
    from transformers import DynamicCache

    rows, width = input_ids.shape
    shared = _shared_columns(input_ids, int(starts.min()))
    cache = DynamicCache(config=model.config)
    if shared and rows > 1:
        model.model(input_ids=input_ids[:1, :shared], cache=cache, use_cache=True)
        copied = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v, *_ in cache]
        cache = DynamicCache(ddp_cache_data=copied, config=model.config)
    else:
        shared = 0
    if shared < width:
        mask = prefix_mask(starts, width).long()
        positions = torch.arange(shared, width, device=input_ids.device)[None].expand(rows, -1)
        model.model(
            input_ids=input_ids[:, shared:],
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
    return PrefixCache(model.config, [(k, v) for k, v, *_ in cache], starts)


def _shared_columns(input_ids: torch.Tensor, limit: int) -> int:
    """How many leading columns, at most `limit`, hold the same token in every row."""
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(dim=0)
    return int(same.long().cumprod(dim=0).sum())


def _continuing(prefix: PrefixCache | None, attention_mask: torch.Tensor | None, width: int) -> dict:
    """Forward keywords: the caller's mask and no cache, or what continues `prefix`."""
    if prefix is None:
        return {"attention_mask": attention_mask, "use_cache": False}
    if attention_mask is not None:
        raise ValueError("a forward that continues a prefix cache takes no attention mask (right padding)")
    return prefix.continuing(width)


def add_delta(hidden: torch.Tensor, delta: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """h + delta at the given positions. hidden (B, T, H), delta (k, H), positions (B, k)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]  # (B, 1)
    out = hidden.clone()
    out[rows, positions] = out[rows, positions] + delta.to(hidden.dtype)[None]
    return out


def full_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of the whole model: (B, T, V), or (N, V) at flat `positions` (N,) into B * T."""
    if positions is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    out = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return _head(model, out.last_hidden_state, positions)


def _head(model, states: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    if positions is None:
        return model.lm_head(states)
    return model.lm_head(states.flatten(0, 1).index_select(0, positions))
