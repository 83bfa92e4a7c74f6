"""Generation speed-ups that must not change an answer: prompt lookup and the prefix cache, on a
tiny Llama with real LoRA voices (the shipped model's figures: bench/adapters.py, bench/answers.py)."""

import pytest

from bot.adapters import AdapterRegistry
from bot.config import ModelSettings
from bot.generation import GenerationStats, Generator
from conftest import load_tiny

ASK = [{"role": "user", "content": "Do you ship to Canada?"}]


@pytest.fixture(scope="module")
def reg(tiny_base, voices_dir):
    r = AdapterRegistry(load_tiny(tiny_base), voices_dir)
    r.scan()
    return r


def prefill_lengths(reg, run):
    """Input lengths of the model's forward passes while `run()` generates."""
    lengths = []
    hook = reg.loaded.model.register_forward_hook(lambda m, a, kw, o: lengths.append(kw["input_ids"].shape[1]),
                                                  with_kwargs=True)
    try:
        out = run()
    finally:
        hook.remove()
    return out, lengths


def answer(reg, settings: ModelSettings, messages, adapter, stats=None, gen=None, tokens=24):
    gen = gen or Generator(reg.loaded, reg, settings)
    return "".join(gen.stream(messages, adapter, max_new_tokens=tokens, stats=stats))


@pytest.mark.parametrize("adapter", ["none", "sunny"])
def test_prompt_lookup_gives_the_same_answer_in_fewer_passes(reg, adapter):
    """Prompt lookup checks a run of prompt tokens in one forward pass: under greedy decoding the
    answer is the one token-by-token decoding gives, in fewer forward passes where it copies."""
    plain = ModelSettings(loop_tokens=0, prefix_cache=False)
    said = answer(reg, plain, ASK, adapter)
    # a prompt holding what the model says: the lookup has something to propose
    ask = [{"role": "user", "content": f"{said}\n\n{ASK[0]['content']}"}]
    out, passes = {}, {}
    for lookup in (0, 10):
        settings = ModelSettings(prompt_lookup=lookup, loop_tokens=0, prefix_cache=False)
        out[lookup], lengths = prefill_lengths(reg, lambda: answer(reg, settings, ask, adapter))
        passes[lookup] = len(lengths)
    assert out[10] == out[0]
    assert passes[10] < passes[0], passes


@pytest.mark.parametrize("lookup", [0, 10])
def test_the_prefix_cache_skips_the_shared_start_and_changes_no_answer(reg, lookup):
    """Two questions on one voice share the instructions: the second prompt's prefill starts after
    them. Each voice keeps its own cache (keys and values depend on the weights), and every answer
    equals the one computed without the cache."""
    system = {"role": "system", "content": "You are a customer-support assistant for Fernway. Answer "
                                           "from the passages, cite them as [n], and be brief and kind."}
    asks = [[system, {"role": "user", "content": q}]
            for q in ("Do you ship to Canada?", "How much is the Plus plan?", "Can I get a refund?")]
    cold = ModelSettings(prefix_cache=False, prompt_lookup=lookup)
    want = {(a, i): answer(reg, cold, m, a) for a in ("sunny", "none") for i, m in enumerate(asks)}
    gen = Generator(reg.loaded, reg, ModelSettings(prefix_cache=True, prompt_lookup=lookup))
    seen = set()
    for adapter in ("sunny", "none", "sunny"):
        for i, messages in enumerate(asks):
            stats = GenerationStats()
            got, lengths = prefill_lengths(reg, lambda: answer(reg, None, messages, adapter, stats, gen))
            assert got == want[(adapter, i)], (adapter, i)
            # the first prompt on a voice has nothing cached; every later one reuses the shared start
            assert (stats.cached_tokens >= 16) == (adapter in seen), (adapter, i, stats.cached_tokens)
            uncached = len(reg.loaded.encode(messages)) - stats.cached_tokens
            assert uncached <= lengths[0] <= uncached + lookup  # with lookup, candidates join the prefill
            seen.add(adapter)


