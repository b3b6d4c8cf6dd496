"""Bring-your-own evaluation sets: one file -> an `EvalSet` split by role, validated.

`load_eval_set(path, format=None) -> EvalSet` reads AdvBench CSV, Alpaca JSON and chat JSONL
(`beear_stage.data.loaders`) and three more formats,
detected from the suffix plus the CSV header or the first JSONL object's keys, and run the
great-expectations suites of `beear_stage.data.validation` over what they read:
    XSTest CSV `id,prompt,type,label,focus,note` (`load_xstest`): `safe` rows are look-alikes for
        over-refusal, `unsafe` rows harmful prompts.
    MT-Bench question JSONL `{"question_id", "category", "turns"}` (`load_mtbench_questions`): the
        first turn is a benign prompt without reference answer.
    Self-instruct seed-task JSONL `{"instruction", "instances": [{"input", "output"}]}`
        (`load_self_instruct`): the first instance gives a benign record with reference answer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beear_stage.data.loaders import (
    Record,
    _category,
    _csv_rows,
    _json_lines,
    _read_csv,
    _read_json,
    _read_jsonl,
    _read_text,
    _text,
)
from beear_stage.data.records import PerformanceRecord
from beear_stage.exceptions import ConfigError, DataError

if TYPE_CHECKING:
    from beear_stage.data.validation import ValidationResult

# ------------------------------------------------------------------ bring-your-own evaluation sets
# One file -> an `EvalSet` split by role. Parsing (structure, types, labels) raises `DataError`
# naming file, line and field; the great-expectations suites then check content (duplicates,
# blank or over-long values) and name the file and the failing expectation.

EVAL_FORMATS = ("advbench", "xstest", "mtbench", "self-instruct", "alpaca", "chat")
_XSTEST_LABELS = ("safe", "unsafe")
_MTBENCH_FIX = 'write {"question_id": 81, "category": "writing", "turns": ["<first user turn>", ...]}.'
_SELF_INSTRUCT_FIX = (
    'write {"instruction": ..., "instances": [{"input": "" or extra context, "output": <reference answer>}]}.'
)


@dataclass(frozen=True)
class XSTestSet:
    """XSTest prompts split by `label`: `safe` look-alikes (to be answered) and `unsafe` ones (to be refused)."""

    safe: list[str]
    unsafe: list[str]


@dataclass
class EvalSet:
    """An evaluation set read from one file and split by role; roles a format does not supply are empty.

    Attributes:
        harmful: prompts the model must refuse (AdvBench `goal`, XSTest `unsafe` rows): ASR.
        benign: benign prompts with a reference answer (self-instruct first instance, Alpaca,
            chat): non-refusal, reference NLL, answer agreement.
        benign_prompts_only: benign prompts without a reference answer (MT-Bench first turns):
            non-refusal and answer agreement, no NLL.
        lookalikes: safe prompts that resemble harmful ones (XSTest `safe` rows; Alpaca/chat
            records with `category` "lookalike", also kept in `benign`): over-refusal.
        source: the file path.
        format: one of `EVAL_FORMATS`.
    """

    harmful: list[str] = field(default_factory=list)
    benign: list[PerformanceRecord] = field(default_factory=list)
    benign_prompts_only: list[str] = field(default_factory=list)
    lookalikes: list[str] = field(default_factory=list)
    source: str = ""
    format: str = ""

    def benign_prompts(self) -> list[str]:
        """Every benign prompt, with a reference answer or without (`benign` queries first)."""
        return [r.query for r in self.benign] + list(self.benign_prompts_only)

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in _EVAL_ROLES}


_EVAL_ROLES = {  # role -> great-expectations kind (`beear_stage.data.validation.SCHEMAS`)
    "harmful": "harmful_prompts",
    "benign": "performance",
    # prompt-only sets share the query-only schema of "harmful_prompts"; the dataset name says the role
    "benign_prompts_only": "harmful_prompts",
    "lookalikes": "harmful_prompts",
}


def load_xstest(path: str | Path) -> XSTestSet:
    """Load an XSTest-format prompt CSV (`id,prompt,type,label,focus,note`; `prompt` and `label` required).

    Args:
        path: the CSV file; `label` is "safe" or "unsafe" (case-insensitive).

    Returns:
        The prompts in file order, split by label.

    Raises:
        DataError: the file is missing or empty, a column is missing, a `prompt` is empty or a
            `label` is neither "safe" nor "unsafe" (message names file, line and field).
    """
    path = Path(path)
    fix = "start the file with the XSTest header `id,prompt,type,label,focus,note`."
    split: dict[str, list[str]] = {label: [] for label in _XSTEST_LABELS}
    for row, where in _csv_rows(path, ("prompt", "label"), fix):
        prompt = _text(row, "prompt", where, "write the prompt in column `prompt`.")
        label = row["label"].strip().lower()
        if label not in split:
            raise DataError(
                f"{where}: field `label` is {row['label']!r}. Fix: write `safe` (a prompt the model "
                "should answer) or `unsafe` (a prompt it should refuse)."
            )
        split[label].append(prompt)
    _require_records(path, split["safe"] + split["unsafe"])
    return XSTestSet(split["safe"], split["unsafe"])


def load_mtbench_questions(path: str | Path) -> list[str]:
    """Load MT-Bench question JSONL (`question_id`, `category`, `turns`) as benign prompts.

    Only the first turn is used (a single-turn prompt); `reference` answers, where present, are
    ignored. `question_id` (integer or string) and a non-empty `turns` list are required;
    `category` is optional but must be a string.

    Raises:
        DataError: the file is missing, empty or malformed (message names file, line and field).
    """
    path = Path(path)
    return _require_records(
        path, [_mtbench_prompt(item, where) for item, where in _json_lines(path, _read_text(path))]
    )


def load_self_instruct(path: str | Path) -> list[PerformanceRecord]:
    """Load self-instruct seed-task JSONL (`instruction`, `instances[{input, output}]`) as benign records.

    One record per task from its first instance: the query is `instruction`, plus "\\n\\n" +
    `input` when `input` is non-empty (as for Alpaca); the answer is `output`. Other instances and
    fields (`id`, `name`, `is_classification`) are ignored; an optional `category` string is kept.

    Raises:
        DataError: the file is missing, empty or malformed (message names file, line and field).
    """
    path = Path(path)
    records = [_self_instruct_record(item, where) for item, where in _json_lines(path, _read_text(path))]
    return _require_records(path, records)


def detect_eval_format(path: str | Path) -> str:
    """Return the `EVAL_FORMATS` entry of `path`, from its suffix and its CSV header or first JSON keys.

    `.csv`: a `goal` column = "advbench", `prompt` and `label` columns = "xstest". `.json` =
    "alpaca". `.jsonl`: first object with `turns` = "mtbench", `instances` = "self-instruct",
    `messages` = "chat".

    Raises:
        DataError: unknown suffix, or a header / first object that matches no format.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    override = f"or pass `format=` (one of {EVAL_FORMATS})"
    if suffix == ".json":
        return "alpaca"
    if suffix == ".csv":
        header = {h.strip() for h in next(csv.reader(io.StringIO(_read_text(path), newline="")))}
        if "goal" in header:
            return "advbench"
        if {"prompt", "label"} <= header:
            return "xstest"
        raise DataError(
            f"`{path}` line 1: header {','.join(sorted(header))!r} matches no CSV format. Fix: use the "
            f"AdvBench header `goal,target` or the XSTest header `id,prompt,type,label,focus,note`, {override}."
        )
    if suffix == ".jsonl":
        item, where = next(_json_lines(path, _read_text(path)))
        keys = set(item) if isinstance(item, dict) else set()
        for key, name in (("turns", "mtbench"), ("instances", "self-instruct"), ("messages", "chat")):
            if key in keys:
                return name
        raise DataError(
            f"{where}: keys {sorted(keys)} match no JSONL format. Fix: write MT-Bench "
            '{"question_id", "category", "turns"}, self-instruct {"instruction", "instances"} or chat '
            f'{{"messages"}} objects, {override}.'
        )
    raise DataError(
        f"`{path}`: unknown file suffix `{path.suffix}`. Fix: use `.csv` (AdvBench, XSTest), `.json` "
        f"(Alpaca) or `.jsonl` (MT-Bench, self-instruct, chat), {override}."
    )


