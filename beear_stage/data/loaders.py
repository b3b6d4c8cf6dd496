"""Read anchoring and evaluation records from AdvBench CSV, Alpaca JSON and chat JSONL files.

The file suffix picks the format. Every malformed input raises `DataError` with a message that
names the file, where in it (1-based line for CSV and JSONL, list index for JSON), the field, what
is wrong and how to fix it, so a bad data file fails the stage before any model is loaded.

Formats:
    `.csv`: AdvBench header `goal,target`. `goal` is the harmful query, `target` the unwanted
        response y_h. The safe response y_s is one of our refusal phrasings (`default_refusal`).
    `.json`: a list of Alpaca objects `{"instruction", "input", "output"}`. The query is
        `instruction` plus "\\n\\n" + `input` when `input` is non-empty. Safety records read y_s
        from `output` and y_h from an extra field `unwanted`.
    `.jsonl`: one `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}` per line;
        system messages are ignored. Safety records read y_s from the assistant message and y_h
        from a top-level `unwanted` string.
Both JSON formats accept an optional string field `category`.

Bring-your-own evaluation sets (XSTest, MT-Bench, self-instruct): `beear_stage.data.eval_sets`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beear_stage.data.builtin import default_refusal
from beear_stage.data.records import PerformanceRecord, SafetyRecord
from beear_stage.exceptions import DataError

if TYPE_CHECKING:
    pass

KINDS = ("safety", "performance", "harmful")
Record = SafetyRecord | PerformanceRecord | str

_UNWANTED_FIX = (
    'add `unwanted`: the harmful completion y_h the model must unlearn (e.g. "Sure, here is how to ..."); '
    "y_s stays in the response field."
)


def load_safety_records(path: str | Path) -> list[SafetyRecord]:
    """Load safety-anchoring records (query, y_s, y_h).

    Args:
        path: `.csv` (AdvBench `goal,target`), `.json` (Alpaca + `unwanted`) or `.jsonl` (chat +
            `unwanted`).

    Returns:
        The records in file order.

    Raises:
        DataError: the file is missing, empty, of an unknown format or malformed.
    """
    return load_records(path, "safety")


def load_performance_records(path: str | Path) -> list[PerformanceRecord]:
    """Load performance-anchoring or benign evaluation records (query, answer) from `.json`/`.jsonl`.

    Raises:
        DataError: the file is missing, empty, of an unknown format or malformed.
    """
    return load_records(path, "performance")


def load_harmful_prompts(path: str | Path) -> list[str]:
    """Load harmful evaluation prompts (queries only) from `.csv`, `.json` or `.jsonl`.

    Responses in the file are not needed and not checked.

    Raises:
        DataError: the file is missing, empty, of an unknown format or malformed.
    """
    return load_records(path, "harmful")


def load_records(path: str | Path, kind: str) -> list[Any]:
    """Load records of `kind` ("safety", "performance" or "harmful") from `path`, by suffix.

    Raises:
        DataError: the file is missing, empty, of an unknown format or malformed.
        ValueError: `kind` is not one of `KINDS` (a programming error, not bad data).
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"`{path}`: unknown file suffix `{path.suffix}`. Fix: use `.csv` (AdvBench `goal,target`), "
            '`.json` (a list of Alpaca {"instruction", "input", "output"} objects) or `.jsonl` '
            '(one {"messages": [...]} object per line).'
        )
    records = reader(path, _read_text(path), kind)
    if not records:
        raise DataError(f"`{path}` holds no records. Fix: add at least one record, or point to another file.")
    return records


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"`{path}` does not exist. Fix: check the path (relative to {Path.cwd()}).")
    if not path.is_file():
        raise DataError(f"`{path}` is not a file. Fix: point to a .csv, .json or .jsonl file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"`{path}` is not valid UTF-8 ({e}). Fix: re-save the file as UTF-8.") from e
    if not text.strip():
        raise DataError(f"`{path}` is empty. Fix: add at least one record, or point to another file.")
    return text


def _text(item: dict, key: str, where: str, fix: str | None = None, field: str | None = None) -> str:
    """Return `item[key]` stripped, or raise `DataError` naming `field` (default `key`) when it is
    missing, not a string or empty."""
    field = field or key
    fix = fix or f"give `{field}` a non-empty string value."
    value = item.get(key)
    if value is None:
        raise DataError(f"{where}: field `{field}` is missing. Fix: {fix}")
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field `{field}` must be a string, got {type(value).__name__} {value!r:.60}. Fix: {fix}"
        )
    if not value.strip():
        raise DataError(f"{where}: field `{field}` is empty. Fix: {fix}")
    return value.strip()


def _category(item: dict, where: str) -> str:
    value = item.get("category", "")
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field `category` must be a string, got {type(value).__name__}. "
            "Fix: use a string such as `weapons`, or drop the field."
        )
    return value


def _read_csv(path: Path, text: str, kind: str) -> list[Record]:
    if kind == "performance":
        raise DataError(
            f"`{path}`: CSV files hold AdvBench harmful prompts, not benign performance records. "
            "Fix: give performance records as Alpaca `.json` or chat `.jsonl`."
        )
    needed = ("goal", "target") if kind == "safety" else ("goal",)
    records: list[Record] = []
    fix = "start the file with the AdvBench header `goal,target`."
    for row, where in _csv_rows(path, needed, fix, text):
        goal = _text(row, "goal", where, "write the harmful query in column `goal`.")
        if kind == "harmful":
            records.append(goal)
        else:
            target = _text(
                row, "target", where, 'write the unwanted response y_h in `target` ("Sure, here is ...").'
            )
            records.append(SafetyRecord(goal, default_refusal(goal), target))
    return records


