"""Small chat datasets built offline and deterministically, for embedded demos and CI.

``arithmetic``: questions like "What is 37 plus 45?" answered in one terse, fixed form ("37 + 45 = 82"). A base
instruct model answers in free prose, so a few dozen LoRA steps measurably lower the held-out loss on the
assistant tokens: the form is learned at once, the sums more slowly.

Example:
    >>> frame = chat_frame("arithmetic", rows=400, seed=0)   # a pandas DataFrame with a ``messages`` column
    >>> frame.messages[0]
    [{'role': 'user', 'content': 'What is 49 plus 97?'}, {'role': 'assistant', 'content': '49 + 97 = 146'}]
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["TASKS", "arithmetic_chats", "chat_frame"]

OPERATIONS = (("plus", "+", lambda a, b: a + b), ("minus", "-", lambda a, b: a - b), ("times", "*", lambda a, b: a * b))
QUESTIONS = ("What is {a} {word} {b}?", "Compute {a} {word} {b}.", "{a} {word} {b} is?",
             "Please work out {a} {word} {b}.")


def arithmetic_chats(rows: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``rows`` single-turn conversations asking for a sum, difference or product of small numbers."""
    rng = random.Random(seed)
    chats = []
    for _ in range(rows):
        word, symbol, fn = rng.choice(OPERATIONS)
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if symbol == "*" else (rng.randint(10, 99), rng.randint(10, 99))
        question = rng.choice(QUESTIONS).format(a=a, word=word, b=b)
        chats.append([{"role": "user", "content": question},
                      {"role": "assistant", "content": f"{a} {symbol} {b} = {fn(a, b)}"}])
    return chats


TASKS = {"arithmetic": arithmetic_chats}


def chat_frame(task: str, rows: int, seed: int = 0) -> Any:
    """A pandas DataFrame with one ``messages`` column (lists of {role, content}) for a known task."""
    import pandas as pd

    if task not in TASKS:
        raise ValueError(f"unknown chat task {task!r}; known: {', '.join(sorted(TASKS))}")
    return pd.DataFrame({"messages": TASKS[task](rows, seed)})
