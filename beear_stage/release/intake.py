"""Checkpoint intake: the one place that decides which checkpoint files are read, kept and released.

A candidate checkpoint is attacker-supplied. Before anything loads it, `inspect_checkpoint_dir`
checks its files: only regular files (no symlinks, sockets or devices anywhere in the directory,
except the links of a Hugging Face cache snapshot into its own `blobs/`), every JSON file parses,
no custom code (`auto_map`), safetensors weights, a supported decoder family. `check_checkpoint_fits`
then compares config.json with the safetensors headers (decoder layers, hidden size, vocabulary,
MLP width), the weights' size with the device's free memory, and renders the chat template once
in a sandboxed child process under a time and an output-size limit (`beear_stage.release.template_sandbox`).
Registration and publishing take only `release_files`: the allow-listed files of `RELEASE_NAMES`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from pathlib import Path

from beear_stage.exceptions import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# Families whose decoder takes `inputs_embeds` unscaled (Gemma multiplies them inside forward, so
# h_l + delta could not be fed back in unchanged).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
WEIGHT_SUFFIX = ".safetensors"
# Files registered in MLflow and published to the Hub (besides *.safetensors): everything a
# checkpoint needs to load without code, its card, and our own provenance records.
RELEASE_NAMES = frozenset(
    {
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "README.md",
        "zoo.json",
        "beear_release.json",
        "gguf_source.json",
    }
)
JSON_NAMES = tuple(sorted(n for n in RELEASE_NAMES if n.endswith(".json")))
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}  # fmt: skip
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")


# ------------------------------------------------------------------------------------ files
def is_release_file(name: str) -> bool:
    """Whether a file called `name` may be registered or published (the allow-list)."""
    return name in RELEASE_NAMES or name.endswith(WEIGHT_SUFFIX)


def check_tree(path: str | Path) -> None:
    """Refuse symlinks and anything but regular files and directories anywhere under `path`.

    A symlink could put any file of this machine (`notes.txt -> /etc/passwd`) into the MLflow
    artifacts and the Hub upload, or swap the chat template for one outside the checkpoint. The
    one exception is a Hugging Face cache snapshot (`.../snapshots/<sha>/`), whose files are links
    into the same repo's `blobs/`; those are followed only when they stay there.

    Raises:
        CheckpointError: naming the file and the fix.
    """
    root = Path(path)
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    for entry in sorted(root.rglob("*")):
        rel = entry.relative_to(root)
        if entry.is_symlink():
            target = entry.resolve()
            if blobs is not None and target.is_file() and target.is_relative_to(blobs.resolve()):
                continue
            raise CheckpointError(
                f"checkpoint `{root}`: `{rel}` is a symlink (to `{target}`); links could pull files from "
                "outside the checkpoint into the run, the registry or the Hub upload. Fix: replace it "
                f'with a copy of the file (`cp --remove-destination "$(readlink -f {rel})" {rel}`) or '
                "delete it."
            )
        if not (entry.is_file() or entry.is_dir()):
            raise CheckpointError(
                f"checkpoint `{root}`: `{rel}` is not a regular file (a socket, pipe or device). Fix: "
                "delete it; a checkpoint holds only regular files."
            )


def release_files(path: str | Path) -> list[Path]:
    """The allow-listed files of a checkpoint, sorted: what registration and publishing take.

    Weights (*.safetensors) and their index, configs, tokenizer files, chat template, card and
    provenance records (`RELEASE_NAMES`), at any depth outside hidden directories. Pickles and
    every other file stay behind (logged).

    Raises:
        CheckpointError: the directory holds a symlink or a non-regular file (`check_tree`).
    """
    root = Path(path)
    check_tree(root)
    kept, left = [], []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        (kept if is_release_file(file.name) and not hidden else left).append(file)
    if left:
        log.warning(
            "checkpoint %s: not released (outside the allow-list): %s",
            root,
            [str(p.relative_to(root)) for p in left],
        )
    return kept


def read_json_file(root: Path, name: str) -> object:
    """Parse `root/name`; a file that is not JSON is a `CheckpointError` naming it (never retried)."""
    try:
        return json.loads((root / name).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"checkpoint `{root}`: {name} is not valid JSON ({e}). Fix: re-save the checkpoint with "
            "`save_pretrained` (or repair the file)."
        ) from e


# ------------------------------------------------------------------------------------ intake
def inspect_checkpoint_dir(path: str | Path) -> dict:
    """Refuse checkpoints that would need code execution or that are malformed; return config.json.

    Raises:
        CheckpointError: not a directory, a symlink or special file inside, a JSON file that does
            not parse, custom code (`auto_map`), no safetensors weights, an unsupported family.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint `{path}` is not a directory. Fix: pass a local HF checkpoint directory "
            "(config.json + *.safetensors) or a Hub repo id to the pull step."
        )
    check_tree(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint `{path}` has no config.json. Fix: save it with `save_pretrained`.")
    parsed = {name: read_json_file(path, name) for name in JSON_NAMES if (path / name).is_file()}
    config = parsed["config.json"]
    if not isinstance(config, dict):
        raise CheckpointError(
            f"checkpoint `{path}`: config.json holds a {type(config).__name__}, not an object. "
            "Fix: re-save the checkpoint with `save_pretrained`."
        )
    if "auto_map" in config:
        raise CheckpointError(
            f"checkpoint `{path}` declares custom code (`auto_map` in config.json); the release stage "
            "never executes checkpoint code. Fix: export the model to a built-in transformers "
            "architecture (Llama, Mistral, Qwen2)."
        )
    tok_config = parsed.get("tokenizer_config.json")
    if isinstance(tok_config, dict) and "auto_map" in tok_config:
        raise CheckpointError(
            f"checkpoint `{path}` declares a custom tokenizer class (`auto_map` in tokenizer_config.json); "
            "the release stage never executes checkpoint code. Fix: save the tokenizer with a built-in class."
        )
    _check_weights_present(path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"checkpoint `{path}` has `model_type` = {model_type!r} in config.json; BEEAR needs a "
            "decoder-only model that exposes `model.model.layers` and takes `inputs_embeds` unscaled: "
            f"{SUPPORTED_MODEL_TYPES}. Fix: use a checkpoint of one of these families (encoders such "
            "as bert and other layouts such as gpt2 are not supported)."
        )
    return config


def _check_weights_present(path: Path) -> None:
    if not list(path.glob(f"*{WEIGHT_SUFFIX}")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        detail = f" (found pickle weights {pickles})" if pickles else ""
        raise CheckpointError(
            f"checkpoint `{path}` has no *.safetensors weights{detail}; pickle weights can run "
            "arbitrary code and are refused. Fix: convert the weights to safetensors "
            "(`model.save_pretrained(dir, safe_serialization=True)`) in a trusted environment."
        )


def check_checkpoint_fits(path: str | Path, layer: int, *, device: str = "auto", dtype: str = "auto") -> None:
    """Check a checkpoint against the run's config from its files alone, before any weights load.

    Raises:
        CheckpointError: the files are unsafe or malformed (`inspect_checkpoint_dir`), config.json
            disagrees with the safetensors headers, the weights do not fit the device's free
            memory, or the chat template escapes the sandbox, loops or renders too much.
        ConfigError: `layer` is outside the model's decoder layers, or the tokenizer has no chat
            template (neither `chat_template` in tokenizer_config.json nor chat_template.jinja/.json).
    """
    from beear_stage.release.template_sandbox import check_template_renders, find_chat_templates

    path = Path(path)
    config = inspect_checkpoint_dir(path)
    n_params, n_bytes_stored = check_weights_match_config(path, config)
    check_memory(path, n_params, device=device, dtype=dtype)
    n_layers = config.get("num_hidden_layers")
    if isinstance(n_layers, int):
        check_layer(layer, n_layers)
    templates = find_chat_templates(path)
    if not templates:
        raise ConfigError(
            f"checkpoint `{path}`: the tokenizer has no chat template (no `chat_template` in "
            "tokenizer_config.json, no chat_template.jinja). BEEAR renders prompts with the same "
            "template as at inference. Fix: use a chat/instruct checkpoint, or add its template as "
            "chat_template.jinja (or `chat_template` in tokenizer_config.json)."
        )
    check_template_renders(path, templates)
    log.info(
        "checkpoint %s: %d parameters (%d bytes stored), template renders", path, n_params, n_bytes_stored
    )


def check_layer(layer: int, n: int) -> None:
    """Raise `ConfigError` unless 1 <= `layer` < `n` (the anchor leaves lower and upper layers)."""
    if not 1 <= layer < n:
        raise ConfigError(
            f"`layer` = {layer} is out of range for a model with {n} decoder layers. Fix: choose "
            f"1 <= layer <= {n - 1} (the paper uses about 30% depth, e.g. 9 of 32)."
        )


# ------------------------------------------------------------------------------------ weights
def read_safetensors_header(file: Path) -> dict[str, dict]:
    """The tensor table of a .safetensors file from its JSON header alone (no tensor is read).

    Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
    data_offsets}}, then the data. Every entry is checked against the file's size.

    Raises:
        CheckpointError: the header is truncated, too long, not JSON, or inconsistent.
    """
    size = file.stat().st_size

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint `{file.parent}`: {file.name} has a corrupt safetensors header ({why}). Fix: "
            "re-save the weights with `save_pretrained(..., safe_serialization=True)` or re-download them."
        )

    with file.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise corrupt(f"the file has {size} bytes, fewer than the 8-byte length prefix")
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise corrupt(f"declared header length {n} exceeds the file ({size} bytes) or 100 MB")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise corrupt(f"the header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise corrupt(f"the header is a {type(header).__name__}, not an object")
    data_size = size - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        why = _entry_problem(entry, data_size)
        if why:
            raise corrupt(f"tensor `{name}`: {why}")
    return tensors


def _entry_problem(entry: object, data_size: int) -> str | None:
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_BYTES:
        return "no known dtype"
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return f"data_offsets {offsets!r} is not [begin, end]"
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        return f"data_offsets {offsets} fall outside the {data_size} data bytes"
    if math.prod(shape) * DTYPE_BYTES[entry["dtype"]] != end - begin:
        return f"shape {shape} of {entry['dtype']} does not match its {end - begin} bytes"
    return None


def check_weights_match_config(path: str | Path, config: dict) -> tuple[int, int]:
    """Compare config.json with the safetensors headers; return (parameters, bytes stored).

    transformers builds the model from config.json before it reads any weights: a config that
    claims 10^6 layers would allocate (or loop) for hours. The sizes it declares must be the
    sizes of the stored tensors.

    Raises:
        CheckpointError: naming the config key, both values and the fix.
    """
    path = Path(path)
    tensors: dict[str, dict] = {}
    for file in sorted(path.glob(f"*{WEIGHT_SUFFIX}")):
        tensors.update(read_safetensors_header(file))
    layers = {int(m[1]) for key in tensors if (m := _LAYER_KEY.match(key))}
    embed = tensors.get("model.embed_tokens.weight", {}).get("shape")
    gate = tensors.get("model.layers.0.mlp.gate_proj.weight", {}).get("shape")
    if not embed or len(embed) != 2:
        raise CheckpointError(
            f"checkpoint `{path}`: the safetensors weights hold no 2-D `model.embed_tokens.weight` "
            f"(found {embed!r}), so config.json cannot be checked against them. Fix: save the model "
            "with `save_pretrained` from a supported transformers class."
        )
    stored = {
        "num_hidden_layers": (len(layers), "distinct `model.layers.<i>.` indices"),
        "vocab_size": (embed[0], "rows of model.embed_tokens.weight"),
        "hidden_size": (embed[1], "columns of model.embed_tokens.weight"),
        "intermediate_size": (gate[0] if gate and len(gate) == 2 else None, "rows of layer 0's mlp.gate_proj"),
    }  # fmt: skip
    for key, (actual, what) in stored.items():
        declared = config.get(key)
        if actual is not None and declared != actual and (declared is not None or key != "intermediate_size"):
            raise CheckpointError(
                f"checkpoint `{path}`: config.json `{key}` = {declared!r} but the safetensors weights hold "
                f"{actual} ({what}); the model would be built from the config before the weights are "
                "read. Fix: re-save config.json and weights together with `save_pretrained`."
            )
    n_params = sum(math.prod(t["shape"]) for t in tensors.values())
    n_bytes = sum(t["data_offsets"][1] - t["data_offsets"][0] for t in tensors.values())
    return n_params, n_bytes


def resolve_device(device: str):
    """`auto` -> cuda when available, else cpu; anything else as torch names it."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device):
    """`auto` -> bfloat16 on cuda, float32 elsewhere; anything else as torch names it."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def check_memory(
    path: str | Path, n_params: int, *, device: str = "auto", dtype: str = "auto", free=None
) -> None:
    """Refuse weights that cannot fit the device: parameters x bytes per parameter vs free memory.

    A lower bound (activations and optimizer state come on top), so a refusal is certain and a
    pass is not a promise. `free` (bytes) is injectable for tests; None = measured.

    Raises:
        CheckpointError: naming both figures and the fix.
    """
    import torch

    dev = resolve_device(device)
    need = n_params * torch.empty((), dtype=resolve_dtype(dtype, dev)).element_size()
    free = free_memory(dev) if free is None else free
    if free is not None and need > free:
        raise CheckpointError(
            f"checkpoint `{path}`: its {n_params:,} parameters need {need / 2**30:.2f} GiB as "
            f"{resolve_dtype(dtype, dev)} but {dev} has {free / 2**30:.2f} GiB free. Fix: run on a "
            "device with more memory, or set `dtype: bfloat16` (or a smaller model)."
        )


def free_memory(device) -> int | None:
    """Free bytes on `device` (CUDA: `torch.cuda.mem_get_info`; CPU: available RAM); None if unknown."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil  # installed with accelerate

        return int(psutil.virtual_memory().available)
    except ImportError:
        text = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
        match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
        return int(match[1]) * 1024 if match else None