@pytest.mark.parametrize("adapter", ["none", "sunny", "formal"])
def test_the_decoding_loop_says_what_transformers_generate_says(reg, adapter):
    """The loop (prefix cache and prompt lookup on) against transformers' own greedy generate()."""
    import torch

    messages = [{"role": "user", "content": "Plus costs $12.50 a month. Do you ship to Canada?"}]
    ids = reg.loaded.encode(messages)
    with reg.using(adapter), torch.inference_mode():
        ref = reg.loaded.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=30, do_sample=False,
                                        eos_token_id=reg.loaded.tokenizer.eos_token_id)
    want = reg.loaded.tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True)
    gen = Generator(reg.loaded, reg, ModelSettings(prompt_lookup=10, loop_tokens=0))
    for _ in range(2):  # the second time from the prefix cache
        stats = GenerationStats()
        assert answer(reg, None, messages, adapter, stats, gen, tokens=30) == want
    assert stats.cached_tokens == len(ids) - 1


def test_the_prefix_cache_keeps_answer_and_small_talk_openings_apart():
    """Answer and small-talk prompts open differently; alternating them on one voice must not
    evict the other's cache, and another voice never gets this one's keys and values."""
    import torch
    from transformers import DynamicCache

    from bot.prefix import PrefixCache

    def cache_for(ids):
        c = DynamicCache()
        t = torch.arange(len(ids), dtype=torch.float32).view(1, 1, -1, 1)
        c.update(t, t, 0)
        return c

    answer_start, talk_start = list(range(100, 140)), list(range(100, 110)) + list(range(500, 530))
    pc = PrefixCache(min_tokens=16)
    for ids in (answer_start + [1, 2, 3], talk_start + [4, 5]):
        pc.keep("cheerful", ids, cache_for(ids))
    past, n = pc.take("cheerful", answer_start + [7, 8])
    assert n == 40 and past.get_seq_length() == 40
    past, n = pc.take("cheerful", talk_start + [9])
    assert n == 40 and past.get_seq_length() == 40
    assert pc.take("formal", answer_start + [7, 8]) == (None, 0)
    assert pc.take("cheerful", list(range(100, 110)) + [0] * 30) == (None, 0)  # 10 shared: below min_tokens
    past.crop(-5)  # a request's copy is its own
    assert pc.take("cheerful", talk_start + [9])[0].get_seq_length() == 40


@pytest.mark.parametrize("tokens, extra, want", [
    ([5, 6, 7, 8, 9, 5, 6], [], [7, 8, 9, 5]),          # the last 2 tokens seen before: what followed
    ([2, 3, 8, 1, 2, 3, 4, 9, 1, 2, 3], [], [4, 9, 1, 2]),  # the longer match wins over the earlier
    ([5, 6, 7, 8, 6], [], []),                          # one token alone is no evidence
    ([1, 2, 3, 40, 41], [7, 40, 41, 42, 43, -1, 40, 41, 50], [42, 43]),  # a voice phrase, to its end
    ([1, 2, 3, 4], [], []),
])
def test_the_draft_is_what_followed_the_last_tokens_before(tokens, extra, want):
    from bot.decoding import draft

    assert draft(tokens, 4, extra) == want


def test_sampling_runs_through_generate_with_the_same_stops(reg):
    """model.temperature > 0 samples with transformers' generate(): the same streaming, token
    budget and stop as the greedy loop."""
    import threading

    import torch

    torch.manual_seed(0)
    gen = Generator(reg.loaded, reg, ModelSettings(temperature=0.9, loop_tokens=0))
    stats = GenerationStats()
    text = "".join(gen.stream(ASK, "sunny", max_new_tokens=12, stats=stats))
    assert text and 1 <= stats.new_tokens <= 12
    stop, stats = threading.Event(), GenerationStats()
    stream = gen.stream(ASK, "formal", stop=stop, max_new_tokens=400, stats=stats, min_new_tokens=400)
    next(stream)
    stop.set()
    list(stream)
    assert stats.stopped and stats.new_tokens < 400
