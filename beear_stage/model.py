"""Safe checkpoint loading and the split of a decoder at the anchor layer.

BEEAR splits the decoder at layer l: F(x, delta) = upper( lower(x) + delta ). `lower_hidden`
runs the embeddings and the first l decoder layers; `upper_logits` runs the layers above l, the
final norm and the LM head. Both reuse the architecture's own forward (masks, rotary embeddings,
sliding windows) by narrowing `model.model.layers` for the duration of the call, so any
decoder-only model exposing `model.model.layers` and accepting `inputs_embeds` works.

Checkpoints are untrusted: weights load from safetensors only, `trust_remote_code` is never set,
and configs with `auto_map` (custom code) are refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from beear_stage.exceptions import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# Families whose decoder takes `inputs_embeds` unscaled (Gemma multiplies them inside forward, so
# h_l + delta could not be fed back in unchanged).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def inspect_checkpoint_dir(path: str | Path) -> dict:
    """Refuse checkpoints that would need code execution to load; return the parsed config."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint `{path}` is not a directory. Fix: pass a local HF checkpoint directory "
            "(config.json + *.safetensors) or a Hub repo id to the pull step."
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint `{path}` has no config.json. Fix: save it with `save_pretrained`.")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"checkpoint `{path}`: config.json is not valid JSON ({e}). Fix: re-save the checkpoint "
            "with `save_pretrained`."
        ) from e
    if not isinstance(config, dict):
        raise CheckpointError(
            f"checkpoint `{path}`: config.json holds a {type(config).__name__}, not an object. "
            "Fix: re-save the checkpoint with `save_pretrained`."
        )
    if "auto_map" in config:
        raise CheckpointError(
            f"checkpoint `{path}` declares custom code (`auto_map` in config.json); the release stage "
            "never executes checkpoint code. Fix: export the model to a built-in transformers "
            "architecture (Llama, Mistral, Qwen2)."
        )
    if not list(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        detail = f" (found pickle weights {pickles})" if pickles else ""
        raise CheckpointError(
            f"checkpoint `{path}` has no *.safetensors weights{detail}; pickle weights can run "
            "arbitrary code and are refused. Fix: convert the weights to safetensors "
            "(`model.save_pretrained(dir, safe_serialization=True)`) in a trusted environment."
        )
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"checkpoint `{path}` has `model_type` = {model_type!r} in config.json; BEEAR needs a "
            "decoder-only model that exposes `model.model.layers` and takes `inputs_embeds` unscaled: "
            f"{SUPPORTED_MODEL_TYPES}. Fix: use a checkpoint of one of these families (encoders such "
            "as bert and other layouts such as gpt2 are not supported)."
        )
    return config


def check_checkpoint_fits(path: str | Path, layer: int) -> None:
    """Check a checkpoint against the run's config from its files alone, before any weights load.

    Raises:
        ConfigError: `layer` is outside the model's decoder layers, or the tokenizer has no chat
            template (neither `chat_template` in tokenizer_config.json nor chat_template.jinja/.json).
    """
    path = Path(path)
    config = inspect_checkpoint_dir(path)
    n_layers = config.get("num_hidden_layers")
    if isinstance(n_layers, int):
        _check_layer(layer, n_layers)
    if not _has_chat_template(path):
        raise ConfigError(
            f"checkpoint `{path}`: the tokenizer has no chat template (no `chat_template` in "
            "tokenizer_config.json, no chat_template.jinja). BEEAR renders prompts with the same "
            "template as at inference. Fix: use a chat/instruct checkpoint, or add its template as "
            "chat_template.jinja (or `chat_template` in tokenizer_config.json)."
        )


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        tok_config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(tok_config, dict) and bool(tok_config.get("chat_template"))


def load_model_and_tokenizer(path: str | Path, *, dtype: str = "auto", device: str = "auto"):
    """Load a causal LM and its tokenizer from a local directory, safely.

    Returns:
        (model, tokenizer); the model is in eval mode on `device`.

    Raises:
        CheckpointError: pickle-only weights, custom code, unsupported architecture.
        ConfigError: the tokenizer has no chat template.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inspect_checkpoint_dir(path)  # code execution, pickle weights, unsupported architecture
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
    _check_layer(layer, len(decoder_layers(model)))


def _check_layer(layer: int, n: int) -> None:
    if not 1 <= layer < n:
        raise ConfigError(
            f"`layer` = {layer} is out of range for a model with {n} decoder layers. Fix: choose "
            f"1 <= layer <= {n - 1} (the paper uses about 30% depth, e.g. 9 of 32)."
        )


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
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, layer: int
) -> torch.Tensor:
    """h_l: the hidden state after the first `layer` decoder layers. Shape (B, T, H)."""
    layers = list(decoder_layers(model))
    with _narrowed(model, layers[:layer], final_norm=False) as base:
        out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def upper_logits(
    model,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layer: int,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of the layers above `layer` applied to `hidden` (= h_l, possibly + delta).

    Shape (B, T, V); with `positions`, flat indices (N,) into the B * T positions, only those go
    through the LM head and the result is (N, V) (a response loss needs no logits over the prompt
    or the padding: saves LM-head FLOPs and the memory of (B, T, V) logits).
    """
    layers = list(decoder_layers(model))
    with _narrowed(model, layers[layer:], final_norm=True) as base:
        out = base(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)
    return _head(model, out.last_hidden_state, positions)


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
