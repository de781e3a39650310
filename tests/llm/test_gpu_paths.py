"""The CUDA paths of the LLM code, without Ray: LoRA fine-tuning steps in bfloat16 (what ``lora_loop`` runs on
each GPU worker) and the transformers engine's batched decoder on a GPU, mixed adapters included.

Marked ``gpu``: skipped where CUDA is missing. The model is SmolLM2-135M's architecture with random weights (the
real weights are not needed to check the code paths, and GPU machines may not have the model cache); the
tokenizer is SmolLM2's (``FABRIC_GPU_TOKENIZER``, else the converted model in the cache). Also runs as a script
on a GPU machine that has torch, transformers and peft but no pytest or Ray, printing one JSON line of what it
measured:

    FABRIC_GPU_TOKENIZER=path/to/tokenizer python tests/llm/test_gpu_paths.py
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

try:
    import pytest

    pytestmark = pytest.mark.gpu
except ImportError:  # run as a script on a bare GPU image
    pytest = None

MEASURED: dict[str, float] = {}
DEVICE = os.environ.get("FABRIC_GPU_CHECK_DEVICE", "cuda")  # "cpu": a dry run of the decoder check


def _tokenizer_folder() -> Path:
    if os.environ.get("FABRIC_GPU_TOKENIZER"):
        return Path(os.environ["FABRIC_GPU_TOKENIZER"])
    from llm.models import resolve_model

    return resolve_model()


def _random_model(folder: Path, dtype):
    """SmolLM2's architecture (from the folder's config.json) with seeded random weights, on the GPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(DEVICE).eval()


