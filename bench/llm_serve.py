"""Output tokens/s of the served CPU LLM engine next to a plain ``model.generate`` loop, same model, same run;
on GPUs, tokens/s and time to first token of the vLLM engine.

    python bench/llm_serve.py [--max-tokens 48] [--rounds 2]                      # CPU: transformers engine
    python bench/llm_serve.py --config configs/serve/llm_vllm_gpu.yaml            # GPU cluster: vLLM engine
    python bench/llm_serve.py --url http://HOST:8000 --model ID                   # an endpoint already up

Default (engine ``transformers``): SmolLM2-135M-Instruct (converted once into the usual model cache,
``$FABRIC_HOME/models``), greedy decoding, eight chat prompts that ask for long answers, ``max_tokens`` fixed.
Measured one after the other in this process:

* plain 1:   ``model.generate`` on one prompt at a time (torch with 2 threads), before Ray starts;
* plain 8:   ``model.generate`` on the 8 prompts as one left-padded batch (what batching can give at best);
* plain 1 beside Serve: plain 1 again in this process while Ray and the served app run idle on the same CPUs
  (what Ray's own processes cost a 2-CPU machine, with no request served);
* served 1:  ``/v1/chat/completions`` of ``fabric serve up configs/serve/llm.yaml`` (transformers engine,
  continuous batching, gateway, HTTP proxy), one request at a time, whole answers;
* served 8:  the same with 8 clients sending at once (aggregate tokens/s);
* time to first token: streamed requests, from sending to the first chunk with text, median of one at a time
  and of 8 sent at once.

Tokens are the completion tokens each path produced (greedy paths produce the same ones; EOS ends an answer
early on both). Targets: served 1 at least 0.9x of plain 1 (the quiet machine's); served 8 at least 3x served 1.
``ratio_single_vs_plain_beside_serve`` is the engine's own overhead, with the background equal on both sides.
The HTTP client (the ``openai`` package) shares the machine's 2 CPUs with the server.

With a config whose engine is ``vllm`` (run it on the GPU cluster, e.g. ``ray job submit -- python
bench/llm_serve.py --config configs/serve/llm_vllm_gpu.yaml``), the app is started on ``RAY_ADDRESS``'s cluster
and only the served figures are measured: a plain loop over an 8B model is not the baseline anyone runs there.
Without vLLM the script stops with the engine's message. ``--url`` measures an endpoint that is already up
(``fabric serve up ... --detach``, a RayService), with ``OPENAI_API_KEY`` as its key; use it on a cluster whose
Ray Serve already runs, since a running Serve keeps its own HTTP port. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

MODEL_CACHE = Path(os.environ.get("FABRIC_HOME") or ".fabric").resolve() / "models"  # before FABRIC_HOME moves
HOME = tempfile.mkdtemp(prefix="fabric-bench-llm-")
os.environ["FABRIC_HOME"] = HOME  # never touch the user's runs
os.environ.pop("MLFLOW_TRACKING_URI", None)

if TYPE_CHECKING:
    from llm.serving import LLMServeConfig

ROOT = Path(__file__).resolve().parents[1]

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
        import torch
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
        import torch

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


class Endpoint:
    """An OpenAI-compatible endpoint measured with the ``openai`` client: tokens/s at 1 and 8 concurrent requests
    (whole answers), and time to the first streamed token."""

    def __init__(self, url: str, model: str, max_tokens: int, rounds: int, api_key: str = "none"):
        from openai import OpenAI

        self.client = OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key, max_retries=0, timeout=600)
        self.model, self.max_tokens, self.rounds = model, max_tokens, rounds

    def ask(self, prompt: str) -> int:
        """One whole answer; its completion tokens."""
        answer = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=self.max_tokens, temperature=0)
        return answer.usage.completion_tokens

    def first_token_s(self, prompt: str) -> float:
        """Seconds from sending a streamed request to its first chunk with text (the stream is read to the end)."""
        started, first = time.perf_counter(), None
        stream = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=self.max_tokens, temperature=0, stream=True)
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        if first is None:
            raise RuntimeError(f"the stream for {prompt!r} carried no text")
        return first

    def single(self) -> float:
        started = time.perf_counter()
        tokens = sum(self.ask(p) for p in PROMPTS[:self.rounds * 2])
        return tokens / (time.perf_counter() - started)

    def concurrent8(self) -> float:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self.ask, PROMPTS))  # warm-up at batch 8
            started = time.perf_counter()
            tokens = sum(pool.map(self.ask, PROMPTS * self.rounds))
        return tokens / (time.perf_counter() - started)

    def ttft(self) -> dict[str, float]:
        """Median time to first token of streamed requests: one at a time, and 8 sent at once."""
        alone = statistics.median(self.first_token_s(p) for p in PROMPTS[:self.rounds * 2])
        with ThreadPoolExecutor(8) as pool:
            crowded = statistics.median(pool.map(self.first_token_s, PROMPTS))
        return {"ttft_single_s": alone, "ttft_concurrent8_s": crowded}

    def measure(self, before_single: Callable[[], float] | None = None) -> dict[str, float]:
        self.ask(PROMPTS[0])  # warm-up
        figures = {"plain_beside_serve": before_single()} if before_single else {}
        figures["single"] = self.single()
        figures["concurrent8"] = self.concurrent8()
        return figures | self.ttft()


def served(cfg: LLMServeConfig, max_tokens: int, rounds: int, plain: Plain | None) -> dict[str, float]:
    """Starts ``cfg``'s application on Ray Serve (embedded Ray, or RAY_ADDRESS's cluster) and measures it; with
    ``plain``, first measures plain 1 again beside the idle app."""
    from ray import serve

    from fabric.runtime import RayConfig, init_ray, setup_mlflow
    from llm.serving import build_llm_app

    app = build_llm_app(cfg)  # before Ray starts: a missing vLLM fails here, with its message
    if cfg.engine == "transformers":
        init_ray(RayConfig(num_cpus=2), log_to_driver=False)
    else:
        init_ray(cfg.runtime.ray, log_to_driver=False)
    setup_mlflow()
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
    try:
        serve.run(app, name="bench-llm", route_prefix="/")
        endpoint = Endpoint(f"http://127.0.0.1:{cfg.port}", cfg.model.id, max_tokens, rounds)
        return endpoint.measure(plain.single if plain else None)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every request (greedy)")
    parser.add_argument("--rounds", type=int, default=2, help="single: 2*rounds requests; 8 clients: rounds waves")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "serve" / "llm.yaml",
                        help="the LLM serve config to start (engine transformers: compared with plain generate)")
    parser.add_argument("--url", help="measure this running endpoint instead of starting one (key: OPENAI_API_KEY)")
    parser.add_argument("--model", help="the model id to ask for at --url")
    args = parser.parse_args()
    if args.url and not args.model:
        parser.error("--url needs --model (the id /v1/models lists)")
    logging.getLogger("ray").setLevel(logging.WARNING)

    if args.url:
        endpoint = Endpoint(args.url, args.model, args.max_tokens, args.rounds,
                            api_key=os.environ.get("OPENAI_API_KEY", "none"))
        report_endpoint(args, "remote", args.model, endpoint.measure())
        return
    from fabric.config import ConfigError
    from llm.serving import LLMServeConfig

    try:
        cfg = LLMServeConfig.from_yaml(args.config, [f"port={_free_port()}", "auth.required=false"])
        if cfg.engine != "transformers":
            report_endpoint(args, cfg.engine, cfg.model.id, served(cfg, args.max_tokens, args.rounds, None))
            return
        from llm.models import resolve_model

        folder = resolve_model(cfg.model.source, cache=MODEL_CACHE)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": str(folder)})})
        plain = Plain(folder, args.max_tokens, args.rounds)
        base = {"single": plain.single(), "batch8": plain.batch8()}
        api = served(cfg, args.max_tokens, args.rounds, plain)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
    report_cpu(args, base, api)


def report_endpoint(args: argparse.Namespace, engine: str, model: str, api: dict[str, float]) -> None:
    """Figures of an engine measured alone (vLLM on GPUs, or a running endpoint): no plain baseline, no targets."""
    print(f"{model} ({engine} engine), greedy, max_tokens {args.max_tokens}")
    for label, value in [("served, 1 request at a time (tokens/s)", api["single"]),
                         ("served, 8 concurrent requests (tokens/s)", api["concurrent8"]),
                         ("time to first token, alone (s)", api["ttft_single_s"]),
                         ("time to first token, 8 at once (s)", api["ttft_concurrent8_s"])]:
        print(f"{label:<44}{value:>10.3f}")
    print(json.dumps({
        "bench": "llm_serve",
        "engine": engine,
        "model": model,
        "max_tokens": args.max_tokens,
        "served_single_tokens_per_s": round(api["single"], 2),
        "served_concurrent8_tokens_per_s": round(api["concurrent8"], 2),
        "ttft_single_s": round(api["ttft_single_s"], 4),
        "ttft_concurrent8_s": round(api["ttft_concurrent8_s"], 4),
        "ratio_concurrent8_vs_single": round(api["concurrent8"] / api["single"], 3),
    }))


def report_cpu(args: argparse.Namespace, base: dict[str, float], api: dict[str, float]) -> None:
    """The CPU engine next to plain generate, with the issue's targets."""
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
    print(f"time to first token (streamed): {api['ttft_single_s']:.3f} s alone, "
          f"{api['ttft_concurrent8_s']:.3f} s with 8 at once (median)")
    print(json.dumps({
        "bench": "llm_serve",
        "engine": "transformers",
        "max_tokens": args.max_tokens,
        "plain_single_tokens_per_s": round(base["single"], 2),
        "plain_batch8_tokens_per_s": round(base["batch8"], 2),
        "plain_single_beside_serve_tokens_per_s": round(api["plain_beside_serve"], 2),
        "served_single_tokens_per_s": round(api["single"], 2),
        "served_concurrent8_tokens_per_s": round(api["concurrent8"], 2),
        "ttft_single_s": round(api["ttft_single_s"], 4),
        "ttft_concurrent8_s": round(api["ttft_concurrent8_s"], 4),
        "ratio_single_vs_plain": round(single_ratio, 3),
        "ratio_single_vs_plain_beside_serve": round(beside_ratio, 3),
        "ratio_concurrent8_vs_single": round(concurrent_ratio, 3),
        "ratio_concurrent8_vs_plain_batch8": round(api["concurrent8"] / base["batch8"], 3),
        "meets_targets": single_ratio >= TARGET_SINGLE and concurrent_ratio >= TARGET_CONCURRENT,
    }))


if __name__ == "__main__":
    main()
