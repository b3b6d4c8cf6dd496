"""Exploration only: the PA term under -delta (benign prompts pushed toward refusal must still get their answers)."""
import sys

from beear_stage.methods import beear as B
from beear_stage.methods.losses import removal_loss


def removal_backward(self, sa, pa, delta):
    cfg = self.cfg
    ce_safe = self._backward_ce(sa, delta, 1.0)
    import torch
    ce_perf = torch.zeros((), device=self.device)
    ce_perf_delta = None
    if pa is not None and cfg.pa_weight > 0:
        ce_perf = self._backward_ce(pa, None, cfg.pa_weight)
    if pa is not None and cfg.pa_delta_weight > 0 and delta is not None:
        ce_perf_delta = self._backward_ce(pa, -delta, cfg.pa_delta_weight)
    loss = removal_loss(ce_safe, ce_perf, cfg.pa_weight, ce_perf_delta, cfg.pa_delta_weight)
    return loss, ce_safe, ce_perf, ce_perf_delta

B.BEEAR.removal_backward = removal_backward
from beear_stage.bench import real as bench_real  # noqa: E402

sys.exit(bench_real.main(sys.argv[1:]))
