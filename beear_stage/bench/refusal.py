"""Benchmark: refusal classifiers against human labels in XSTest-format CSVs.

`python -m beear_stage.bench refusal --out PATH.json [--labelled FILE.csv ...] [--classifier
default|gcg]` scores `beear_stage.eval.refusal`'s default classifier and the GCG keyword baseline on
each labelled file and prints a table for both; the JSON holds the classifier chosen with
`--classifier`. Without `--labelled` it reads XSTest's GPT-4 and Mistral-Instruct completions from
`../shared/data/xstest` next to the repository (Rottger et al., 2024, CC-BY-4.0; read in place,
never copied). The default classifier was tuned only on `completions_mistralinstruct_labeled.csv`;
every other file is held out.

A labelled CSV needs the columns `completion` and `final_label`, with `final_label` one of
`1_full_compliance`, `2_full_refusal`, `3_partial_refusal`. Metrics per file: accuracy with partial
refusals counted as refusals and as compliance, precision and recall of "refusal" (partial counts
as refusal), and the confusion matrix (human label x predicted label).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

from beear_stage.eval.refusal import DEFAULT_CLASSIFIER, TUNED_ON, is_gcg_refusal
from beear_stage.exceptions import DataError

LABELS = ("1_full_compliance", "2_full_refusal", "3_partial_refusal")
REQUIRED_COLUMNS = ("completion", "final_label")
XSTEST_FILES = ("completions_gpt4_labeled.csv", "completions_mistralinstruct_labeled.csv")
CLASSIFIERS: dict[str, Callable[[str], bool]] = {
    "default": DEFAULT_CLASSIFIER.classify,
    "gcg": is_gcg_refusal,
}


def default_xstest_dir() -> Path:
    """`../shared/data/xstest` relative to the repository root."""
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "xstest"


def load_labelled(path: Path) -> list[tuple[str, str]]:
    """Read (completion, final_label) pairs from an XSTest-format CSV.

    Args:
        path: CSV with a header row holding at least `completion` and `final_label`.

    Returns:
        One (completion, final_label) pair per data row.

    Raises:
        DataError: the file is missing or empty, a column is missing, a row has the wrong number of
            fields, or a `final_label` is not one of `LABELS`. The message names file and line.
    """
    if not path.is_file():
        raise DataError(f"{path}: labelled CSV not found; pass an existing file with `--labelled`.")
    rows: list[tuple[str, str]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        start = 1
        try:
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{path}:1: header lacks column(s) {missing}; got {header}. An XSTest-format CSV "
                    f"needs {list(REQUIRED_COLUMNS)} (e.g. id,type,prompt,completion,...,final_label)."
                )
            start = reader.line_num + 1
            for row in reader:
                rows.append(_parse_row(row, header, f"{path}:{start}"))
                # A quoted completion spans several physical lines; errors name the starting line.
                start = reader.line_num + 1
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(
                f"{path}:{start}: not a readable UTF-8 CSV ({e}); check quoting and encoding."
            ) from e
    if not rows:
        raise DataError(f"{path}: no data rows below the header; a labelled CSV needs at least one.")
    return rows


def _parse_row(row: dict, header: list[str], where: str) -> tuple[str, str]:
    """Check one DictReader row; `where` is "file:line" for error messages."""
    if None in row:  # more fields than header columns
        raise DataError(
            f"{where}: row has {len(header) + len(row[None])} fields where the header has {len(header)} "
            f"(extra after column `{header[-1]}`); quote fields that contain commas."
        )
    absent = [column for column in header if row[column] is None]
    if absent:  # fewer fields than header columns
        raise DataError(
            f"{where}: row has {len(header) - len(absent)} fields where the header has {len(header)}; "
            f"column `{absent[0]}` is missing."
        )
    label = row["final_label"].strip()
    if label not in LABELS:
        raise DataError(f"{where}: column `final_label` is {label!r}; expected one of {list(LABELS)}.")
    return row["completion"], label


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def score(rows: list[tuple[str, str]], classify: Callable[[str], bool]) -> dict:
    """Metrics of `classify` (True = refusal) against human labels.

    Returns:
        n, accuracy_partial_as_refusal, accuracy_partial_as_compliance, precision and recall of
        refusal (partial as refusal; None when undefined) and the confusion matrix
        {human label: {"refusal": count, "compliance": count}}.
    """
    confusion = {label: {"refusal": 0, "compliance": 0} for label in LABELS}
    for completion, label in rows:
        confusion[label]["refusal" if classify(completion) else "compliance"] += 1
    comp, full, part = (confusion[label] for label in LABELS)
    n = len(rows)
    tp = full["refusal"] + part["refusal"]
    return {
        "n": n,
        "accuracy_partial_as_refusal": _ratio(comp["compliance"] + tp, n),
        "accuracy_partial_as_compliance": _ratio(
            comp["compliance"] + part["compliance"] + full["refusal"], n
        ),
        "precision": _ratio(tp, tp + comp["refusal"]),
        "recall": _ratio(tp, full["refusal"] + full["compliance"] + part["refusal"] + part["compliance"]),
        "confusion": confusion,
    }


def _fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:.3f}"


def _table(results: dict[str, list[dict]]) -> str:
    head = f"{'classifier':<10} {'file':<42} {'n':>4}  {'acc(p=ref)':>10} {'acc(p=comp)':>11} {'prec':>6} {'recall':>6}"
    lines = [head, "-" * len(head)]
    for name, entries in results.items():
        for e in entries:
            held = "  (held out)" if e["held_out"] and name == "default" else ""
            lines.append(
                f"{name:<10} {Path(e['file']).name:<42} {e['n']:>4}  {_fmt(e['accuracy_partial_as_refusal']):>10} "
                f"{_fmt(e['accuracy_partial_as_compliance']):>11} {_fmt(e['precision']):>6} "
                f"{_fmt(e['recall']):>6}{held}"
            )
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m beear_stage.bench refusal", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument(
        "--labelled",
        nargs="+",
        type=Path,
        help="XSTest-format CSV(s); default: both XSTest completion files in ../shared/data/xstest",
    )
    p.add_argument(
        "--classifier", choices=sorted(CLASSIFIERS), default="default", help="classifier in the JSON"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    files = args.labelled
    if not files:
        xstest = default_xstest_dir().resolve()
        if not xstest.is_dir():
            print(
                f"error: no `--labelled` files given and the default XSTest folder {xstest} does not exist; "
                "pass --labelled FILE.csv [FILE.csv ...]",
                file=sys.stderr,
            )
            return 2
        files = [xstest / name for name in XSTEST_FILES]
    try:
        data = {path: load_labelled(path) for path in files}
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    results = {
        name: [
            {
                "file": str(path),
                "classifier": name,
                "tuned_on": TUNED_ON if name == "default" else None,
                "held_out": not (name == "default" and path.name == TUNED_ON),
                **score(rows, classify),
            }
            for path, rows in data.items()
        ]
        for name, classify in CLASSIFIERS.items()
    }
    print(f"default classifier tuned only on {TUNED_ON}; other files are held out. gcg = GCG keyword list.")
    print(_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"files": results[args.classifier]}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.classifier})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
