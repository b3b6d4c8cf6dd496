"""beear-stage: BEEAR backdoor removal and release gates for fine-tuned causal LMs.

The library is pure Python + torch; Prefect lives only in `tasks/` and `flows/`.
"""

__version__ = "0.1.0"