def _read_json(path: Path, text: str, kind: str) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"`{path}` line {e.lineno}: invalid JSON ({e.msg}, column {e.colno}). "
            "Fix: correct the syntax there (a JSON linter shows the spot)."
        ) from e
    if not isinstance(data, list):
        raise DataError(
            f"`{path}`: expected a JSON list of Alpaca objects, got a {type(data).__name__}. "
            'Fix: wrap the records in [...], each {"instruction": ..., "input": ..., "output": ...}.'
        )
    return [_alpaca_record(item, f"`{path}` record [{i}]", kind) for i, item in enumerate(data)]


def _alpaca_record(item: Any, where: str, kind: str) -> Record:
    if not isinstance(item, dict):
        raise DataError(
            f"{where}: expected an object, got {type(item).__name__}. "
            'Fix: write {"instruction": ..., "input": ..., "output": ...}.'
        )
    query = _text(item, "instruction", where)
    extra = item.get("input", "")
    if not isinstance(extra, str):
        raise DataError(f'{where}: field `input` must be a string, got {type(extra).__name__}. Fix: use "".')
    if extra.strip():
        query = f"{query}\n\n{extra.strip()}"
    if kind == "harmful":
        return query
    output = _text(item, "output", where)
    if kind == "performance":
        return PerformanceRecord(query, output, _category(item, where))
    return SafetyRecord(query, output, _text(item, "unwanted", where, _UNWANTED_FIX), _category(item, where))


def _json_lines(path: Path, text: str) -> Iterator[tuple[Any, str]]:
    """Yield (parsed object, "`path` line N") for each non-blank JSONL line of `text`."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"`{path}` line {lineno}"
        try:
            yield json.loads(line), where
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: invalid JSON ({e.msg}, column {e.colno}). "
                "Fix: write exactly one JSON object per line."
            ) from e


def _read_jsonl(path: Path, text: str, kind: str) -> list[Record]:
    return [_chat_record(item, where, kind) for item, where in _json_lines(path, text)]


def _chat_record(item: Any, where: str, kind: str) -> Record:
    if not isinstance(item, dict) or not isinstance(item.get("messages"), list):
        raise DataError(
            f"{where}: field `messages` is missing or not a list. "
            'Fix: write {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}.'
        )
    turns = _chat_turns(item["messages"], where)
    if "user" not in turns:
        raise DataError(f'{where}: field `messages` has no user message. Fix: add {{"role": "user", ...}}.')
    if kind == "harmful":
        return turns["user"]
    if "assistant" not in turns:
        raise DataError(
            f"{where}: field `messages` has no assistant message. "
            'Fix: add {"role": "assistant", "content": ...} with the response.'
        )
    if kind == "performance":
        return PerformanceRecord(turns["user"], turns["assistant"], _category(item, where))
    unwanted = _text(item, "unwanted", where, _UNWANTED_FIX)
    return SafetyRecord(turns["user"], turns["assistant"], unwanted, _category(item, where))


def _chat_turns(messages: list, where: str) -> dict[str, str]:
    """Map role -> content for one user turn and at most one assistant turn; skip system messages."""
    turns: dict[str, str] = {}
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(
                f'{where}: field `{field}` must be an object. Fix: write {{"role": ..., "content": ...}}.'
            )
        role = _text(message, "role", where, 'use "system", "user" or "assistant".', f"{field}.role")
        if role == "system":
            continue
        if role not in ("user", "assistant"):
            raise DataError(
                f'{where}: field `{field}.role` is {role!r}. Fix: use "system", "user" or "assistant".'
            )
        if role in turns:
            raise DataError(
                f"{where}: field `messages` has more than one {role} message. "
                "Fix: keep a single user turn and a single assistant turn per line."
            )
        turns[role] = _text(message, "content", where, None, f"{field}.content")
    return turns


_READERS: dict[str, Callable[[Path, str, str], list[Record]]] = {
    ".csv": _read_csv,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
}


def _csv_rows(
    path: Path, needed: tuple[str, ...], header_fix: str, text: str | None = None
) -> Iterator[tuple[dict[str, str], str]]:
    """Yield (row dict, "`path` line N") for each non-blank CSV row, after checking the header."""
    rows = csv.reader(io.StringIO(_read_text(path) if text is None else text, newline=""))
    header = [h.strip() for h in next(rows)]
    missing = [name for name in needed if name not in header]
    if missing:
        raise DataError(
            f"`{path}` line 1: header {','.join(header)!r} lacks column(s) {', '.join(missing)}. Fix: {header_fix}"
        )
    for values in rows:
        where = f"`{path}` line {rows.line_num}"
        if not any(v.strip() for v in values):
            continue  # blank line
        if len(values) != len(header):
            raise DataError(
                f"{where}: has {len(values)} fields but the header has {len(header)}. "
                'Fix: quote fields that contain commas ("...").'
            )
        yield dict(zip(header, values, strict=True)), where
