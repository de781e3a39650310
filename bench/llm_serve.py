"""Output tokens/s of the served CPU LLM engine next to a plain ``model.generate`` loop, same model, same run.

    python bench/llm_serve.py [--max-tokens 48] [--rounds 2]

SmolLM2-135M-Instruct (converted once into the usual model cache, ``$FABRIC_HOME/models``), greedy decoding,
eight chat prompts that ask for long answers, ``max_tokens`` fixed. Measured one after the other in this process:

* plain 1:   ``model.generate`` on one prompt at a time (torch with 2 threads), before Ray starts;
* plain 8:   ``model.generate`` on the 8 prompts as one left-padded batch (what batching can give at best);
* plain 1 beside Serve: plain 1 again in this process while Ray and the served app run idle on the same CPUs
  (what Ray's own processes cost a 2-CPU machine, with no request served);
* served 1:  ``/v1/chat/completions`` of ``fabric serve up configs/serve/llm.yaml`` (transformers engine,
  continuous batching, gateway, HTTP proxy), one request at a time;
* served 8:  the same with 8 clients sending at once (aggregate tokens/s).

Tokens are the completion tokens each path produced (greedy paths produce the same ones; EOS ends an answer
early on both). Targets: served 1 at least 0.9x of plain 1 (the quiet machine's); served 8 at least 3x served 1.
``ratio_single_vs_plain_beside_serve`` is the engine's own overhead, with the background equal on both sides.
The HTTP client shares the machine's 2 CPUs with the server. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODEL_CACHE = Path(os.environ.get("FABRIC_HOME") or ".fabric").resolve() / "models"  # before FABRIC_HOME moves
HOME = tempfile.mkdtemp(prefix="fabric-bench-llm-")
os.environ["FABRIC_HOME"] = HOME  # never touch the user's runs
os.environ.pop("MLFLOW_TRACKING_URI", None)

import requests  # noqa: E402
import torch  # noqa: E402

PROMPTS = [
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how bread is baked, step by step.",
    "Describe a walk through a busy city market in the morning.",
    "Write a long letter to a friend about your summer holidays.",
    "Explain how the seasons change during the year.",
    "Describe the life of a honey bee from egg to adult.",
    "Write a detailed guide to planting a vegetable garden.",
    "Tell a long story about a dragon who wants to learn to cook.",
]
TARGET_SINGLE, TARGET_CONCURRENT = 0.9, 3.0
THREADS = 2


class Plain:
    """``model.generate`` in this process: one prompt at a time, or all 8 prompts as one batch."""

    def __init__(self, folder: Path, max_tokens: int, rounds: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(THREADS)
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.texts = [self.tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in PROMPTS]
        self.max_tokens, self.rounds = max_tokens, rounds
        self.generate(self.texts[:1])  # warm-up

    def generate(self, batch: list[str]) -> int:
        inputs = self.tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False,
                                      pad_token_id=self.tok.eos_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return sum(_count(row.tolist(), self.tok.eos_token_id) for row in new)

    def single(self) -> float:
        started = time.perf_counter()
        tokens = sum(self.generate([text]) for text in self.texts[:self.rounds * 2])
        return tokens / (time.perf_counter() - started)

    def batch8(self) -> float:
        started = time.perf_counter()
        tokens = sum(self.generate(self.texts) for _ in range(self.rounds))
        return tokens / (time.perf_counter() - started)


def _count(ids: list[int], eos: int) -> int:
    """Generated tokens up to and including the first EOS (what the server counts as completion tokens)."""
    return ids.index(eos) + 1 if eos in ids else len(ids)


def served(folder: Path, max_tokens: int, rounds: int, plain: Plain) -> dict[str, float]:
    """tokens/s of plain 1 with the app up and idle, then of the served engine: sequential requests, then 8
    clients at once."""
    from ray import serve

    from fabric.runtime import RayConfig, init_ray, setup_mlflow
    from llm.serving import LLMServeConfig, build_llm_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = LLMServeConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "serve" / "llm.yaml", [
        f"port={port}", f"model.source={folder}", "auth.required=false"])
    init_ray(RayConfig(num_cpus=2), log_to_driver=False)
    setup_mlflow()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_llm_app(cfg), name="bench-llm", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    session = requests.Session()

    def ask(prompt: str) -> int:
        body = {"model": cfg.model.id, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0}
        response = session.post(url, json=body, timeout=600)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    try:
        ask(PROMPTS[0])  # warm-up
        beside = plain.single()
        started = time.perf_counter()
        tokens = sum(ask(p) for p in PROMPTS[:rounds * 2])
        single = tokens / (time.perf_counter() - started)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ask, PROMPTS))  # warm-up at batch 8
            started = time.perf_counter()
            tokens = sum(pool.map(ask, PROMPTS * rounds))
        concurrent = tokens / (time.perf_counter() - started)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    return {"single": single, "concurrent8": concurrent, "plain_beside_serve": beside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every request (greedy)")
    parser.add_argument("--rounds", type=int, default=2, help="single: 2*rounds requests; 8 clients: rounds waves")
    args = parser.parse_args()
    logging.getLogger("ray").setLevel(logging.WARNING)
    from llm.models import resolve_model

    folder = resolve_model(cache=MODEL_CACHE)
    try:
        plain = Plain(folder, args.max_tokens, args.rounds)
        base = {"single": plain.single(), "batch8": plain.batch8()}
        api = served(folder, args.max_tokens, args.rounds, plain)
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
    single_ratio, concurrent_ratio = api["single"] / base["single"], api["concurrent8"] / api["single"]
    print(f"SmolLM2-135M-Instruct, greedy, max_tokens {args.max_tokens}, torch threads {THREADS}; output tokens/s")
    beside_ratio = api["single"] / api["plain_beside_serve"]
    rows = [("plain model.generate, 1 prompt", base["single"]), ("plain model.generate, batch of 8", base["batch8"]),
            ("plain, 1 prompt, Ray Serve up and idle", api["plain_beside_serve"]),
            ("served, 1 request at a time", api["single"]), ("served, 8 concurrent requests", api["concurrent8"])]
    for label, rate in rows:
        print(f"{label:<40}{rate:>10.1f}")
    print(f"served 1 / plain 1: {single_ratio:.2f} (target >= {TARGET_SINGLE}); served 8 / served 1: "
          f"{concurrent_ratio:.2f} (target >= {TARGET_CONCURRENT}); served 8 / plain batch 8: "
          f"{api['concurrent8'] / base['batch8']:.2f}; served 1 / plain 1 beside Serve: {beside_ratio:.2f}")
    print(json.dumps({
        "bench": "llm_serve",
        "max_tokens": args.max_tokens,
        "plain_single_tokens_per_s": round(base["single"], 2),
        "plain_batch8_tokens_per_s": round(base["batch8"], 2),
        "plain_single_beside_serve_tokens_per_s": round(api["plain_beside_serve"], 2),
        "served_single_tokens_per_s": round(api["single"], 2),
        "served_concurrent8_tokens_per_s": round(api["concurrent8"], 2),
        "ratio_single_vs_plain": round(single_ratio, 3),
        "ratio_single_vs_plain_beside_serve": round(beside_ratio, 3),
        "ratio_concurrent8_vs_single": round(concurrent_ratio, 3),
        "ratio_concurrent8_vs_plain_batch8": round(api["concurrent8"] / base["batch8"], 3),
        "meets_targets": single_ratio >= TARGET_SINGLE and concurrent_ratio >= TARGET_CONCURRENT,
    }))


if __name__ == "__main__":
    main()
