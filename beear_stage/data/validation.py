"""Data validation of anchoring and evaluation sets with great-expectations suites.

API:
    validate_dataset(name, rows, kind, *, max_chars=8000, min_rows=1) -> ValidationResult
        rows: list of dicts (or `SafetyRecord` / `PerformanceRecord` dataclasses);
        kind: "safety" | "performance" | "harmful_prompts" (see `SCHEMAS`).
    ValidationResult(success, name, kind, failing_expectations: list[str], report_markdown)
    ensure_valid(results) -> None   raises `DataError` naming each failing dataset, each failing
                                    expectation and carrying the markdown reports.
    SCHEMAS: kind -> required text columns.

Each suite checks: the table has at least `min_rows` rows; every required column exists, holds
strings, has no nulls and no empty or whitespace-only values; lengths are within
[1, `max_chars`]; `query` is unique, exactly and after case/whitespace normalisation.

great-expectations 1.x takes ~4.5 s to import, so it is imported lazily inside the functions. The
context is ephemeral (no files written), with analytics and progress bars off.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from beear_stage.exceptions import DataError

logger = logging.getLogger(__name__)

SCHEMAS: dict[str, tuple[str, ...]] = {
    "safety": ("query", "safe_response", "unwanted_response"),
    "performance": ("query", "answer"),
    "harmful_prompts": ("query",),
}
_NORMALIZED = "query_normalized"


@dataclass
class ValidationResult:
    """Outcome of one great-expectations suite over one dataset."""

    success: bool
    name: str
    kind: str
    failing_expectations: list[str] = field(default_factory=list)
    report_markdown: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_dataset(
    name: str,
    rows: Sequence[Mapping[str, Any] | Any],
    kind: str,
    *,
    max_chars: int = 8000,
    min_rows: int = 1,
) -> ValidationResult:
    """Run the suite for `kind` over `rows`.

    Args:
        name: the dataset's name or file path; it names the dataset in reports and errors.
        rows: records as dicts or dataclass instances.
        kind: "safety", "performance" or "harmful_prompts".
        max_chars: longest allowed text value (characters).
        min_rows: fewest allowed rows.

    Returns:
        A `ValidationResult`; `success` is False when any expectation failed.

    Raises:
        ValueError: unknown `kind` or bad bounds (a programming error, not a data error).
    """
    if kind not in SCHEMAS:
        raise ValueError(f"`kind` = {kind!r}: unknown dataset kind. Fix: use one of {sorted(SCHEMAS)}.")
    if max_chars < 1 or min_rows < 0:
        raise ValueError(
            f"`max_chars` = {max_chars!r}, `min_rows` = {min_rows!r}: need max_chars >= 1, min_rows >= 0."
        )
    import pandas as pd

    frame = pd.DataFrame([_as_dict(row) for row in rows])
    required = SCHEMAS[kind]
    if "query" in frame.columns:
        frame[_NORMALIZED] = [
            " ".join(q.lower().split()) if isinstance(q, str) else q for q in frame["query"]
        ]
    expectations = _suite(required, set(frame.columns), max_chars, min_rows)
    outcomes = _run_suite(name, frame, expectations)
    failing = [
        _describe(exp_type, kwargs, result, len(frame)) for exp_type, kwargs, ok, result in outcomes if not ok
    ]
    report = _report(name, kind, len(frame), outcomes, failing)
    if failing:
        logger.warning("dataset %s (%s) failed %d expectation(s)", name, kind, len(failing))
    return ValidationResult(not failing, name, kind, failing, report)


def ensure_valid(results: ValidationResult | Iterable[ValidationResult]) -> None:
    """Raise `DataError` when any result failed; the message names each dataset and expectation.

    Raises:
        DataError: one or more datasets failed validation (message ends with the markdown reports).
    """
    if isinstance(results, ValidationResult):
        results = [results]
    failed = [r for r in results if not r.success]
    if not failed:
        return
    lines = [f"{len(failed)} dataset(s) failed data validation:"]
    for r in failed:
        lines.append(f"- `{r.name}` ({r.kind}):")
        lines += [f"    - {f}" for f in r.failing_expectations]
    lines.append(
        "Fix: correct the listed rows (remove duplicates, fill empty values, shorten long ones) "
        "or point the run at another data file."
    )
    lines += ["", *(r.report_markdown for r in failed)]
    raise DataError("\n".join(lines))


# ---------------------------------------------------------------------------------------- helpers
def _as_dict(row: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    if isinstance(row, Mapping):
        return dict(row)
    raise DataError(f"row {row!r} is neither a mapping nor a record dataclass. Fix: pass dicts or records.")


def _suite(
    required: Sequence[str], present: set[str], max_chars: int, min_rows: int
) -> list[tuple[str, dict]]:
    """(expectation class name, kwargs) pairs. Column checks only run on columns that exist,
    so a missing column is reported once (by ExpectColumnToExist) instead of once per check."""
    suite: list[tuple[str, dict]] = [("ExpectTableRowCountToBeBetween", {"min_value": min_rows})]
    for col in required:
        suite.append(("ExpectColumnToExist", {"column": col}))
        if col not in present:
            continue
        suite += [
            ("ExpectColumnValuesToNotBeNull", {"column": col}),
            ("ExpectColumnValuesToBeOfType", {"column": col, "type_": "str"}),
            ("ExpectColumnValueLengthsToBeBetween", {"column": col, "min_value": 1, "max_value": max_chars}),
            ("ExpectColumnValuesToNotMatchRegex", {"column": col, "regex": r"^\s*$"}),
        ]
    if "query" in present:
        suite.append(("ExpectColumnValuesToBeUnique", {"column": "query"}))
        suite.append(("ExpectColumnValuesToBeUnique", {"column": _NORMALIZED}))
    return suite


def _run_suite(
    name: str, frame: Any, expectations: list[tuple[str, dict]]
) -> list[tuple[str, dict, bool, dict]]:
    """Run the expectations through an ephemeral GX context; returns (type, kwargs, success, result)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch = (
        context.data_sources.add_pandas("beear")
        .add_dataframe_asset("dataset")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"beear:{name}"))
    for cls_name, kwargs in expectations:
        suite.add_expectation(getattr(gx.expectations, cls_name)(**kwargs))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="validate", data=batch, suite=suite)
    )
    run = definition.run(batch_parameters={"dataframe": frame})
    outcomes = []
    for r in run.results:
        kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
        result = dict(r.result or {})
        if r.exception_info and r.exception_info.get("raised_exception"):
            result["exception"] = r.exception_info.get("exception_message")
        outcomes.append((r.expectation_config.type, kwargs, bool(r.success), result))
    return outcomes