def _chats(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        chats.append([{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a + b}"}])
    return chats


def test_lora_finetune_steps_lower_the_loss_in_bfloat16_on_cuda():
    import importlib.util

    import torch

    first, last = _finetune("none", steps=30)
    MEASURED["lora_device"] = torch.cuda.get_device_name(0)
    assert last < first
    if importlib.util.find_spec("bitsandbytes") is not None:  # QLoRA: 4-bit NF4 base, bf16 adapters
        first, last = _finetune("4bit", steps=30)
        assert last < first


def _finetune(quantization: str, steps: int) -> tuple[float, float]:
    """Trains a fresh adapter with our loader and chat rendering, as lora_loop does; returns the mean loss of the
    first and of the last three steps."""
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from llm.chat import collate, render_chat
    from llm.lora import load_lora_model

    folder = _tokenizer_folder()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        _random_model(folder, torch.float32).save_pretrained(base)
        AutoTokenizer.from_pretrained(folder).save_pretrained(base)
        config = {"model": {"dtype": "auto", "quantization": quantization, "gradient_checkpointing": True},
                  "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj",
                                                                                     "o_proj"]},
                  "use_gpu": True, "seed": 0}
        model, tokenizer = load_lora_model(base, config)
        if quantization == "none":
            assert model.get_input_embeddings().weight.dtype == torch.bfloat16  # dtype auto on a GPU
        rows = [render_chat(tokenizer, chat, 48) for chat in _chats(32)]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        import inspect

        # transformers renamed gradient_checkpointing to activation_checkpointing (ours has it; older images not)
        checkpointing = ("activation_checkpointing" if "activation_checkpointing" in
                         inspect.signature(TrainingArguments).parameters else "gradient_checkpointing")
        args = TrainingArguments(
            output_dir=str(Path(tmp) / "out"), max_steps=steps, per_device_train_batch_size=8, learning_rate=5e-3,
            lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
            seed=0, use_cpu=False, bf16=True, remove_unused_columns=False, dataloader_num_workers=0,
            **{checkpointing: True},
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=lambda batch: collate(batch, pad_id))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(loss == loss for loss in losses), losses  # no NaN
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    MEASURED.update({f"lora_{quantization}_first_loss": round(first, 4), f"lora_{quantization}_last_loss":
                     round(last, 4), f"lora_{quantization}_steps_per_s": round(steps / seconds, 2)})
    return first, last


def test_decoder_on_cuda_matches_generate_batches_and_mixes_adapters():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from llm.serving.generation import Decoder, Job

    folder = _tokenizer_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = _random_model(folder, torch.float32)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": chat[0]["content"] + " " * i}],
                                             add_generation_prompt=True, tokenize=True) for i, chat in
               enumerate(_chats(8))]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    prompts = [p[: len(p) - (i % 3)] for i, p in enumerate(prompts)]  # different lengths: left padding at work
    no_eos = {-1}  # random weights: decode exactly max_tokens tokens on every path
    decoder = Decoder(model, tokenizer, no_eos)

    def decode(jobs):  # every job decodes exactly max_tokens tokens (no EOS)
        for _ in decoder.run(jobs):
            pass

    def generated(prompt, n):
        with torch.inference_mode():
            ids = torch.tensor([prompt], device=DEVICE)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return out[0, len(prompt):].tolist()

    # batched greedy decoding gives each row what it gets alone (float32 on the GPU)
    rows = _token_rows(decoder, prompts, 12)
    for prompt, row in zip(prompts, rows, strict=True):
        assert row == generated(prompt, 12)
    # continuous batching: rows joining a running batch (one every other step) decode what they decode alone
    rows = _token_rows(decoder, prompts[:4], 8, join_every=2)
    for prompt, row in zip(prompts[:4], rows, strict=True):
        assert row == generated(prompt, 8)

    # throughput: one stream vs eight at once, against plain generate
    n = 64
    generated(prompts[0], 8)
    started = time.perf_counter()
    generated(prompts[0], n)
    plain = n / (time.perf_counter() - started)
    started = time.perf_counter()
    decode([Job(prompt_ids=prompts[0], max_tokens=n, temperature=0.0)])
    single = n / (time.perf_counter() - started)
    started = time.perf_counter()
    decode([Job(prompt_ids=p, max_tokens=n, temperature=0.8, seed=i) for i, p in enumerate(prompts)])
    batch8 = 8 * n / (time.perf_counter() - started)
    MEASURED.update(decoder_plain_generate_tokens_per_s=round(plain, 1), decoder_single_tokens_per_s=round(single, 1),
                    decoder_batch8_tokens_per_s=round(batch8, 1), decoder_single_vs_plain=round(single / plain, 3),
                    decoder_batch8_vs_single=round(batch8 / single, 3))
    assert batch8 > 2 * single

    # two LoRA adapters and the base model in one batch: each row as it decodes alone
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora, adapter_name="first")
    peft_model.add_adapter("second", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    peft_model.eval()
    decoder = Decoder(peft_model, tokenizer, no_eos)
    adapters = ["first", "second", None]
    mixed = _token_rows(decoder, prompts[:3], 8, adapters)
    alone = [_token_rows(decoder, [p], 8, [a])[0] for p, a in zip(prompts[:3], adapters, strict=True)]
    assert mixed == alone
    assert len({tuple(row) for row in alone}) == 3  # the adapters change the output


def _token_rows(decoder, prompts, max_tokens, adapters=None, join_every=0):
    """Greedy token ids per prompt, decoded together in one batch; with ``join_every``, the prompts join the
    running batch one at a time, every ``join_every`` steps."""
    from llm.serving.generation import Batch, Job

    adapters = adapters or [None] * len(prompts)
    jobs = [Job(prompt_ids=p, max_tokens=max_tokens, temperature=0.0, adapter=a) for p, a in zip(prompts, adapters,
                                                                                                   strict=True)]
    rows = {job: [] for job in jobs}
    original = decoder._advance

    def record(row, token):
        rows[row.job].append(token)
        return original(row, token)

    decoder._advance = record
    try:
        if join_every:
            batch, step = Batch(decoder), 0
            while step < join_every * len(jobs) or batch:
                batch.step([jobs[step // join_every]] if step % join_every == 0 and step < join_every * len(jobs)
                           else [])
                step += 1
        else:
            for _ in decoder.run(jobs):
                pass
    finally:
        decoder._advance = original
    return [rows[job] for job in jobs]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    results = {}
    for test in (test_lora_finetune_steps_lower_the_loss_in_bfloat16_on_cuda,
                 test_decoder_on_cuda_matches_generate_batches_and_mixes_adapters):
        try:
            test()
            results[test.__name__] = "passed"
        except Exception as exc:  # report every check, then fail
            import traceback

            traceback.print_exc()
            results[test.__name__] = f"failed: {type(exc).__name__}: {exc}"[:500]
    print(json.dumps({"checks": results, **MEASURED}))
    sys.exit(0 if all(v == "passed" for v in results.values()) else 1)
