"""Exploration only: the PA term under -delta (benign prompts pushed toward refusal must still get their answers)."""

import sys

from beear_stage.methods import beear as B

B.BEEAR.pa_delta = lambda self, delta: -delta
from beear_stage.bench import real as bench_real  # noqa: E402

sys.exit(bench_real.main(sys.argv[1:]))
