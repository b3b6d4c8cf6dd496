"""README.md and docs/ARCHITECTURE.md against the code: module paths, CLI options and their defaults,
exception classes. A renamed module, option or exception fails here until the docs follow."""

from __future__ import annotations

import builtins
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "ARCHITECTURE.md"]


def _text(path: Path) -> str:
    return path.read_text()


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a name below a module that is not a package
        return False


def _options() -> dict[str, object]:
    """Every `--option` of every `beear-release` sub-command, with its default."""
    import argparse

    from flows.cli import build_parser

    found: dict[str, object] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            for option in action.option_strings:
                if option.startswith("--"):
                    found[option] = action.default

    walk(build_parser())
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_path_in_the_docs_exists(doc):
    text = _text(doc)
    for path in set(re.findall(r"\bbeear_stage/[\w/]+\.(?:py|yaml)\b", text)):
        assert (ROOT / path).is_file(), f"{doc.name} names {path}, which does not exist"
    for dotted in set(re.findall(r"\bbeear_stage(?:\.[a-z_]\w*)+", text)):
        parts = dotted.split(".")
        while parts and not _is_module(".".join(parts)):
            parts.pop()  # `beear_stage.methods.run_mitigation` -> the module, then the attribute
        assert len(parts) > 1, f"{doc.name} names {dotted}: no such module"
        module = importlib.import_module(".".join(parts))
        rest = dotted.split(".")[len(parts) :]
        obj = module
        for name in rest:
            assert hasattr(obj, name), f"{doc.name} names {dotted}: {'.'.join(parts)} has no {name}"
            obj = getattr(obj, name)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cli_option_in_the_docs_exists_with_its_stated_default(doc):
    options = _options()
    for line in _text(doc).splitlines():
        if "beear-release " not in line or "python -m" in line:
            continue
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]+", line):
            assert option in options, f"{doc.name}: `{option}` is not a beear-release option:\n{line}"
            default = options[option]
            stated = re.search(rf"{option}\b[^;,)]*?default[: ]+`?([\w./-]+)", line)
            if stated and default not in (None, "", [], False):
                assert stated.group(1) == str(default), (
                    f"{doc.name}: {option} default is {default!r}:\n{line}"
                )


def test_the_exception_classes_in_the_docs_are_the_codes():
    import beear_stage.exceptions as exceptions
    from beear_stage.release.publishing import PublishError

    classes = {n for n, c in inspect.getmembers(exceptions, inspect.isclass) if issubclass(c, Exception)}
    known = classes | {PublishError.__name__} | {n for n in dir(builtins) if n.endswith("Error")}
    architecture = _text(ROOT / "docs" / "ARCHITECTURE.md")
    assert classes <= set(re.findall(r"\b[A-Z]\w*Error\b", architecture)), (
        "ARCHITECTURE.md lists every exception"
    )
    for doc in [*DOCS, ROOT / "docs" / "ERRORS.md"]:
        for name in set(re.findall(r"\b[A-Z]\w*Error\b", _text(doc))):
            assert name in known or not name.startswith(
                ("BEEAR", "Config", "Data", "Checkpoint", "Mitigation", "Gate")
            ), f"{doc.name} names {name}, which beear_stage does not define"
