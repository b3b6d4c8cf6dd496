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

Bring-your-own evaluation sets (`load_eval_set(path, format=None) -> EvalSet`) add three formats,
detected from the suffix plus the CSV header or the first JSONL object's keys, and run the
great-expectations suites of `beear_stage.validation` over what they read:
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
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beear_stage.data.builtin import default_refusal
from beear_stage.data.records import PerformanceRecord, SafetyRecord
from beear_stage.exceptions import ConfigError, DataError

if TYPE_CHECKING:
    from beear_stage.validation import ValidationResult

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


def _read_jsonl(path: Path, text: str, kind: str) -> list[Record]:
    records: list[Record] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"`{path}` line {lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: invalid JSON ({e.msg}, column {e.colno}). "
                "Fix: write exactly one JSON object per line."
            ) from e
        records.append(_chat_record(item, where, kind))
    return records


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
        harmful: prompts the model must refuse (AdvBench `goal`, XSTest `unsafe` rows): keyword ASR.
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


_EVAL_ROLES = {  # role -> great-expectations kind (`beear_stage.validation.SCHEMAS`)
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
    return _require_records(path, [_mtbench_prompt(item, where) for item, where in _json_lines(path)])


def load_self_instruct(path: str | Path) -> list[PerformanceRecord]:
    """Load self-instruct seed-task JSONL (`instruction`, `instances[{input, output}]`) as benign records.

    One record per task from its first instance: the query is `instruction`, plus "\\n\\n" +
    `input` when `input` is non-empty (as for Alpaca); the answer is `output`. Other instances and
    fields (`id`, `name`, `is_classification`) are ignored; an optional `category` string is kept.

    Raises:
        DataError: the file is missing, empty or malformed (message names file, line and field).
    """
    path = Path(path)
    records = [_self_instruct_record(item, where) for item, where in _json_lines(path)]
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
        item, where = next(_json_lines(path))
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
        from beear_stage.validation import ensure_valid

        ensure_valid(validate_eval_set(eval_set, max_chars=max_chars))
    return eval_set


def validate_eval_set(eval_set: EvalSet, *, max_chars: int = 8000) -> list[ValidationResult]:
    """Run the great-expectations suite of each non-empty role of `eval_set`.

    Each dataset is named "<source> [<format>: <role>]", so a failure names the file.
    """
    from beear_stage.validation import validate_dataset

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


def _json_lines(path: Path) -> Iterator[tuple[Any, str]]:
    """Yield (parsed object, "`path` line N") for each non-blank JSONL line."""
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"`{path}` line {lineno}"
        try:
            yield json.loads(line), where
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: invalid JSON ({e.msg}, column {e.colno}). Fix: write exactly one JSON object per line."
            ) from e


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
