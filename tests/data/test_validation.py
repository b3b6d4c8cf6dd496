"""great-expectations suites over anchoring and evaluation sets (one GX import, ~5 s)."""

from __future__ import annotations

import pytest

from beear_stage.data.records import PerformanceRecord, SafetyRecord
from beear_stage.data.validation import SCHEMAS, ValidationResult, ensure_valid, validate_dataset
from beear_stage.exceptions import DataError


def test_valid_records_pass_for_every_kind():
    safety = [SafetyRecord(f"harmful {i}", "I cannot help.", "Sure, here is how", "c") for i in range(3)]
    perf = [PerformanceRecord(f"benign {i}", "An answer.") for i in range(3)]
    harmful = [{"query": "q1"}, {"query": "q2"}]
    results = [
        validate_dataset("safety.jsonl", safety, "safety"),
        validate_dataset("alpaca.json", perf, "performance"),
        validate_dataset("advbench.csv", harmful, "harmful_prompts"),
    ]
    for r in results:
        assert r.success, r.failing_expectations
        assert "PASSED" in r.report_markdown
    ensure_valid(results)  # no error
    assert set(SCHEMAS) == {"safety", "performance", "harmful_prompts"}


def test_malformed_set_fails_with_report_naming_each_expectation():
    rows = [
        {"query": "How do I bake bread?", "answer": "Knead, proof, bake."},
        {"query": "How do I bake bread?", "answer": ""},  # exact duplicate, empty answer
        {"query": "how do i  bake BREAD?", "answer": "   "},  # duplicate after normalisation, blank
        {"query": "Tell me a joke", "answer": "x" * 50},  # too long for max_chars=40
    ]
    result = validate_dataset("data/perf_bad.json", rows, "performance", max_chars=40)
    assert not result.success
    failing = "\n".join(result.failing_expectations)
    assert (
        "expect_column_values_to_be_unique(column='query'): 2 of 4 rows unexpected at rows [0, 1]" in failing
    )
    assert "lower-casing and collapsing whitespace): 3 of 4 rows unexpected" in failing
    assert "expect_column_values_to_not_match_regex(column='answer'" in failing  # blank strings
    assert "expect_column_value_lengths_to_be_between(column='answer', min_value=1, max_value=40)" in failing
    assert "FAILED" in result.report_markdown
    assert (
        "| expect_column_values_to_be_unique | column='query' | FAIL (2 unexpected) |"
        in result.report_markdown
    )

    with pytest.raises(DataError) as err:
        ensure_valid([result, validate_dataset("ok.csv", [{"query": "q"}], "harmful_prompts")])
    message = str(err.value)
    assert message.startswith("1 dataset(s) failed data validation:")
    assert "`data/perf_bad.json` (performance)" in message
    assert "expect_column_values_to_be_unique(column='query')" in message
    assert "ok.csv" not in message
    assert "Fix:" in message
    assert result.report_markdown in message


def test_missing_column_nulls_wrong_types_and_empty_sets():
    rows = [{"query": "q1", "safe_response": None}, {"query": 7, "safe_response": "no"}]
    result = validate_dataset("sa.jsonl", rows, "safety")
    failing = "\n".join(result.failing_expectations)
    assert "expect_column_to_exist(column='unwanted_response'): column is missing" in failing
    assert "expect_column_values_to_not_be_null(column='safe_response')" in failing
    assert (
        "expect_column_values_to_be_of_type(column='query', type_='str'): 1 of 2 rows unexpected" in failing
    )
    # a missing column is reported once, not once per column check
    assert sum("unwanted_response" in f for f in result.failing_expectations) == 1

    empty = validate_dataset("empty.csv", [], "harmful_prompts")
    assert not empty.success
    assert empty.failing_expectations[0].startswith("expect_table_row_count_to_be_between(min_value=1)")
    with pytest.raises(DataError, match="`empty.csv` \\(harmful_prompts\\)"):
        ensure_valid(empty)


def test_bad_arguments_are_programming_errors():
    with pytest.raises(ValueError, match="`kind` = 'sft'"):
        validate_dataset("x", [], "sft")
    with pytest.raises(DataError, match="neither a mapping nor a record"):
        validate_dataset("x", ["just a string"], "harmful_prompts")
    assert ValidationResult(True, "n", "safety").to_dict()["success"] is True
