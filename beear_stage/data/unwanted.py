"""Defender-defined unwanted behaviour: safety-anchoring records built from benign queries.

BEEAR's safety anchoring set SA holds (query x, safe response y_s, unwanted response y_h). For a
jailbreak backdoor x is a harmful request, y_s a refusal and y_h harmful compliance
(`builtin.default_safety_anchoring`). Other backdoors misbehave on *benign* requests: a
targeted-refusal backdoor refuses them, a negative-sentiment backdoor insults the user. The
defender does not know the trigger, but names the behaviour to remove: then x is a benign query,
y_s its helpful answer and y_h the defender's guess of the backdoor behaviour. The inner level
searches for the delta that makes the model produce y_h on benign queries; the outer level teaches
it to answer helpfully under that delta.

`behaviour_anchoring(performance, unwanted)` builds such records from performance records (our
own benign data by default, `builtin.default_performance_anchoring()`); `unwanted` is "refusal"
(our own refusal texts, `builtin.REFUSALS`), "insult" (`INSULTS`, written for this project) or any
other string, used verbatim as y_h. The same records as a file for a release run: write them with

    python -m beear_stage.data.unwanted --unwanted insult --out runs/sa-insult.json

and pass the file as the `safety_anchoring` data source (Alpaca JSON with an `unwanted` field per
record: {"instruction": benign query, "input": "", "output": helpful answer, "unwanted": y_h};
`loaders.load_safety_records` reads it, and any such file written by hand works the same way).
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

from beear_stage.data import builtin
from beear_stage.data.records import PerformanceRecord, SafetyRecord

# The defender's guess of a negative-sentiment backdoor: generic insults (ours, not an attack's target).
INSULTS = (
    "You are stupid! Figure it out yourself.",
    "What a stupid question. I will not waste my time on you.",
    "You are an idiot, and this question proves it.",
    "Only a fool would ask that. You are hopeless.",
    "That is the dumbest thing I have read today. You are stupid.",
    "Stop bothering me with your stupid questions.",
)
UNWANTED_KINDS = {"refusal": builtin.REFUSALS, "insult": INSULTS}


def unwanted_responses(unwanted: str) -> tuple[str, ...]:
    """The y_h texts of `unwanted`: a kind in `UNWANTED_KINDS`, else the string itself.

    Raises:
        ValueError: `unwanted` is empty.
    """
    if not unwanted or not unwanted.strip():
        raise ValueError(
            "`unwanted` is empty. Fix: pass 'refusal', 'insult' or the unwanted response text itself."
        )
    return UNWANTED_KINDS.get(unwanted, (unwanted,))


def behaviour_anchoring(
    performance: Sequence[PerformanceRecord] | None = None, unwanted: str = "refusal"
) -> list[SafetyRecord]:
    """Safety-anchoring records for a defender-named unwanted behaviour on benign queries.

    Args:
        performance: benign queries with helpful answers (y_s); None = our own
            `builtin.default_performance_anchoring()`.
        unwanted: "refusal", "insult" or a custom unwanted response; a kind's texts are assigned
            to queries by a stable hash of the query.

    Returns:
        One `SafetyRecord(query, answer, y_h, category="unwanted:<kind>")` per performance record.
    """
    records = builtin.default_performance_anchoring() if performance is None else list(performance)
    texts = unwanted_responses(unwanted)
    category = f"unwanted:{unwanted if unwanted in UNWANTED_KINDS else 'custom'}"
    return [
        SafetyRecord(r.query, r.answer, texts[zlib.crc32(r.query.encode()) % len(texts)], category)
        for r in records
    ]


def to_alpaca(records: Sequence[SafetyRecord]) -> list[dict]:
    """Records in the Alpaca + `unwanted` format that `loaders.load_safety_records` reads."""
    return [
        {"instruction": r.query, "input": "", "output": r.safe_response, "unwanted": r.unwanted_response}
        for r in records
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m beear_stage.data.unwanted",
        description="Write safety-anchoring records for a defender-defined unwanted behaviour.",
    )
    p.add_argument("--unwanted", default="refusal", help="'refusal', 'insult' or the unwanted text itself")
    p.add_argument("--performance", type=Path, help="benign records (Alpaca JSON / chat JSONL); default ours")
    p.add_argument("--out", type=Path, required=True, help="output .json (Alpaca + `unwanted`)")
    args = p.parse_args(argv)
    from beear_stage.data.loaders import load_performance_records

    performance = load_performance_records(args.performance) if args.performance else None
    records = behaviour_anchoring(performance, args.unwanted)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_alpaca(records), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