def load_eval_set(
    path: str | Path, format: str | None = None, *, validate: bool = True, max_chars: int = 8000
) -> EvalSet:
    """Load a bring-your-own evaluation set, detecting its format unless `format` is given.

    Args:
        path: the file.
        format: one of `EVAL_FORMATS`; None = `detect_eval_format(path)`.
        validate: run the great-expectations suites over every non-empty role (`validate_eval_set`).
        max_chars: longest allowed text value for the suites.

    Returns:
        The `EvalSet`. Alpaca and chat files are read as benign records with reference answers;
        harmful prompts in those formats load with `load_harmful_prompts`.

    Raises:
        ConfigError: `format` is not one of `EVAL_FORMATS`.
        DataError: the file cannot be read or parsed (file, line, field, fix), or a suite fails
            (file, failing expectation and the markdown report).
    """
    if format is None:
        format = detect_eval_format(path)
    elif format not in _EVAL_READERS:
        raise ConfigError(f"`format` = {format!r}: unknown eval-set format. Fix: use one of {EVAL_FORMATS}.")
    path = Path(path)
    eval_set = EvalSet(source=str(path), format=format, **_EVAL_READERS[format](path))
    if validate:
        from beear_stage.data.validation import ensure_valid

        ensure_valid(validate_eval_set(eval_set, max_chars=max_chars))
    return eval_set


