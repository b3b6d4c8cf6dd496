"""Exploration only: delta kept orthogonal, per position, to the harm direction at layer l
(u_j = mean h_l(SA prompts) - mean h_l(PA prompts) at the j-th of the last k prompt positions,
re-measured each round): delta cannot make a harmful request look benign, only act otherwise."""

import os
import sys

import torch

from beear_stage.methods import beear as B
from beear_stage.templates import collate

N = int(os.environ.get("HARM_ROWS", "48"))
_entrap, _backward = B.BEEAR.entrap, B.BEEAR.entrapment_backward


def _mean_at_delta(self, examples):
    batch = collate(examples, self.pad_id)
    with torch.no_grad():
        h = self._hidden(batch)
    return B._at_delta_positions(batch, h, self.cfg.k).mean(0)  # (k, H)


def _project(self, delta):
    if getattr(self, "harm_u", None) is None:
        return
    with torch.no_grad():
        u = self.harm_u.to(delta.dtype)
        delta.sub_((delta * u).sum(-1, keepdim=True) * u)


def entrap(self, previous):
    if not self.pa:  # the evaluation's embedding attack (no PA set): unconstrained, as always
        self.harm_u = None
        return _entrap(self, previous)
    was = self.model.training
    self.model.eval()
    d = _mean_at_delta(self, self.sa_unwanted[:N]) - _mean_at_delta(self, self.pa[:N])
    self.harm_u = d / d.norm(dim=-1, keepdim=True)
    self.model.train(was)
    delta, stats = _entrap(self, previous)
    _project(self, delta)
    return delta, stats


def entrapment_backward(self, batch, delta, h_unwanted, h_safe, prefix=None):
    _project(self, delta)
    return _backward(self, batch, delta, h_unwanted, h_safe, prefix)


B.BEEAR.entrap, B.BEEAR.entrapment_backward = entrap, entrapment_backward
from beear_stage.bench import real as bench_real  # noqa: E402

sys.exit(bench_real.main(sys.argv[1:]))
