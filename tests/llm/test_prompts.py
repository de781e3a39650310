"""Prompt templates in MLflow's prompt registry, loaded by alias."""

from __future__ import annotations

import pytest

from llm import prompts


def test_alias_serves_its_version_until_moved_and_missing_variables_are_named():
    from fabric.runtime import setup_mlflow

    setup_mlflow()
    v1 = prompts.register("answer-style", [{"role": "system", "content": "Answer {{product}} questions briefly."},
                                           {"role": "user", "content": "{{question}}"}], alias="production")
    v2 = prompts.register("answer-style", [{"role": "system", "content": "Answer {{product}} questions in detail."},
                                           {"role": "user", "content": "{{question}}"}], message="longer answers")
    assert v2 == v1 + 1
    rendered = prompts.render("prompts:/answer-style@production", product="fabric", question="How do I roll back?")
    assert rendered == [{"role": "system", "content": "Answer fabric questions briefly."},
                        {"role": "user", "content": "How do I roll back?"}]
    prompts.set_alias("answer-style", "production", v2)
    moved = prompts.render("prompts:/answer-style@production", product="fabric", question="?")
    assert moved[0]["content"] == "Answer fabric questions in detail."
    assert prompts.load(f"prompts:/answer-style/{v1}").version == v1
    with pytest.raises(prompts.PromptError, match="needs question"):
        prompts.render("prompts:/answer-style@production", product="fabric")
    with pytest.raises(prompts.PromptError, match="no-such-prompt"):
        prompts.load("prompts:/no-such-prompt@production")
