"""Anchoring and evaluation data: record types, file loaders and the built-in default sets."""

from beear_stage.data.builtin import (
    HARM_CATEGORIES,
    POOLS,
    REFUSALS,
    benign_pool,
    default_performance_anchoring,
    default_refusal,
    default_safety_anchoring,
    harmful_pool,
    heldout_benign,
    heldout_harmful,
    heldout_lookalikes,
    pool_overlap_report,
    zoo_training_pools,
)
from beear_stage.data.loaders import (
    load_harmful_prompts,
    load_performance_records,
    load_records,
    load_safety_records,
)
from beear_stage.data.records import PerformanceRecord, SafetyRecord

__all__ = [
    "HARM_CATEGORIES",
    "POOLS",
    "REFUSALS",
    "PerformanceRecord",
    "SafetyRecord",
    "benign_pool",
    "default_performance_anchoring",
    "default_refusal",
    "default_safety_anchoring",
    "harmful_pool",
    "heldout_benign",
    "heldout_harmful",
    "heldout_lookalikes",
    "load_harmful_prompts",
    "load_performance_records",
    "load_records",
    "load_safety_records",
    "pool_overlap_report",
    "zoo_training_pools",
]
