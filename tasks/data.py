"""Data sources of a release run and the `validate_data` task.

`DataSources` is the flow parameter naming the four data sets (an empty path = the built-in set
from `beear_stage.data.builtin`). Tasks pass the `DataSources` (paths) around and load the records
themselves, so no record lists travel through Prefect's parameters or results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, is_dataclass

from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from beear_stage.data.records import PerformanceRecord, SafetyRecord


class DataSources(BaseModel):
    """Anchoring and evaluation data of one release run; an empty path = the built-in set."""

    safety_anchoring: str = Field(
        "", description="SA: harmful query, safe y_s, unwanted y_h (.csv/.json/.jsonl)"
    )
    performance_anchoring: str = Field("", description="PA: benign query and answer y_p (.json/.jsonl)")
    harmful_eval: str = Field("", description="held-out harmful prompts for keyword ASR")
    benign_eval: str = Field("", description="held-out benign prompts with reference answers")
    eval_limit: int = Field(0, ge=0, description="use N evenly spaced prompts of each eval set; 0 = all")


@dataclass
class DataSets:
    """The loaded records of a `DataSources`."""

    safety: list[SafetyRecord]
    performance: list[PerformanceRecord]
    harmful: list[str]
    benign: list[PerformanceRecord]

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ("safety", "performance", "harmful", "benign")}

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

    def pick(path: str, loader, default):
        return loader(path) if path else default()

    limit = sources.eval_limit or None
    return DataSets(
        safety=pick(sources.safety_anchoring, loaders.load_safety_records, builtin.default_safety_anchoring),
        performance=pick(
            sources.performance_anchoring,
            loaders.load_performance_records,
            builtin.default_performance_anchoring,
        ),
        harmful=spread(
            pick(sources.harmful_eval, loaders.load_harmful_prompts, builtin.heldout_harmful), limit
        ),
        benign=spread(
            pick(sources.benign_eval, loaders.load_performance_records, builtin.heldout_benign), limit
        ),
    )


def spread(items: list, limit: int | None) -> list:
    """`limit` evenly spaced items, so a capped eval set keeps the full set's mix of categories.

    The first N would be biased: the built-in sets are ordered by category (the benign set opens
    with its 24 look-alikes, 40 % of the first 60 against 18 % of the whole).
    """
    if not limit or limit >= len(items):
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


@task
def validate_data(sources: DataSources) -> dict:
    """Check the anchoring and evaluation sets with great-expectations suites.

    Returns:
        {"counts": {set: n}, "digest": content hash} for logging and cache keys.

    Raises:
        DataError: a file cannot be read, or a suite fails (the message holds GX's report).
    """
    from beear_stage.validation import ensure_valid, validate_dataset

    sets = load_data(sources)
    ensure_valid(
        [
            validate_dataset("safety_anchoring", sets.safety, "safety"),
            validate_dataset("performance_anchoring", sets.performance, "performance"),
            validate_dataset("harmful_eval", [{"query": q} for q in sets.harmful], "harmful_prompts"),
            validate_dataset("benign_eval", sets.benign, "performance"),
        ]
    )
    summary = {"counts": sets.counts(), "digest": sets.digest()}
    get_run_logger().info("data valid: %s (digest %s)", summary["counts"], summary["digest"])
    return summary