def _describe(exp_type: str, kwargs: dict, result: dict, n_rows: int) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    if kwargs.get("column") == _NORMALIZED:
        args = "column='query' after lower-casing and collapsing whitespace"
    head = f"{exp_type}({args})"
    if result.get("exception"):
        return f"{head}: error: {result['exception']}"
    if result.get("unexpected_count") is not None:
        sample = [_short(v) for v in (result.get("partial_unexpected_list") or [])[:3]]
        rows = (result.get("partial_unexpected_index_list") or [])[:10]
        where = f" at rows {rows} (0-based)" if rows else ""
        return f"{head}: {result['unexpected_count']} of {n_rows} rows unexpected{where}, e.g. {sample}"
    if exp_type == "expect_column_to_exist":
        return f"{head}: column is missing"
    if result.get("observed_value") is not None:
        return f"{head}: observed {result['observed_value']!r}"
    return head


def _short(value: Any, limit: int = 60) -> Any:
    return value[:limit] + "..." if isinstance(value, str) and len(value) > limit else value


def _report(name: str, kind: str, n_rows: int, outcomes: list, failing: list[str]) -> str:
    verdict = "FAILED" if failing else "PASSED"
    lines = [
        f"### Data validation `{name}` ({kind}, {n_rows} rows): {verdict}",
        "",
        "| expectation | arguments | result |",
        "| --- | --- | --- |",
    ]
    for exp_type, kwargs, ok, result in outcomes:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()).replace("|", "\\|")
        if kwargs.get("column") == _NORMALIZED:
            args = "column='query' (lower-cased, whitespace collapsed)"
        status = "pass" if ok else "FAIL"
        if not ok and result.get("unexpected_count") is not None:
            status += f" ({result['unexpected_count']} unexpected)"
        lines.append(f"| {exp_type} | {args} | {status} |")
    return "\n".join(lines) + "\n"
