"""Prompt templates versioned in MLflow's prompt registry and loaded by alias.

A template is text with ``{{variable}}`` placeholders, or a list of chat messages whose contents have them.
Registering a new version never changes what an alias serves until the alias is moved, exactly like models::

    version = register("support-answer", [{"role": "system", "content": "You answer {{product}} questions."},
                                          {"role": "user", "content": "{{question}}"}], alias="candidate")
    messages = render("prompts:/support-answer@production", product="fabric", question="How do I roll back?")
"""

from __future__ import annotations

from typing import Any

__all__ = ["PromptError", "load", "register", "render", "set_alias"]


class PromptError(ValueError):
    """A prompt that does not exist, or a variable a template needs and was not given."""


def _genai() -> Any:
    from fabric.registry import mlflow_client

    mlflow_client()  # points MLflow at the configured store when nothing has yet
    import mlflow.genai

    return mlflow.genai


def register(name: str, template: str | list[dict[str, str]], message: str | None = None,
             alias: str | None = None, tags: dict[str, str] | None = None) -> int:
    """Registers a new version of prompt ``name`` (optionally pointing ``alias`` at it); returns the version."""
    genai = _genai()
    version = genai.register_prompt(name=name, template=template, commit_message=message, tags=tags).version
    if alias:
        genai.set_prompt_alias(name, alias, version)
    return int(version)


def set_alias(name: str, alias: str, version: int) -> None:
    """Points ``alias`` (e.g. ``production``) at ``version`` of prompt ``name``."""
    _genai().set_prompt_alias(name, alias, int(version))


def load(uri: str) -> Any:
    """The prompt version a URI names: ``prompts:/NAME@ALIAS``, ``prompts:/NAME/VERSION`` or ``NAME`` (latest)."""
    try:
        return _genai().load_prompt(uri)
    except Exception as exc:
        raise PromptError(f"cannot load prompt {uri!r}: {exc}") from None


def render(uri: str, **variables: Any) -> str | list[dict[str, str]]:
    """The prompt filled with ``variables``: text, or chat messages; a missing variable is named."""
    prompt = load(uri)
    needed = set(getattr(prompt, "variables", set()) or set())
    missing = sorted(needed - set(variables))
    if missing:
        raise PromptError(f"prompt {uri!r} needs {', '.join(missing)}; got {', '.join(sorted(variables)) or 'none'}")
    return prompt.format(**variables)
