"""Chat-template rendering and token bookkeeping.

Prompts are rendered with `tokenizer.apply_chat_template` exactly as at inference time, and
tokenized with `add_special_tokens=False` (the template carries BOS). The response is the rendered
conversation minus the rendered prompt. The last k prompt positions used by BEEAR are token
indices `[prompt_len - k, prompt_len)`; no string search for markers such as `[/INST]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from beear_stage.exceptions import ConfigError, DataError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response; `labels` are -100 on the prompt (loss on the response only)."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int


def check_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the tokenizer has no chat template (`tokenizer.chat_template` is empty). BEEAR renders "
            "prompts with the same template as at inference. Fix: use a chat/instruct checkpoint, or "
            "set `chat_template` in the checkpoint's tokenizer_config.json."
        )


def render_prompt(tokenizer, query: str) -> str:
    check_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": query}], add_generation_prompt=True, tokenize=False
    )


def render_conversation(tokenizer, query: str, response: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": query}, {"role": "assistant", "content": response}], tokenize=False
    )


def encode_prompt(tokenizer, query: str) -> list[int]:
    """Token ids the model sees at inference for `query` (template with generation prompt)."""
    return tokenizer(render_prompt(tokenizer, query), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, query: str, response: str, max_length: int) -> EncodedExample:
    """Encode `query` + `response` for a response-only loss.

    The prompt ids equal `encode_prompt(query)`; the response ids are the tokens of the rendered
    conversation after the prompt text (end-of-turn tokens included).
    """
    prompt_text = render_prompt(tokenizer, query)
    full_text = render_conversation(tokenizer, query, response)
    if not full_text.startswith(prompt_text):
        raise ConfigError(
            "the chat template renders a conversation whose text does not start with the rendered "
            "prompt, so response tokens cannot be located from token indices. Fix: use a template "
            "where `add_generation_prompt=True` output is a prefix of the full conversation."
        )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + 1 > max_length:
        raise DataError(
            f"prompt of {len(prompt_ids)} tokens does not fit `max_length` = {max_length} "
            f"(query starts {query[:60]!r}). Fix: raise max_length or shorten the query."
        )
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return EncodedExample(
        input_ids=prompt_ids + response_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
        prompt_len=len(prompt_ids),
    )


@dataclass
class Batch:
    """A right-padded batch. Shapes: input_ids/attention_mask/labels (B, T), prompt_lens (B,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_lens: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.prompt_lens))
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(examples: Sequence[EncodedExample], pad_id: int) -> Batch:
    """Right-pad examples (training: position ids stay 0..len-1 for every row)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    prompt_lens = torch.tensor([e.prompt_len for e in examples], dtype=torch.long)
    return Batch(ids, mask, labels, prompt_lens)


def last_k_positions(prompt_lens: torch.Tensor, k: int) -> torch.Tensor:
    """Token indices of the last k prompt positions per row. Shape (B, k)."""
    if int(prompt_lens.min()) < k:
        raise ConfigError(
            f"`k` = {k} exceeds the shortest rendered prompt ({int(prompt_lens.min())} tokens). "
            "Fix: lower k or lengthen the prompts."
        )
    offsets = torch.arange(-k, 0, device=prompt_lens.device)
    return prompt_lens[:, None] + offsets[None, :]


def pad_id_of(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token. Fix: set `pad_token`.")
    return int(pad)
