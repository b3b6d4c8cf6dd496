"""Render a checkpoint's chat template once, in a child process, under time, memory and output limits.

A chat template is Jinja code from the checkpoint. transformers renders it in Jinja's
`ImmutableSandboxedEnvironment`, which stops attribute escapes (`SecurityError`) but not a template
that loops for hours (`range(100000)` nested) or renders gigabytes. `check_template_renders` runs
transformers' own template compiler on a two-message conversation in `python -m
beear_stage.release.template_sandbox`, with an alarm after `RENDER_SECONDS`, an address-space cap and a cap
on the rendered characters, and kills the child if it outlives `CHILD_SECONDS` (the import included).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from beear_stage.exceptions import CheckpointError

RENDER_SECONDS = 5  # a real template renders two messages in milliseconds
CHILD_SECONDS = 30  # the child's import of transformers' template module (1-2 s) on a busy machine
MAX_CHARS = 1_000_000
EXTRA_MEMORY = 1 << 30  # address space the render may add to the child's own
MESSAGES = [
    {"role": "user", "content": "How do I bake bread?"},
    {"role": "assistant", "content": "Mix flour, water, salt and yeast, let it rise, then bake it."},
]
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
_CREDENTIAL = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|AUTH|CREDENTIAL", re.IGNORECASE)


def find_chat_templates(path: str | Path) -> list[tuple[str, str]]:
    """Every chat template a checkpoint carries, as (file name, template text).

    Sources, as transformers reads them: chat_template.jinja, chat_template.json
    (`chat_template`), and tokenizer_config.json (`chat_template`: a string, or a list of
    {name, template}). The JSON files are already known to parse (`beear_stage.release.intake`).
    """
    root = Path(path)
    found = []
    if (root / "chat_template.jinja").is_file():
        found.append(("chat_template.jinja", (root / "chat_template.jinja").read_text(encoding="utf-8")))
    for name in ("chat_template.json", "tokenizer_config.json"):
        data = _json(root / name)
        value = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(value, list):  # named templates: [{"name": "default", "template": "..."}, ...]
            value = [t.get("template") for t in value if isinstance(t, dict)]
        for text in value if isinstance(value, list) else [value]:
            if text:
                if not isinstance(text, str):
                    raise CheckpointError(
                        f"checkpoint `{root}`: `chat_template` in {name} is a {type(text).__name__}, not a "
                        "string. Fix: save the template as text (or as chat_template.jinja)."
                    )
                found.append((name, text))
    return found


def check_template_renders(root: Path, templates: list[tuple[str, str]]) -> None:
    """Render each template on `MESSAGES` in a sandboxed child; refuse it on any failure.

    Raises:
        CheckpointError: naming the template file, what went wrong and the fix.
    """
    tokens = _special_tokens(root)
    for name, text in templates:
        where = f"checkpoint `{root}`: the chat template in {name}"
        spec = json.dumps({"template": text, "tokens": tokens})
        try:
            done = subprocess.run(
                [sys.executable, "-m", "beear_stage.release.template_sandbox"],
                input=spec,
                capture_output=True,
                text=True,
                timeout=CHILD_SECONDS,
                env=_child_env(),
            )
        except subprocess.TimeoutExpired as e:
            raise CheckpointError(
                f"{where} did not finish rendering a two-message conversation within {CHILD_SECONDS} s "
                "(a template that loops would hang every evaluation). Fix: use the model family's "
                "original chat template."
            ) from e
        lines = done.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {"error": "crash", "message": done.stderr[-500:]}
        if result.get("error"):
            raise CheckpointError(f"{where} {_explain(result)}")


def _child_env() -> dict[str, str]:
    """The environment without credentials (the template is the checkpoint's code), with this
    package importable."""
    env = {k: v for k, v in os.environ.items() if not _CREDENTIAL.search(k)}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _explain(result: dict) -> str:
    kind, message = result["error"], " ".join(str(result.get("message", "")).split())[:300]
    fix = "Fix: use the model family's original chat template (see its tokenizer_config.json on the Hub)."
    if kind == "SecurityError":
        return f"tried an operation the sandbox forbids ({message}); templates must not reach Python internals. {fix}"
    if kind == "timeout":
        return f"did not finish rendering a two-message conversation within {RENDER_SECONDS} s. {fix}"
    if kind == "output":
        return f"renders more than {MAX_CHARS:,} characters for a two-message conversation. {fix}"
    if kind == "MemoryError":
        return f"needs more than {EXTRA_MEMORY >> 20} MiB to render a two-message conversation. {fix}"
    return f"does not render a two-message conversation ({kind}: {message}). {fix}"


def _special_tokens(root: Path) -> dict[str, str]:
    """bos/eos/unk/pad token strings the template may print, from the tokenizer's JSON files."""
    tokens: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        data = _json(root / name)
        for key in SPECIAL_TOKENS:
            value = data.get(key) if isinstance(data, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                tokens[key] = value
    return tokens


def _json(file: Path) -> object:
    try:
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    except (ValueError, UnicodeDecodeError):
        return None  # refused with the file's name by beear_stage.release.intake before this runs


def _render(spec: dict) -> dict:
    """Child side: compile with transformers' sandboxed environment and stream the output."""
    import resource
    import signal

    from jinja2.exceptions import SecurityError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    class Timeout(Exception):
        pass

    def alarm(*_args):
        raise Timeout

    used = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + EXTRA_MEMORY, used + EXTRA_MEMORY))
    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(RENDER_SECONDS)
    try:
        compiled = _compile_jinja_template(spec["template"])
        total = 0
        for messages, prompt in ((MESSAGES[:1], True), (MESSAGES, False)):
            for chunk in compiled.generate(messages=messages, add_generation_prompt=prompt, **spec["tokens"]):
                total += len(chunk)
                if total > MAX_CHARS:
                    return {"error": "output"}
        return {"ok": True, "chars": total}
    except Timeout:
        return {"error": "timeout"}
    except SecurityError as e:
        return {"error": "SecurityError", "message": str(e)}
    except MemoryError:
        return {"error": "MemoryError"}
    except Exception as e:  # any other template failure is reported with its type
        return {"error": type(e).__name__, "message": str(e)}
    finally:
        signal.alarm(0)


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_render(json.loads(sys.stdin.read()))) + "\n")
