"""The tiny backdoor zoo: small Llama models built from scratch with planted backdoors."""

from beear_stage.zoo.backdoorllm import ATTACKS as BACKDOORLLM_ATTACKS
from beear_stage.zoo.backdoorllm import build_attack_model
from beear_stage.zoo.build import (
    CODE_ZOO,
    ZOO,
    ZooSpec,
    build_zoo_model,
    code_tokenizer,
    default_cache_dir,
    read_zoo_info,
    shared_tokenizer,
)

__all__ = [
    "BACKDOORLLM_ATTACKS",
    "CODE_ZOO",
    "ZOO",
    "ZooSpec",
    "build_attack_model",
    "build_zoo_model",
    "code_tokenizer",
    "default_cache_dir",
    "read_zoo_info",
    "shared_tokenizer",
]
