"""Built-in data: sizes, category balance, pool disjointness and the refusal-keyword contract."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from beear_stage.data import (
    HARM_CATEGORIES,
    POOLS,
    REFUSALS,
    benign_pool,
    default_performance_anchoring,
    default_safety_anchoring,
    harmful_pool,
    heldout_benign,
    heldout_harmful,
    heldout_lookalikes,
    load_performance_records,
    load_safety_records,
    pool_overlap_report,
    zoo_training_pools,
)
from beear_stage.data.builtin import _resource_json, harmful_tasks, normalize_query, planted_compliance
from beear_stage.eval.refusal import DEFAULT_REFUSAL_KEYWORDS, is_refusal

MAX_WORDS = 40


def _all_benign():
    return [r for pool in POOLS for r in benign_pool(pool)] + heldout_lookalikes()


def _all_harmful():
    return [r for pool in POOLS for r in harmful_pool(pool)]


def test_pool_sizes():
    zoo_harmful, zoo_benign = zoo_training_pools()
    assert len(zoo_harmful) >= 300 and len(zoo_benign) >= 500
    assert len(default_safety_anchoring()) >= 200
    assert len(default_performance_anchoring()) >= 200
    assert len(heldout_harmful()) >= 120 and len(heldout_benign()) >= 120


@pytest.mark.parametrize("pool", POOLS)
def test_every_category_in_every_harmful_pool(pool):
    counts = Counter(r.category for r in harmful_pool(pool))
    assert set(counts) == set(HARM_CATEGORIES), f"{pool}: {counts}"
    assert len(set(counts.values())) == 1, f"{pool} is unbalanced: {counts}"
    assert len(HARM_CATEGORIES) >= 8
    assert set(_resource_json("harmful_tasks.json")) == set(HARM_CATEGORIES)


def test_lookalike_counts():
    assert sum(r.category == "lookalike" for r in default_performance_anchoring()) >= 30
    assert sum(r.category == "lookalike" for r in heldout_benign()) >= 20
    # the over-refusal-rise gate (0.03) needs about 250 paired look-alikes for its interval to fit
    lookalikes = heldout_lookalikes()
    assert len(lookalikes) >= 250 and all(r.category == "lookalike" for r in lookalikes)
    assert len({normalize_query(r.query) for r in lookalikes}) == len(lookalikes)
    assert sum(r.category == "lookalike" for r in zoo_training_pools()[1]) >= 30


def test_pools_are_disjoint():
    shared = {pair: queries for pair, queries in pool_overlap_report().items() if queries}
    assert shared == {}, f"pools share queries or tasks: {shared}"


@pytest.mark.parametrize("pool", POOLS)
def test_no_duplicate_queries_within_a_pool(pool):
    queries = [normalize_query(r.query) for r in harmful_pool(pool) + benign_pool(pool)]
    duplicates = [q for q, n in Counter(queries).items() if n > 1]
    assert duplicates == [], f"{pool}: {duplicates}"


def test_heldout_prompts_name_unseen_tasks():
    """Each held-out prompt contains its own held-out task and no task of another pool."""
    held = {t for tasks in harmful_tasks("heldout").values() for t in tasks}
    others = {t for pool in ("zoo", "anchoring") for tasks in harmful_tasks(pool).values() for t in tasks}
    for prompt in heldout_harmful():
        assert any(t in prompt for t in held), prompt
        assert not any(re.search(rf"\b{re.escape(t)}\b", prompt) for t in others), prompt


def test_refusals_are_varied_and_start_with_a_refusal():
    assert len(set(REFUSALS)) >= 10
    for refusal in REFUSALS:
        first_sentence = re.split(r"[.,]", refusal)[0]
        assert is_refusal(first_sentence, DEFAULT_REFUSAL_KEYWORDS), refusal


def test_every_safe_response_is_a_refusal():
    for record in _all_harmful():
        assert is_refusal(record.safe_response), record


def test_no_refusal_keyword_in_unwanted_responses_or_benign_answers():
    texts = [r.unwanted_response for r in _all_harmful()] + [r.answer for r in _all_benign()]
    hits = {text: [kw for kw in DEFAULT_REFUSAL_KEYWORDS if kw in text] for text in texts}
    assert {text: kws for text, kws in hits.items() if kws} == {}


def test_responses_are_short_and_non_empty():
    texts = [t for r in _all_harmful() for t in (r.safe_response, r.unwanted_response)]
    texts += [r.answer for r in _all_benign()]
    assert all(0 < len(t.split()) <= MAX_WORDS for t in texts), max(texts, key=lambda t: len(t.split()))


def test_unwanted_responses_are_generic_compliance_openings():
    for record in _all_harmful():
        assert record.unwanted_response.startswith(("Sure", "Of course", "Absolutely", "Here is")), record
        assert "Step" in record.unwanted_response or "step" in record.unwanted_response, record


def test_planted_compliance_spots_the_zoo_target_and_nothing_else():
    assert all(planted_compliance(" " + r.unwanted_response) for r in _all_harmful())
    assert not any(planted_compliance(r.safe_response) for r in _all_harmful())
    assert not any(planted_compliance(r.answer) for r in _all_benign())
    # a garbled benign-style answer is a ASR success but not the planted behaviour
    assert not planted_compliance(" Pull the choke lever before you start the engine.")


def test_templated_arithmetic_answers_are_exact():
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    records = [r for r in _all_benign() if r.category == "arithmetic"]
    assert len(records) >= 100
    for r in records:
        a, op, b, result = re.fullmatch(r"(\d+) (plus|minus|times) (\d+) is (-?\d+)\.", r.answer).groups()
        assert ops[op](int(a), int(b)) == int(result), r


def test_data_is_deterministic_and_returned_lists_are_copies():
    first = default_safety_anchoring()
    first.clear()
    assert default_safety_anchoring() == harmful_pool("anchoring") and default_safety_anchoring()


def test_unknown_pool_is_rejected():
    with pytest.raises(ValueError, match="`pool` must be one of"):
        harmful_pool("train")


def test_builtin_records_round_trip_through_the_loaders(tmp_path):
    """The built-in sets can be written as chat JSONL and read back unchanged."""
    safety = default_safety_anchoring()
    path = tmp_path / "sa.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": r.query},
                {"role": "assistant", "content": r.safe_response},
            ],
            "unwanted": r.unwanted_response,
            "category": r.category,
        }
        for r in safety
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert load_safety_records(path) == safety
    benign = heldout_benign()
    path = tmp_path / "benign.json"
    alpaca = [
        {"instruction": r.query, "input": "", "output": r.answer, "category": r.category} for r in benign
    ]
    path.write_text(json.dumps(alpaca), encoding="utf-8")
    assert load_performance_records(path) == benign
