"""The LLM engine on a real tiny Llama (and a tiny Mistral: grouped-query attention, a sliding-window mask):
greedy parity with `model.generate` token for token (alone, batched, joining mid-decode, a burst of
mixed-length prompts prefilled together), stopping, seeded sampling, cancellation, budgets and streaming.

Steps are driven from the test (`engine.step()`), so who joins when is exact, with no clocks."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch
from aiops.inference.llm.engine import LLMEngine, check_causal_lm_folder
from aiops.inference.llm.generation import (
    Finished,
    GenerationRequest,
    Limits,
    LLMError,
    SamplingParams,
    TokenEvent,
)
from aiops.inference.llm.kv_cache import prefill_groups

from aiops.errors import UsageError

PROMPTS = [
    "def main():",
    "import os\nimport sys\n\n",
    "x",
    "The quick brown fox jumps over the lazy dog, and then the dog said:",
    'class Config(object):\n    """Settings"""\n    def __init__(self, path, *, strict=False):',
]


def reference(model, tokenizer, prompt: str, **generate_kwargs) -> list[int]:
    """What `model.generate` answers for the prompt alone: the new token ids."""
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, **generate_kwargs)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def ids(finished: Finished) -> list[int]:
    return [token.id for token in finished.tokens]


def greedy(prompt: str, max_new_tokens: int, **params) -> GenerationRequest:
    return GenerationRequest(prompt, SamplingParams(max_new_tokens=max_new_tokens, **params))


@pytest.fixture
def make_engine(tiny_llm):
    model, tokenizer = tiny_llm

    def make(**limits) -> LLMEngine:
        return LLMEngine(model, tokenizer, Limits(**{"max_total_tokens": 256, **limits}))

    return make


def test_greedy_alone_equals_generate(tiny_llm, make_engine):
    model, tokenizer = tiny_llm
    engine = make_engine(max_batch_size=1)
    for prompt in PROMPTS:
        expected = reference(model, tokenizer, prompt, max_new_tokens=24)
        handle = engine.submit(greedy(prompt, 24))
        engine.run_until_idle()
        finished = handle.result()
        assert ids(finished) == expected, prompt
        assert finished.reason == ("length" if len(expected) == 24 else "eos_token")
        assert finished.input_length == len(tokenizer(prompt)["input_ids"])
        assert finished.generated_text == tokenizer.decode(expected, skip_special_tokens=True)


def test_greedy_batched_with_joins_and_leaves_mid_decode_equals_generate(tiny_llm, make_engine):
    model, tokenizer = tiny_llm
    lengths = [30, 7, 25, 12, 30]  # rows leave at different steps while others keep decoding
    expected = [
        reference(model, tokenizer, p, max_new_tokens=n) for p, n in zip(PROMPTS, lengths, strict=True)
    ]
    engine = make_engine(max_batch_size=8)
    handles = [engine.submit(greedy(PROMPTS[0], lengths[0])), engine.submit(greedy(PROMPTS[1], lengths[1]))]
    for _ in range(3):
        engine.step()
    assert engine.running == 2
    handles.append(engine.submit(greedy(PROMPTS[2], lengths[2])))  # joins a batch 4 tokens in
    for _ in range(5):
        engine.step()
    handles += [engine.submit(greedy(PROMPTS[3], lengths[3])), engine.submit(greedy(PROMPTS[4], lengths[4]))]
    engine.step()
    assert engine.running == 4  # the 7-token request has left; both newcomers joined at one boundary
    engine.run_until_idle()
    for prompt, handle, want in zip(PROMPTS, handles, expected, strict=True):
        assert ids(handle.result()) == want, prompt
    assert engine.running == 0


@pytest.mark.parametrize("model_fixture", ["tiny_llm", "tiny_mistral"])
@pytest.mark.parametrize("padding", [None, 0.1])
def test_a_burst_of_mixed_lengths_is_prefilled_jointly_and_equals_generate(
    request, model_fixture, padding, monkeypatch
):
    """Prompts of 1 to ~45 tokens arriving together join at one boundary and are prefilled in left-padded
    forwards: all in one (padding None, a GPU's default) or in groups that pad at most 10 % of their tokens
    (the CPU's). A row whose first token ends it leaves before the decode; each answer is generate's."""
    model, tokenizer = request.getfixturevalue(model_fixture)
    engine = LLMEngine(model, tokenizer, Limits(max_total_tokens=256, max_batch_size=16))
    engine.prefill_padding = padding
    burst = [(PROMPTS[4], 12), (PROMPTS[2], 9), (PROMPTS[3], 1), (PROMPTS[0], 15), (PROMPTS[1], 6)]
    expected = [reference(model, tokenizer, p, max_new_tokens=n) for p, n in [(PROMPTS[1], 20), *burst]]
    prompt_lengths = [len(tokenizer(p)["input_ids"]) for p, _ in burst]
    assert min(prompt_lengths) == 1 and max(prompt_lengths) > 30
    forwards: list[tuple[tuple[int, ...], int]] = []  # (input_ids' shape, real tokens) of each forward

    def counted(**kwargs):
        mask = kwargs["attention_mask"]
        # a padded decode step's mask is 4D; an unpadded one's is None
        real = int(mask.sum()) if mask is not None and mask.dim() == 2 else -1
        forwards.append((tuple(kwargs["input_ids"].shape), real))
        return forward(**kwargs)

    forward = model.forward
    monkeypatch.setattr(model, "forward", counted)

    running = engine.submit(greedy(PROMPTS[1], 20))
    engine.step()
    engine.step()  # a batch already decoding when the burst arrives
    handles = [engine.submit(greedy(p, n)) for p, n in burst]
    forwards.clear()
    engine.step()
    *prefills, decode = forwards
    assert decode[0] == (5, 1)  # 1 running + 5 joining - the one that ended at its first token
    if padding is None:
        assert prefills == [((5, max(prompt_lengths)), sum(prompt_lengths))]
    else:
        assert len(prefills) > 1
        assert sum(rows for (rows, _), _ in prefills) == 5 and sum(r for _, r in prefills) == sum(
            prompt_lengths
        )
        assert all(rows * width <= 1.1 * real for (rows, width), real in prefills)
    assert engine.running == 5
    engine.run_until_idle()
    prompts = [PROMPTS[1]] + [p for p, _ in burst]
    for prompt, handle, want in zip(prompts, [running, *handles], expected, strict=True):
        assert ids(handle.result()) == want, prompt


@pytest.mark.parametrize(
    ("lengths", "padding", "groups"),
    [
        ([], 0.1, []),
        ([5], 0.1, [[0]]),
        ([40, 10, 41, 9, 42], None, [[3, 1, 0, 2, 4]]),  # one group, shortest first
        ([40, 10, 41, 9, 42], 0.1, [[3, 1], [0, 2, 4]]),  # 2 x 10 <= 1.1 x 19; 40 with them would not be
        ([40, 10, 41, 9, 42], 0.0, [[3], [1], [0], [2], [4]]),
        ([8, 8, 8, 30], 0.0, [[0, 1, 2], [3]]),  # equal lengths share a forward even with no padding
        ([10, 12, 14, 16, 18, 20], 0.25, [[0, 1, 2, 3], [4, 5]]),  # 5 x 18 = 90 > 1.25 x 70
    ],
)
def test_prefill_groups_bound_the_padding(lengths, padding, groups):
    assert prefill_groups(lengths, padding) == groups
    for group in groups:
        if padding is not None:
            longest, real = max(lengths[i] for i in group), sum(lengths[i] for i in group)
            assert len(group) * longest <= (1 + padding) * real


def test_prompt_details_of_a_joint_prefill_are_each_prompts_alone(make_engine):
    """Prompt logprobs (TGI's decoder_input_details) and the first token's top tokens, read from a padded
    row of a joint prefill, are the prompt's own."""

    def details(companions: list[str]) -> Finished:
        engine = make_engine(max_batch_size=8)
        handles = [engine.submit(greedy(p, 4)) for p in companions]
        handle = engine.submit(greedy(PROMPTS[1], 4, prefill_details=True, top_n_tokens=3))
        engine.run_until_idle()
        assert all(h.result().generated_tokens for h in handles)
        return handle.result()

    alone, joint = details([]), details([PROMPTS[4], PROMPTS[2]])  # one longer, one shorter than it
    assert [t.id for t in joint.prefill] == [t.id for t in alone.prefill]
    assert math.isnan(joint.prefill[0].logprob)
    assert [t.logprob for t in joint.prefill[1:]] == pytest.approx([t.logprob for t in alone.prefill[1:]])
    assert [[t.id for t in top] for top in joint.all_top_tokens] == [
        [t.id for t in top] for top in alone.all_top_tokens
    ]


def test_repetition_penalty_greedy_equals_generate(tiny_llm, make_engine):
    model, tokenizer = tiny_llm
    engine = make_engine(max_batch_size=4)
    handles = [engine.submit(greedy(p, 20, repetition_penalty=1.5)) for p in PROMPTS[:2]]
    handles.append(engine.submit(greedy(PROMPTS[2], 20)))  # a plain greedy row beside the penalised ones
    engine.run_until_idle()
    for prompt, handle, penalty in zip(PROMPTS[:3], handles, (1.5, 1.5, 1.0), strict=True):
        assert ids(handle.result()) == reference(
            model, tokenizer, prompt, max_new_tokens=20, repetition_penalty=penalty
        )


def test_max_new_tokens_and_eos(tiny_llm, make_engine):
    model, tokenizer = tiny_llm
    engine = make_engine()
    handle = engine.submit(greedy(PROMPTS[0], 1))
    engine.run_until_idle()
    finished = handle.result()
    assert (finished.reason, finished.generated_tokens) == ("length", 1)
    # a token the greedy text reaches at its 6th step stands in for EOS, as generate's eos_token_id
    full = reference(model, tokenizer, PROMPTS[3], max_new_tokens=30)
    eos = full[5]
    engine.eos_ids = frozenset({eos})
    handle = engine.submit(greedy(PROMPTS[3], 30))
    engine.run_until_idle()
    finished = handle.result()
    assert finished.reason == "eos_token"
    assert ids(finished) == reference(model, tokenizer, PROMPTS[3], max_new_tokens=30, eos_token_id=eos)
    assert ids(finished)[-1] == eos and len(ids(finished)) == full.index(eos) + 1
    handle = engine.submit(greedy(PROMPTS[3], 30, ignore_eos=True))
    engine.run_until_idle()
    assert ids(handle.result()) == full


def test_stop_sequence_ends_the_text_and_stays_in_it(tiny_llm, make_engine):
    model, tokenizer = tiny_llm
    full = reference(model, tokenizer, PROMPTS[4], max_new_tokens=30)
    engine = make_engine()
    probe = engine.submit(greedy(PROMPTS[4], 30))
    engine.run_until_idle()
    texts = [token.text for token in probe.result().tokens]
    k = next(i for i in range(3, 30) if texts[i].strip())  # a token with visible text, a few steps in
    stop = "".join(texts[: k + 1])[-3:]
    assert stop not in "".join(texts[:k])  # not seen earlier: the stop really comes at step k
    handle = engine.submit(greedy(PROMPTS[4], 30, stop=("never-in-this-text", stop)))
    engine.run_until_idle()
    finished = handle.result()
    assert finished.reason == "stop_sequence"
    assert ids(finished) == full[: k + 1]
    assert finished.generated_text.endswith(stop)


def test_seeded_sampling_is_reproducible_whatever_the_batch(make_engine):
    def sample(seed, companions: int, late: bool) -> Finished:
        engine = make_engine(max_batch_size=8)
        request = GenerationRequest(
            PROMPTS[1],
            SamplingParams(
                max_new_tokens=20, do_sample=True, temperature=1.3, top_k=50, top_p=0.95, seed=seed
            ),
        )
        others = [engine.submit(greedy(p, 25)) for p in PROMPTS[2 : 2 + companions]]
        if late:
            engine.step()
            engine.step()
        handle = engine.submit(request)
        others += [
            engine.submit(GenerationRequest(PROMPTS[0], SamplingParams(max_new_tokens=9, do_sample=True)))
        ]
        engine.run_until_idle()
        return handle.result()

    alone = sample(1234, companions=0, late=False)
    assert alone.seed == 1234
    assert ids(sample(1234, companions=3, late=True)) == ids(alone)
    assert ids(sample(1234, companions=2, late=False)) == ids(alone)
    assert ids(sample(99, companions=0, late=False)) != ids(alone)
    unseeded = sample(None, companions=1, late=False)
    assert isinstance(unseeded.seed, int)  # drawn for it, and reported so the answer can be reproduced
    assert ids(sample(unseeded.seed, companions=0, late=False)) == ids(unseeded)


def test_cancel_frees_the_slot_at_the_next_step(make_engine):
    engine = make_engine(max_batch_size=1)
    first = engine.submit(greedy(PROMPTS[0], 100))
    second = engine.submit(greedy(PROMPTS[1], 5))
    engine.step()
    engine.step()
    assert engine.scheduler.running == (first.seq_id,) and engine.scheduler.waiting == (second.seq_id,)
    assert not second.poll()
    first.cancel()
    engine.step()  # the boundary: the cancelled one leaves, the waiting one joins and gets its first tokens
    assert engine.scheduler.running == (second.seq_id,)
    assert isinstance(second.poll()[0], TokenEvent)
    events = first.poll()
    assert isinstance(events[-1], Finished) and events[-1].reason == "cancelled"
    assert (
        len(events) == 4
    )  # the prefill's token and two decode steps', then the end: nothing after the cancel
    engine.run_until_idle()
    assert second.result().reason == "length"
    waiting = engine.submit(greedy(PROMPTS[2], 5))
    waiting.cancel()  # cancelled before it ever ran
    engine.run_until_idle()
    assert waiting.result().reason == "cancelled" and waiting.result().tokens == ()


def test_budget_refusals_before_anything_runs(tiny_llm, make_engine):
    _, tokenizer = tiny_llm
    engine = make_engine(max_total_tokens=16, max_queue=1)
    n = len(tokenizer(PROMPTS[3])["input_ids"])
    with pytest.raises(LLMError) as refused:
        engine.submit(greedy(PROMPTS[0], 16))
    prompt_tokens = len(tokenizer(PROMPTS[0])["input_ids"])
    assert refused.value.error_type == "validation"
    assert refused.value.message == (
        f"`inputs` tokens + `max_new_tokens` must be <= 16. Given: {prompt_tokens} "
        f"`inputs` tokens and 16 `max_new_tokens`"
    )
    with pytest.raises(LLMError) as refused:  # no max_new_tokens: TGI's budget left is 0, the total is over
        engine.submit(GenerationRequest(PROMPTS[3]))
    assert refused.value.message == (
        f"`inputs` tokens + `max_new_tokens` must be <= 16. Given: {n} `inputs` tokens and 0 `max_new_tokens`"
    )
    handle = engine.submit(GenerationRequest(PROMPTS[0]))  # max_new_tokens: the rest of the budget
    assert handle.max_new_tokens == 16 - prompt_tokens
    with pytest.raises(LLMError) as overloaded:
        engine.submit(GenerationRequest(PROMPTS[0]))
    assert overloaded.value.error_type == "overloaded"
    assert engine.scheduler.waiting == (handle.seq_id,)
    engine.run_until_idle()
    assert handle.result().generated_tokens <= 16 - prompt_tokens


def test_tokens_stream_before_the_end_and_add_up_to_the_text(tiny_llm, make_engine):
    _, tokenizer = tiny_llm
    engine = make_engine()
    handle = engine.submit(greedy(PROMPTS[4], 12, top_n_tokens=3, prefill_details=True))
    engine.step()
    first = handle.poll()
    assert [type(e) for e in first] == [TokenEvent, TokenEvent]  # the prefill's token, then one decode step
    assert [e.index for e in first] == [1, 2]
    engine.run_until_idle()
    rest = handle.poll()
    assert isinstance(rest[-1], Finished) and not any(isinstance(e, Finished) for e in rest[:-1])
    finished = rest[-1]
    streamed = first + rest[:-1]
    assert [e.token for e in streamed] + [finished.token] == list(finished.tokens)
    assert "".join(t.text for t in finished.tokens) == tokenizer.decode(ids(finished))
    for event in streamed:  # greedy: the most likely token is the chosen one
        assert len(event.top_tokens) == 3 and event.top_tokens[0].id == event.token.id
        assert event.top_tokens[0].logprob == pytest.approx(event.token.logprob)
    prompt_ids = tokenizer(PROMPTS[4])["input_ids"]
    assert [t.id for t in finished.prefill] == prompt_ids
    assert math.isnan(finished.prefill[0].logprob) and all(t.logprob <= 0 for t in finished.prefill[1:])


def test_engine_thread_serves_16_concurrent_mixed_clients(tiny_llm, make_engine):
    """Greedy of many lengths, seeded sampling and stop sequences from 16 threads at once, through the
    engine's own thread: each answer is what that request gets alone."""
    model, tokenizer = tiny_llm

    def request(i: int) -> GenerationRequest:
        if i % 4 == 3:  # sampled, seeded
            return GenerationRequest(
                PROMPTS[i % 5],
                SamplingParams(max_new_tokens=10, do_sample=True, seed=i, top_k=40, temperature=0.9),
            )
        return greedy(PROMPTS[i % 5], 6 + i, stop=("\n\n",) if i % 4 == 2 else ())

    alone = make_engine(max_batch_size=1)
    expected = {}
    for i in range(16):
        handle = alone.submit(request(i))
        alone.run_until_idle()
        expected[i] = ids(handle.result())
    for i in range(16):
        if i % 4 in (0, 1):  # plain greedy: also what generate answers
            assert expected[i] == reference(model, tokenizer, PROMPTS[i % 5], max_new_tokens=6 + i)
    engine = make_engine(max_batch_size=8).start()
    try:
        results: dict[int, list[int]] = {}

        def client(i: int) -> None:
            results[i] = ids(engine.submit(request(i)).result())

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert results == expected
    finally:
        engine.close()


def test_a_failed_step_fails_its_requests_and_the_engine_carries_on(tiny_llm, make_engine, monkeypatch):
    model, tokenizer = tiny_llm
    engine = make_engine()
    doomed = engine.submit(greedy(PROMPTS[0], 10))
    engine.step()
    forward = model.forward
    monkeypatch.setattr(
        model, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    )
    engine.step()
    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(LLMError) as failed:
        doomed.result()
    assert failed.value.error_type == "generation"
    assert failed.value.message == "Request failed during generation: CUDA out of memory"
    after = engine.submit(greedy(PROMPTS[1], 6))
    engine.run_until_idle()
    assert ids(after.result()) == reference(model, tokenizer, PROMPTS[1], max_new_tokens=6)


def test_from_folder_names_what_is_missing(tmp_path: Path, tiny_llm_dir: Path):
    with pytest.raises(UsageError, match="no such folder"):
        check_causal_lm_folder(tmp_path / "nope")
    with pytest.raises(UsageError, match="no config.json"):
        check_causal_lm_folder(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    with pytest.raises(
        UsageError,
        match="not a causal language model: config.json architectures is BertForSequenceClassification",
    ):
        check_causal_lm_folder(tmp_path)
    (tmp_path / "config.json").write_text((tiny_llm_dir / "config.json").read_text())
    with pytest.raises(UsageError, match="no tokenizer"):
        check_causal_lm_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text((tiny_llm_dir / "tokenizer.json").read_text())
    with pytest.raises(UsageError, match=r"no weights \(\*.safetensors or \*.bin\)"):
        check_causal_lm_folder(tmp_path)
    check_causal_lm_folder(tiny_llm_dir)
