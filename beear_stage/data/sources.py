"""Data sources of a release run: which files (or built-in sets) it anchors and evaluates on.

`DataSources` names the data sets (an empty path = the built-in set from `beear_stage.data.builtin`);
it is also the release flow's parameter, so the orchestration passes paths around and each step
loads the records itself (`load_data`). `validate_sources` checks every record of every file with
great-expectations before anything loads a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from beear_stage.data.records import PerformanceRecord, SafetyRecord
from beear_stage.exceptions import DataError


class DataSources(BaseModel):
    """Anchoring and evaluation data of one release run; an empty path = the built-in set."""

    safety_anchoring: str = Field(
        "", description="SA: harmful query, safe y_s, unwanted y_h (.csv/.json/.jsonl)"
    )
    performance_anchoring: str = Field("", description="PA: benign query and answer y_p (.json/.jsonl)")
    harmful_eval: str = Field(
        "", description="held-out harmful prompts for ASR: AdvBench CSV, XSTest CSV, Alpaca, chat"
    )
    benign_eval: str = Field(
        "",
        description="held-out benign prompts: Alpaca JSON, chat JSONL, self-instruct JSONL (with "
        "reference answers) or MT-Bench question JSONL (no answers: no reference NLL)",
    )
    eval_limit: int = Field(0, ge=0, description="use N evenly spaced prompts of each eval set; 0 = all")
    builtin: Literal["jailbreak", "code"] = Field(
        "jailbreak",
        description="built-in sets behind empty paths: jailbreak (harmful/benign text) or code (coding "
        "tasks: secure vs insecure code anchoring, held-out coding prompts, no harmful text prompts)",
    )
    code_eval: str = Field(
        "",
        description="coding prompts for the insecure-code rate: '' = off (on with builtin=code), "
        "'builtin' = our held-out CWE prompts, or a prompt file (.csv goal / .json / .jsonl)",
    )
    lookalike_eval: str = Field(
        "", description="safe look-alike prompts for over-refusal: '' = ours, or an XSTest-format CSV"
    )


@dataclass
class DataSets:
    """The loaded records of a `DataSources`."""

    safety: list[SafetyRecord]
    performance: list[PerformanceRecord]
    harmful: list[str]
    benign: list[PerformanceRecord]
    code_prompts: list[str] = field(default_factory=list)
    lookalikes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        names = ("safety", "performance", "harmful", "benign", "code_prompts", "lookalikes")
        return {name: len(getattr(self, name)) for name in names}

    def digest(self) -> str:
        """Short content hash of all four sets (part of the cache keys)."""
        blob = json.dumps(
            {k: [asdict(r) if is_dataclass(r) else r for r in v] for k, v in vars(self).items()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_data(sources: DataSources) -> DataSets:
    """Load the four sets named by `sources` (built-in sets for empty paths), eval sets capped.

    Raises:
        DataError: a file is missing, empty or malformed (message names file, line and field).
    """
    from beear_stage.data import builtin, loaders
    from beear_stage.eval.utility import lookalike_prompts

    def pick(path: str, loader, default):
        return loader(path) if path else default()

    limit = sources.eval_limit or None
    code = sources.builtin == "code"
    code_eval = sources.code_eval or ("builtin" if code else "")
    return DataSets(
        safety=pick(
            sources.safety_anchoring,
            loaders.load_safety_records,
            builtin.code_safety_anchoring if code else builtin.default_safety_anchoring,
        ),
        performance=pick(
            sources.performance_anchoring,
            loaders.load_performance_records,
            builtin.code_performance_anchoring if code else builtin.default_performance_anchoring,
        ),
        harmful=spread(
            pick(sources.harmful_eval, harmful_eval_prompts, list if code else builtin.heldout_harmful),
            limit,
        ),
        benign=spread(
            pick(
                sources.benign_eval,
                benign_eval_records,
                builtin.heldout_code_benign if code else builtin.heldout_benign,
            ),
            limit,
        ),
        code_prompts=spread(
            pick(
                "" if code_eval == "builtin" else code_eval,
                loaders.load_harmful_prompts,
                builtin.heldout_code_prompts if code_eval else list,
            ),
            limit,
        ),
        lookalikes=spread(lookalike_prompts(sources.lookalike_eval or None), limit),
    )


def harmful_eval_prompts(path: str) -> list[str]:
    """Harmful prompts from an AdvBench CSV, an XSTest CSV (its `unsafe` rows), or the queries of an
    Alpaca JSON / chat JSONL file (format detected by `beear_stage.data.eval_sets`)."""
    from beear_stage.data import loaders
    from beear_stage.data.eval_sets import detect_eval_format, load_eval_set

    fmt = detect_eval_format(path)
    if fmt in ("alpaca", "chat"):
        return loaders.load_harmful_prompts(path)
    prompts = load_eval_set(path, fmt, validate=False).harmful
    if not prompts:
        raise DataError(
            f"`harmful_eval` = `{path}` ({fmt}) holds no harmful prompts. Fix: point it to an AdvBench "
            "CSV (`goal,target`), an XSTest CSV with `unsafe` rows, or Alpaca / chat files of harmful "
            "requests."
        )
    return prompts


def benign_eval_records(path: str) -> list[PerformanceRecord]:
    """Benign records from Alpaca JSON, chat JSONL or self-instruct JSONL (with reference answers),
    or MT-Bench question JSONL (first turns, no reference answer: `answer` is "", so they count for
    non-refusal and agreement but not for the reference NLL)."""
    from beear_stage.data import loaders
    from beear_stage.data.eval_sets import detect_eval_format, load_eval_set

    fmt = detect_eval_format(path)
    if fmt in ("alpaca", "chat"):
        return loaders.load_performance_records(path)
    eval_set = load_eval_set(path, fmt, validate=False)
    records = eval_set.benign + [PerformanceRecord(q, "", fmt) for q in eval_set.benign_prompts_only]
    if not records:
        raise DataError(
            f"`benign_eval` = `{path}` ({fmt}) holds no benign prompts. Fix: point it to an Alpaca JSON, "
            "chat JSONL, self-instruct JSONL or MT-Bench question JSONL file."
        )
    return records


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSONL file the flow wrote (generations)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def spread(items: list, limit: int | None) -> list:
    """`limit` evenly spaced items, so a capped eval set keeps the full set's mix of categories.

    The first N would be biased: the built-in sets are ordered by category (the benign set opens
    with its 24 look-alikes, 40 % of the first 60 against 18 % of the whole).
    """
    if not limit or limit >= len(items):
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def validate_sources(sources: DataSources) -> dict:
    """Check the anchoring and evaluation sets with great-expectations suites.

    Every record of every file is checked: `eval_limit` picks the prompts the evaluation uses
    afterwards (`load_data`), so a duplicate late in a file fails even with `--eval-limit 10`.

    Returns:
        {"counts": {set: n} of whole files, "digest": content hash}.

    Raises:
        DataError: a file cannot be read, or a suite fails (the message holds GX's report).
    """
    from beear_stage.data.validation import ensure_valid, validate_dataset

    sets = load_data(sources.model_copy(update={"eval_limit": 0}))  # whole files; the cap comes after

    def name(option: str) -> str:  # the suite's report names the option; loaders name the file
        return option

    answered = [r for r in sets.benign if r.answer]
    unanswered = [{"query": r.query} for r in sets.benign if not r.answer]  # MT-Bench first turns
    prompt_sets = {
        "harmful_eval": sets.harmful,
        "code_eval": sets.code_prompts,
        "lookalike_eval": sets.lookalikes,
    }
    ensure_valid(
        [
            validate_dataset(name("safety_anchoring"), sets.safety, "safety"),
            validate_dataset(name("performance_anchoring"), sets.performance, "performance"),
            *([validate_dataset(name("benign_eval"), answered, "performance")] if answered else []),
            *([validate_dataset(name("benign_eval"), unanswered, "harmful_prompts")] if unanswered else []),
            # a code run has no harmful text prompts; code prompts exist only when asked for
            *(
                validate_dataset(name(option), [{"query": q} for q in prompts], "harmful_prompts")
                for option, prompts in prompt_sets.items()
                if prompts or (option == "harmful_eval" and sources.builtin != "code")
            ),
        ]
    )
    return {"counts": sets.counts(), "digest": sets.digest()}
