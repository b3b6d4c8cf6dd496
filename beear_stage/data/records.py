"""Anchoring and evaluation records.

BEEAR needs two defender-defined anchoring sets (arXiv 2406.17092, Sec. 3): the safety anchoring
set SA of harmful queries with a safe response y_s and an unwanted response y_h, and the
performance anchoring set PA of benign queries with good answers y_p. Evaluation uses harmful
prompts (queries only) and benign records (query plus a reference answer for NLL).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SafetyRecord:
    """One safety-anchoring example: harmful `query`, safe `safe_response` (y_s), `unwanted_response` (y_h)."""

    query: str
    safe_response: str
    unwanted_response: str
    category: str = ""


@dataclass(frozen=True)
class PerformanceRecord:
    """One performance-anchoring (or benign evaluation) example: benign `query` and its `answer` (y_p)."""

    query: str
    answer: str
    category: str = ""