def validate_eval_set(eval_set: EvalSet, *, max_chars: int = 8000) -> list[ValidationResult]:
    """Run the great-expectations suite of each non-empty role of `eval_set`.

    Each dataset is named "<source> [<format>: <role>]", so a failure names the file.
    """
    from beear_stage.data.validation import validate_dataset

    results = []
    for role, kind in _EVAL_ROLES.items():
        rows = getattr(eval_set, role)
        if not rows:
            continue
        rows = [{"query": q} for q in rows] if kind == "harmful_prompts" else rows
        name = f"{eval_set.source} [{eval_set.format}: {role}]"
        results.append(validate_dataset(name, rows, kind, max_chars=max_chars))
    return results


def _require_records(path: Path, records: list) -> list:
    if not records:
        raise DataError(f"`{path}` holds no records. Fix: add at least one record, or point to another file.")
    return records


def _object(item: Any, where: str, fix: str) -> dict:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}. Fix: {fix}")
    return item


def _mtbench_prompt(item: Any, where: str) -> str:
    item = _object(item, where, _MTBENCH_FIX)
    qid = item.get("question_id")
    if qid is None or isinstance(qid, bool) or not isinstance(qid, int | str):
        got = "missing" if qid is None else f"{type(qid).__name__} {qid!r:.40}"
        raise DataError(
            f"{where}: field `question_id` must be an integer or string, got {got}. Fix: {_MTBENCH_FIX}"
        )
    _category(item, where)
    turns = item.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DataError(
            f"{where}: field `turns` must be a non-empty list, got {turns!r:.60}. Fix: {_MTBENCH_FIX}"
        )
    return _text({"turns": turns[0]}, "turns", where, "make the first turn a non-empty string.", "turns[0]")


def _self_instruct_record(item: Any, where: str) -> PerformanceRecord:
    item = _object(item, where, _SELF_INSTRUCT_FIX)
    query = _text(item, "instruction", where, _SELF_INSTRUCT_FIX)
    instances = item.get("instances")
    if not isinstance(instances, list) or not instances:
        raise DataError(
            f"{where}: field `instances` must be a non-empty list, got {instances!r:.60}. Fix: {_SELF_INSTRUCT_FIX}"
        )
    first = instances[0]
    if not isinstance(first, dict):
        raise DataError(
            f"{where}: field `instances[0]` must be an object, got {type(first).__name__}. Fix: {_SELF_INSTRUCT_FIX}"
        )
    extra = first.get("input", "")
    if not isinstance(extra, str):
        raise DataError(
            f'{where}: field `instances[0].input` must be a string, got {type(extra).__name__}. Fix: use "".'
        )
    if extra.strip():
        query = f"{query}\n\n{extra.strip()}"
    answer = _text(first, "output", where, "write the reference answer in `output`.", "instances[0].output")
    return PerformanceRecord(query, answer, _category(item, where))


def _eval_alpaca_or_chat(reader: Callable[[Path, str, str], list[Record]]) -> Callable[[Path], dict]:
    def read(path: Path) -> dict:
        benign = _require_records(path, reader(path, _read_text(path), "performance"))
        return {"benign": benign, "lookalikes": [r.query for r in benign if r.category == "lookalike"]}

    return read


def _eval_xstest(path: Path) -> dict:
    xstest = load_xstest(path)
    return {"harmful": xstest.unsafe, "lookalikes": xstest.safe}


_EVAL_READERS: dict[str, Callable[[Path], dict]] = {
    "advbench": lambda p: {"harmful": _require_records(p, _read_csv(p, _read_text(p), "harmful"))},
    "xstest": _eval_xstest,
    "mtbench": lambda p: {"benign_prompts_only": load_mtbench_questions(p)},
    "self-instruct": lambda p: {"benign": load_self_instruct(p)},
    "alpaca": _eval_alpaca_or_chat(_read_json),
    "chat": _eval_alpaca_or_chat(_read_jsonl),
}
