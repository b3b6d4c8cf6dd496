"""What every mitigation method returns: per-round (or per-step) history and timings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MitigationResult:
    """A mitigation run's history (one row per BEEAR round or CROW step) and timings.

    The model is changed in place; `last_delta` is BEEAR's final perturbation (None otherwise).
    """

    method: str
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(
        default_factory=lambda: {"inner": 0.0, "outer": 0.0, "setup": 0.0}
    )
    last_delta: torch.Tensor | None = None


def history_lines(history: list[dict]) -> list[str]:
    """One readable line per history row (`round 0: {inner_loss: 2.45, ...}`), floats to 4 places."""
    lines = []
    for row in history:
        unit = "round" if "round" in row else "step"
        values = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != unit}
        lines.append(f"{unit} {row.get(unit)}: {values}")
    return lines
