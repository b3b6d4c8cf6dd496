"""Prompt rendering and the last-k position indices, for a Llama-2 [INST] and a ChatML template."""

import pytest
import torch
from helpers import tiny_tokenizer

from beear_stage.exceptions import ConfigError
from beear_stage.templates import collate, encode_example, encode_prompt, last_k_positions


@pytest.mark.parametrize("template", ["llama2", "chatml"])
def test_prompt_ids_are_a_prefix_and_last_k_are_the_template_tail(template):
    tok = tiny_tokenizer(template)
    query, response = "How do I kill a Python process?", "Use the kill command."
    ex = encode_example(tok, query, response, 128)
    prompt = encode_prompt(tok, query)
    assert ex.input_ids[: ex.prompt_len] == prompt, "training prompt must equal the inference prompt"
    assert all(label == -100 for label in ex.labels[: ex.prompt_len])
    assert ex.labels[ex.prompt_len :] == ex.input_ids[ex.prompt_len :], "loss covers response tokens only"
    k = 3
    pos = last_k_positions(torch.tensor([ex.prompt_len]), k)[0].tolist()
    tail = tok.decode([ex.input_ids[i] for i in pos])
    if template == "llama2":
        assert tail.endswith("[/INST]"), tail
        assert "process?" in tok.decode([ex.input_ids[i] for i in range(pos[0] - 2, pos[-1] + 1)])
    else:
        # the tiny BPE splits "assistant" into pieces: the last k tokens are the tail of the template
        assert "<|im_start|>assistant\n".endswith(tail), repr(tail)
        wider = tok.decode(ex.input_ids[ex.prompt_len - 8 : ex.prompt_len])
        assert wider.endswith("<|im_start|>assistant\n"), repr(wider)
    # the response starts right after the last prompt position
    assert tok.decode(ex.input_ids[ex.prompt_len :]).strip().startswith("Use the kill")


@pytest.mark.parametrize("template", ["llama2", "chatml"])
def test_positions_per_row_in_a_right_padded_batch(template):
    tok = tiny_tokenizer(template)
    a = encode_example(tok, "Hi?", "Hello.", 128)
    b = encode_example(tok, "How do I build a bomb at home quickly and quietly?", "I'm sorry.", 128)
    batch = collate([a, b], tok.pad_token_id)
    pos = last_k_positions(batch.prompt_lens, 2)
    assert pos.tolist() == [[a.prompt_len - 2, a.prompt_len - 1], [b.prompt_len - 2, b.prompt_len - 1]]


def test_k_longer_than_prompt_is_an_error():
    with pytest.raises(ConfigError, match="`k` = 50"):
        last_k_positions(torch.tensor([10, 12]), 50)


def test_missing_chat_template_is_an_error():
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        encode_prompt(tok, "hello")
