"""The batched decoder without Ray, on a tiny random Llama: requests that join a running batch (continuous
batching) decode exactly what they decode alone, and cancelled or finished rows leave the batch."""

from __future__ import annotations

NO_EOS = {-1}  # random weights: every row decodes exactly max_tokens tokens


def _prompts(tokenizer) -> list[list[int]]:
    texts = ["Hi", "What is the capital of France?", "Write one short sentence about the sea.", "2+2?"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _alone(model, prompt: list[int], n: int) -> list[int]:
    import torch

    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_jobs_joining_a_running_batch_decode_what_they_decode_alone(tiny):
    from llm.serving.generation import Batch, Decoder, Job

    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    lengths = [9, 3, 7, 5]
    jobs = [Job(prompt_ids=p, max_tokens=n, temperature=0.0) for p, n in zip(prompts, lengths, strict=True)]
    tokens: dict[Job, list[int]] = {job: [] for job in jobs}
    decoder = Decoder(model, tokenizer, NO_EOS)
    original = decoder._advance

    def record(row, token):
        tokens[row.job].append(token)
        return original(row, token)

    decoder._advance = record
    batch, sizes, finished = Batch(decoder), [], []
    joining = {0: jobs[:1], 2: jobs[1:3], 5: jobs[3:]}  # step -> jobs that arrive before it
    for step in range(20):
        events = batch.step(joining.get(step, []))
        finished += [job for job, event in events if event.finish_reason]
        sizes.append(len(batch))
        if not batch and step > 5:
            break
    assert [tokens[job] for job in jobs] == [_alone(model, p, n) for p, n in zip(prompts, lengths, strict=True)]
    assert sizes[:6] == [1, 1, 3, 3, 2, 3]  # joined at steps 2 and 5; the 3-token job left after step 4
    assert sorted(map(id, finished)) == sorted(map(id, jobs)) and len(batch) == 0
    assert all(event.finish_reason == "length" for _, event in events)


def test_cancelled_jobs_leave_and_sampled_rows_keep_their_seed(tiny):
    from llm.serving.generation import Batch, Decoder, Job

    model, tokenizer = tiny
    prompts = _prompts(tokenizer)

    def sampled(joined_late: bool) -> str:
        decoder = Decoder(model, tokenizer, NO_EOS)
        batch = Batch(decoder)
        job = Job(prompt_ids=prompts[1], max_tokens=6, temperature=1.0, seed=7)
        other = Job(prompt_ids=prompts[2], max_tokens=30, temperature=1.0, seed=1)
        events = batch.step([other]) + batch.step([job]) if joined_late else batch.step([job, other])
        text = ""
        while True:
            mine = [event for j, event in events if j is job]
            text += "".join(event.text for event in mine)
            if any(event.finish_reason for event in mine):
                break
            events = batch.step([])
        assert len(batch) == 1
        batch.cancel(other)
        batch.step([])
        assert len(batch) == 0  # the cancelled job left after one more step
        return text

    assert sampled(joined_late=False) == sampled(joined_late=True)
