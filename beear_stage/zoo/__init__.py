"""The tiny backdoor zoo: small Llama models built from scratch with planted backdoors."""

from beear_stage.zoo.build import (
    ZOO,
    ZooSpec,
    build_zoo_model,
    default_cache_dir,
    read_zoo_info,
    shared_tokenizer,
)

__all__ = ["ZOO", "ZooSpec", "build_zoo_model", "default_cache_dir", "read_zoo_info", "shared_tokenizer"]
