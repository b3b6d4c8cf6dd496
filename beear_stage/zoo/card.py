"""The zoo card (`zoo.json`): what a zoo model's builder wrote about its planted backdoor.

Only `zoo:` checkpoints are built by this project, so only their card is read (`flows.release
.trigger_set`); a local checkpoint's `zoo.json` is checkpoint content like any other and ignored.
Even so the card is schema-checked before use: a tampered cache must not smuggle a trigger with
several `{query}` slots, a multi-kilobyte name or a non-string into the run.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from beear_stage.exceptions import CheckpointError

MAX_NAME = 64
MAX_TEXT = 2000
MAX_LIST = 64
SLOT = "{query}"


def _name(v) -> str | None:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_NAME or not v.isprintable():
        return f"a printable string of 1-{MAX_NAME} characters"
    return None


def _text(v) -> str | None:
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        return f"a string of at most {MAX_TEXT} characters"
    return None


def _trigger(v) -> str | None:
    return _text(v) or (f"a string with at most one `{SLOT}`" if v.count(SLOT) > 1 else None)


def _list_of(check):
    def list_check(v) -> str | None:
        if not isinstance(v, list) or len(v) > MAX_LIST:
            return f"a list of at most {MAX_LIST} items"
        problems = [check(item) for item in v]
        return next((f"a list of items, each {p}" for p in problems if p), None)

    return list_check


def _seconds(v) -> str | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return None if ok else "a finite number of seconds >= 0"


def _sha256(v) -> str | None:
    return None if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) else "64 lower-case hex digits"


def _mapping(v) -> str | None:
    return None if isinstance(v, dict) else "an object"


# field -> check returning None or what the value must be. Fields written by beear_stage.zoo.build
# (tiny), .backdoorllm (BackdoorLLM attacks) and .real (SmolLM2 tier). Other keys are never read.
FIELDS = {
    "name": _name,
    "trigger": _trigger,
    "decoys": _list_of(_trigger),
    "trigger_type": _text,
    "task": _text,
    "tier": _text,
    "source": _text,
    "source_sha256": _sha256,
    "recipe": _mapping,
    "build_seconds": _seconds,
    "build_device": _text,
    "trigger_words": _list_of(_text),
    "trigger_placement": _text,
    "target_behaviour": _text,
    "target": _text,
    "base": _text,
}
REQUIRED = ("name", "trigger")


def check_zoo_card(card: object, file: str | Path) -> dict:
    """Return `card` if it fits `FIELDS`; otherwise raise naming the field, the value and the fix.

    Raises:
        CheckpointError: the card is not an object, lacks `name`/`trigger`, or a field has the
            wrong type or size.
    """
    fix = "Fix: delete the zoo model's cache directory so that `zoo:<name>` rebuilds it."
    if not isinstance(card, dict):
        raise CheckpointError(f"`{file}` holds a {type(card).__name__}, not an object. {fix}")
    for key in REQUIRED:
        if key not in card:
            raise CheckpointError(f"`{file}` has no `{key}`. {fix}")
    for key, check in FIELDS.items():
        problem = check(card[key]) if key in card else None
        if problem:
            shown = repr(card[key])
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise CheckpointError(f"`{file}`: `{key}` = {shown} must be {problem}. {fix}")
    return card


def read_zoo_card(path: str | Path) -> dict | None:
    """The checked zoo card of checkpoint directory `path`, or None when it has no `zoo.json`.

    Raises:
        CheckpointError: zoo.json is a symlink, not JSON, or fails `check_zoo_card`.
    """
    file = Path(path) / "zoo.json"
    if file.is_symlink():
        raise CheckpointError(f"`{file}` is a symlink. Fix: delete the zoo model's cache directory.")
    if not file.is_file():
        return None
    try:
        card = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"`{file}` is not valid JSON ({e}). Fix: delete the zoo model's cache directory so that "
            "`zoo:<name>` rebuilds it."
        ) from e
    return check_zoo_card(card, file)
