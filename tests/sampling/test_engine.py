"""The sampling engine end to end on tiny random Qwen3 models (dense and MoE), CPU, fp32."""

from __future__ import annotations

import asyncio
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rao_jax.checkpoint.hf import load_pretrained
from rao_jax.sampling import EngineConfig, SamplingEngine, SamplingParams
from rao_jax.sampling import sampler as sampler_lib
from tests.hf_utils import make_hf_model

# One shape set for most tests, so their compilations are shared.
CONFIG = EngineConfig(max_rows=16, page_size=16, num_pages=512, max_seq_len=320, decode_steps=8,
                      max_prefill_tokens=4096, min_prefill_bucket=512, max_top_k=32)
NEW = 6


def _load(kind, tmp_path_factory):
    """(rao_jax model, transformers model) with identical weights."""
    moe = kind == "moe"
    hf = make_hf_model(moe, seed=1, max_position_embeddings=512, **({"norm_topk_prob": True} if moe else {}))
    folder = tmp_path_factory.mktemp(kind)
    hf.save_pretrained(folder)
    model, _ = load_pretrained(folder)
    return model, hf


@pytest.fixture(scope="module", params=["dense", "moe"])
def models(request, tmp_path_factory):
    return _load(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """The engine's behaviour does not depend on the MLP kind; the dense model keeps these tests quick."""
    return _load("dense", tmp_path_factory)


def _prompts(n=32, lo=5, hi=300, vocab=97, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.linspace(lo, hi, n).astype(int)
    rng.shuffle(lengths)
    return [rng.integers(0, vocab, int(k)).tolist() for k in lengths]


@jax.jit
def _padded_logits(model, tokens):
    return model(tokens)


def _greedy_reference(model, prompts, new):
    """Argmax decoding with the full no-cache training forward (right padding to a fixed width)."""
    width = 512
    seqs = [list(p) for p in prompts]
    logprobs = [[] for _ in prompts]
    for _ in range(new):
        batch = np.zeros((len(seqs), width), np.int32)
        for i, s in enumerate(seqs):
            batch[i, : len(s)] = s
        logits = np.asarray(_padded_logits(model, jnp.asarray(batch)))
        for i, s in enumerate(seqs):
            row = logits[i, len(s) - 1]
            token = int(np.argmax(row))
            logprobs[i].append(float(jax.nn.log_softmax(row)[token]))
            s.append(token)
    return [s[len(p):] for s, p in zip(seqs, prompts, strict=True)], logprobs


def test_greedy_batch_matches_full_forward_and_transformers(models):
    import torch

    model, hf = models
    prompts = _prompts()
    engine = SamplingEngine(model, CONFIG)
    outs = engine.generate(prompts, max_new_tokens=NEW, temperature=0.0)
    ref_tokens, _ = _greedy_reference(model, prompts, NEW)
    assert [o.tokens for o in outs] == ref_tokens
    assert all(o.finish_reason == "length" for o in outs)
    assert all(lp == 0.0 for o in outs for lp in o.logprobs)   # the argmax had probability 1 under greedy decoding

    with torch.no_grad():
        for prompt, out in zip(prompts, outs, strict=True):
            gen = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                              pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
            assert gen[0, len(prompt):].tolist() == out.tokens


def test_parameters_updated_in_place_are_read_by_the_next_call(dense):
    """A learner updates the model the engine holds in place; the next generation must use the new
    weights (the engine splits the model's graph once, at construction)."""
    from flax import nnx

    model = nnx.clone(dense[0])
    engine = SamplingEngine(model, CONFIG)
    prompts = _prompts(n=4, hi=40)
    before = [o.tokens for o in engine.generate(prompts, max_new_tokens=NEW, temperature=0.0)]
    params = nnx.state(model, nnx.Param)
    noise = jax.tree.map(lambda x: 0.5 * jax.random.normal(jax.random.key(x.size), x.shape, x.dtype), params)
    nnx.update(model, jax.tree.map(lambda x, n: x + n, params, noise))
    after = [o.tokens for o in engine.generate(prompts, max_new_tokens=NEW, temperature=0.0)]
    assert after == _greedy_reference(model, prompts, NEW)[0]
    assert after != before


def test_extension_of_a_kept_sequence_equals_prefilling_the_concatenation(dense):
    model, _ = dense
    engine = SamplingEngine(model, CONFIG)
    fresh = SamplingEngine(model, CONFIG)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0.0)
    prompt, observation = _prompts(2, 40, 70, seed=3)

    async def run():
        first = await engine.submit(prompt, greedy, seq_id="node")
        extended = prompt + first.tokens + observation
        second = await engine.submit(extended, greedy, seq_id="node")
        whole = await fresh.submit(extended, greedy)
        return first, second, whole, extended

    first, second, whole, extended = asyncio.run(run())
    assert second.reused_tokens == len(prompt) + NEW - 1  # the last sampled token was never in the cache
    assert whole.reused_tokens == 0
    assert second.tokens == whole.tokens
    np.testing.assert_allclose(second.logprobs, whole.logprobs, atol=1e-5)
    assert engine.cached_length("node") == len(extended) + NEW - 1


def test_forked_prefixes_share_pages_and_give_identical_results(models):
    model, _ = models  # dense and MoE
    engine = SamplingEngine(model, CONFIG)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0.0)
    prefix, tail_a, tail_b = _prompts(3, 20, 50, seed=5)
    prefix = prefix + prefix  # long enough for several full pages

    async def run():
        done = await engine.submit(prefix, SamplingParams(max_new_tokens=0), seq_id="task")
        assert done.finish_reason == "prefill" and done.tokens == []
        await engine.fork("task", "tree-0")
        await engine.fork("task", "tree-1")
        full_pages = len(prefix) // CONFIG.page_size
        shared = engine.scheduler.alloc.pages("task")[:full_pages]
        assert {tuple(engine.scheduler.alloc.pages(t)[:full_pages]) for t in ("tree-0", "tree-1")} == {tuple(shared)}
        assert all(engine.scheduler.alloc.refcount(p) == 3 for p in shared)
        engine.scheduler.alloc.check()
        a, b = await asyncio.gather(engine.submit(prefix + tail_a, greedy, seq_id="tree-0"),
                                    engine.submit(prefix + tail_b, greedy, seq_id="tree-1"))
        ref = SamplingEngine(model, CONFIG)
        ra, rb = await asyncio.gather(ref.submit(prefix + tail_a, greedy), ref.submit(prefix + tail_b, greedy))
        await engine.release("task")
        assert all(engine.scheduler.alloc.refcount(p) == 2 for p in shared)
        return a, b, ra, rb

    a, b, ra, rb = asyncio.run(run())
    assert a.reused_tokens == b.reused_tokens == len(prefix)
    assert (a.tokens, b.tokens) == (ra.tokens, rb.tokens)
    np.testing.assert_allclose(a.logprobs, ra.logprobs, atol=1e-5)


def test_small_pool_preempts_and_still_gives_the_same_tokens(dense):
    model, _ = dense
    tight = EngineConfig(max_rows=8, page_size=16, num_pages=1 + 3 * 20, max_seq_len=320, decode_steps=8,
                         max_prefill_tokens=1024, min_prefill_bucket=64)
    prompts = _prompts(8, 150, 270, seed=7)
    engine = SamplingEngine(model, tight)
    outs = engine.generate(prompts, max_new_tokens=48, temperature=0.0)  # rows outgrow the pool
    assert engine.stats["preempted_running"] > 0
    ref = SamplingEngine(model, CONFIG).generate(prompts, max_new_tokens=48, temperature=0.0)
    assert [o.tokens for o in outs] == [o.tokens for o in ref]
    engine.scheduler.alloc.check()
    assert engine.scheduler.alloc.free_pages == tight.num_pages - 1


def test_kept_sequences_are_preempted_and_recomputed_when_extended(dense):
    model, _ = dense
    small = EngineConfig(max_rows=4, page_size=16, num_pages=1 + 25, max_seq_len=320, decode_steps=8,
                         max_prefill_tokens=1024, min_prefill_bucket=64)
    engine = SamplingEngine(model, small)
    greedy = SamplingParams(max_new_tokens=4, temperature=0.0)
    prompts = _prompts(3, 180, 200, seed=9)

    async def run():
        first = [await engine.submit(p, greedy, seq_id=i) for i, p in enumerate(prompts)]
        assert engine.stats["preempted_idle"] >= 1  # three 12-page sequences cannot all stay in 25 pages
        again = await engine.submit(prompts[0] + first[0].tokens + [1, 2, 3], greedy, seq_id=0)
        ref = await SamplingEngine(model, CONFIG).submit(prompts[0] + first[0].tokens + [1, 2, 3], greedy)
        return again, ref

    again, ref = asyncio.run(run())
    assert again.reused_tokens == 0 and again.tokens == ref.tokens


def test_stop_sequences_end_generation_and_are_included(dense):
    model, _ = dense
    engine = SamplingEngine(model, CONFIG)
    prompt = _prompts(1, 30, 30, seed=11)[0]
    free = engine.generate([prompt], max_new_tokens=12, temperature=0.0)[0]
    stop_one = (free.tokens[3],)
    stop_two = tuple(free.tokens[6:8])
    out = engine.generate([prompt], max_new_tokens=12, temperature=0.0, stop=[stop_two, stop_one])[0]
    first = free.tokens.index(stop_one[0])
    assert out.finish_reason == "stop" and out.tokens == free.tokens[: first + 1]
    out = engine.generate([prompt], max_new_tokens=12, temperature=0.0, stop=[stop_two])[0]
    assert out.finish_reason == "stop" and tuple(out.tokens[-2:]) == stop_two and len(out.tokens) <= 8


def test_continuous_batching_refills_rows_and_bounds_compilations(dense):
    model, _ = dense
    engine = SamplingEngine(model, dataclasses.replace(CONFIG, max_rows=4))
    rng = np.random.default_rng(0)

    async def run(top_k):
        jobs = [engine.submit(rng.integers(0, 97, int(rng.integers(5, 300))).tolist(),
                              SamplingParams(max_new_tokens=int(rng.integers(1, 20)), top_k=top_k))
                for _ in range(20)]
        return await asyncio.gather(*jobs)

    decode = sampler_lib.decode_reads_pages
    prefill_before, decode_before = sampler_lib.prefill._cache_size(), decode._cache_size()
    outs = asyncio.run(run(0)) + asyncio.run(run(5)) + asyncio.run(run(0))
    assert all(1 <= len(o.tokens) <= 20 for o in outs)
    assert engine.stats["decode_active_rows"] / engine.stats["decode_row_slots"] > 0.6
    # However varied the traffic, compilations are bounded by the buckets: prefill by token bucket
    # (512, 768, ..., 4096: 7) x filtering (2), its page table always full width; decode by table
    # width (5, 6, 7, 8, 10, 12, 14, 16, 20 pages: 9) x filtering.
    assert sampler_lib.prefill._cache_size() - prefill_before <= 7 * 2
    assert 1 <= decode._cache_size() - decode_before <= 9 * 2


def test_decode_row_groups_give_the_same_tokens_and_write_the_same_pages(dense):
    """Two row groups decoded concurrently (rows sorted by length, a context per group) give the
    tokens and log-probs of one group, and write the same keys / values: extending the kept
    sequences afterwards continues exactly as after a one-group decode."""
    model, _ = dense
    prompts = _prompts(n=24, hi=200, seed=5)
    greedy = SamplingParams(max_new_tokens=NEW + 7, temperature=0.0)  # two chunks, the second partial
    results = {}
    for groups in (1, 2):
        engine = SamplingEngine(model, dataclasses.replace(CONFIG, decode_groups=groups))

        async def run(engine=engine):
            first = await asyncio.gather(*(engine.submit(p, greedy, seq_id=i) for i, p in enumerate(prompts)))
            more = [p + f.tokens + [7, 8, 9] for p, f in zip(prompts, first, strict=True)]
            second = await asyncio.gather(*(engine.submit(m, greedy, seq_id=i) for i, m in enumerate(more)))
            return first, second, more

        results[groups] = asyncio.run(run()), engine.stats.copy()
        engine.scheduler.alloc.check()
    (one, stats_one), (two, stats_two) = results[1], results[2]
    for a, b in zip(one[0] + one[1], two[0] + two[1], strict=True):
        assert a.tokens == b.tokens and a.reused_tokens == b.reused_tokens
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    # The extensions read the pages the groups wrote: they equal prefilling the whole sequences.
    fresh = SamplingEngine(model, CONFIG).generate(two[2], max_new_tokens=greedy.max_new_tokens, temperature=0.0)
    assert all(o.reused_tokens > 0 for o in two[1])
    assert [o.tokens for o in two[1]] == [o.tokens for o in fresh]
    assert stats_one["decode_calls"] == stats_one["decode_chunks"]
    assert stats_two["decode_calls"] > stats_two["decode_chunks"]  # 16 rows: two groups of 8 at once


def test_temperature_one_samples_follow_the_model_distribution():
    from flax import nnx

    from rao_jax.models import Qwen3, tiny_config

    model = Qwen3(tiny_config("qwen3", vocab_size=12), rngs=nnx.Rngs(4))
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x * 20.0 if x.ndim == 2 else x, state))  # a peakier distribution
    prompt = [3, 1, 4, 1, 5]
    probs = np.asarray(jax.nn.softmax(model(jnp.asarray([prompt]))[0, -1])).astype(np.float64)
    engine = SamplingEngine(model, EngineConfig(max_rows=64, page_size=8, num_pages=256, max_seq_len=64,
                                                max_prefill_tokens=512, min_prefill_bucket=512, max_top_k=12))
    n = 4000
    draws = [o.tokens[0] for o in engine.generate([prompt] * n, max_new_tokens=1, temperature=1.0)]
    counts = np.bincount(draws, minlength=12)
    keep = probs * n >= 5  # merge rare categories, as the chi-square test requires
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(probs[keep], probs[~keep].sum())
    expected = expected / expected.sum() * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert probs.max() < 0.9  # the test has power only if the distribution is not degenerate

    top3 = set(np.argsort(probs)[-3:].tolist())
    drawn = {o.tokens[0] for o in engine.generate([prompt] * 300, max_new_tokens=1, top_k=3)}
    assert drawn <= top3 and len(drawn) > 1
    order = np.argsort(probs)[::-1]
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.6) + 1)].tolist())
    drawn = {o.tokens[0] for o in engine.generate([prompt] * 300, max_new_tokens=1, top_p=0.6)}
    assert drawn <= nucleus


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The smallest set of most likely tokens whose probabilities reach ``top_p`` (a bool mask)."""
    order = np.argsort(-probs, kind="stable")
    size = int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)
    keep = np.zeros(probs.shape, bool)
    keep[order[:size]] = True
    return keep


def test_behaviour_logprobs_are_those_of_the_tempered_nucleus(dense):
    """At temperature 0.7 and top-p 0.9 every sampled token's log-prob is its log-probability under
    softmax(logits / 0.7) cut to the nucleus and renormalised, recomputed here from the full forward."""
    model, _ = dense
    prompts = _prompts(n=16, hi=120, seed=3)
    engine = SamplingEngine(model, CONFIG)
    outs = engine.generate(prompts, max_new_tokens=NEW, temperature=0.7, top_p=0.9)
    width = 512
    batch = np.zeros((len(prompts), width), np.int32)
    for i, (p, o) in enumerate(zip(prompts, outs, strict=True)):
        batch[i, : len(p) + len(o.tokens)] = p + o.tokens
    logits = np.asarray(_padded_logits(model, jnp.asarray(batch)), np.float64)
    worst, sizes = 0.0, []
    for i, (p, o) in enumerate(zip(prompts, outs, strict=True)):
        for j, (token, lp) in enumerate(zip(o.tokens, o.logprobs, strict=True)):
            scaled = logits[i, len(p) + j - 1] / 0.7
            probs = np.exp(scaled - scaled.max())
            probs /= probs.sum()
            keep = _nucleus(probs, 0.9)
            sizes.append(int(keep.sum()))
            assert keep[token], (i, j)
            worst = max(worst, abs(lp - np.log(probs[token] / probs[keep].sum())))
    assert worst <= 1e-5, worst
    assert min(sizes) < max(sizes)   # nuclei of several sizes were exercised


def test_top_p_samples_the_nucleus_over_a_vocabulary_larger_than_max_top_k():
    from flax import nnx

    from rao_jax.models import Qwen3, tiny_config

    model = Qwen3(tiny_config("qwen3", vocab_size=200), rngs=nnx.Rngs(2))
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x * 8.0 if x.ndim == 2 else x, state))
    prompt = [3, 1, 4, 1, 5]
    probs = np.asarray(jax.nn.softmax(model(jnp.asarray([prompt]))[0, -1])).astype(np.float64)
    keep = _nucleus(probs, 0.9)
    assert keep.sum() > 8            # more tokens than max_top_k below: the nucleus is not cut at 8
    engine = SamplingEngine(model, EngineConfig(max_rows=64, page_size=8, num_pages=256, max_seq_len=64,
                                                max_prefill_tokens=512, min_prefill_bucket=512, max_top_k=8))
    n = 4000
    outs = engine.generate([prompt] * n, max_new_tokens=1, temperature=1.0, top_p=0.9)
    draws = np.array([o.tokens[0] for o in outs])
    assert keep[draws].all()
    target = np.where(keep, probs, 0.0) / probs[keep].sum()
    counts = np.bincount(draws, minlength=len(probs))
    common = target * n >= 5
    observed, expected = counts[common], target[common] * n
    if (keep & ~common).any():   # rare nucleus tokens pooled, as the chi-square test requires
        observed = np.append(observed, counts[keep & ~common].sum())
        expected = np.append(expected, target[keep & ~common].sum() * n)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    lp = {int(t): o.logprobs[0] for t, o in zip(draws, outs, strict=True)}
    for token, value in lp.items():
        assert abs(value - np.log(target[token])) < 1e-4


def test_sampled_decode_in_row_groups_follows_the_model_distribution():
    """Tokens sampled inside decode chunks split into two concurrent row groups: the second token,
    given the most frequent first one, follows the model's distribution, and the two groups draw
    with different keys (identical rows of the two groups do not draw identical tokens)."""
    from flax import nnx

    from rao_jax.models import Qwen3, tiny_config

    model = Qwen3(tiny_config("qwen3", vocab_size=12), rngs=nnx.Rngs(4))
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x * 20.0 if x.ndim == 2 else x, state))
    prompt = [3, 1, 4, 1, 5]
    engine = SamplingEngine(model, EngineConfig(max_rows=64, decode_groups=2, page_size=8, num_pages=512,
                                                max_seq_len=64, decode_steps=4, max_prefill_tokens=1024,
                                                min_prefill_bucket=1024, max_top_k=12))
    outs = engine.generate([prompt] * 2048, max_new_tokens=3, temperature=1.0)
    assert engine.stats["decode_calls"] == 2 * engine.stats["decode_chunks"]
    # Each 64 requests fill rows 0-63 in order, and equal lengths keep that order in the groups:
    # request i and i + 32 of a batch share a slot in the two groups. Where their first tokens
    # agree, the same key would make them draw the same second token every time.
    pairs = [(outs[b + i].tokens, outs[b + 32 + i].tokens) for b in range(0, 2048, 64) for i in range(32)]
    same_first = [(a, b) for a, b in pairs if a[0] == b[0]]
    assert len(same_first) >= 100
    assert np.mean([a[1] == b[1] for a, b in same_first]) < 0.95

    mode = int(np.bincount([o.tokens[0] for o in outs], minlength=12).argmax())
    second = [o.tokens[1] for o in outs if o.tokens[0] == mode]
    probs = np.asarray(jax.nn.softmax(model(jnp.asarray([prompt + [mode]]))[0, -1])).astype(np.float64)
    n = len(second)
    counts = np.bincount(second, minlength=12)
    keep = probs * n >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(probs[keep], probs[~keep].sum())
    assert n >= 300 and keep.sum() >= 2, (n, probs)  # enough draws and categories for the test to have power
    assert stats.chisquare(observed, expected / expected.sum() * n).pvalue > 1e-3


@pytest.mark.parametrize("kwargs, message", [
    (dict(tokens=[1] * 300, max_new_tokens=30), "prompt of 300 tokens \\+ max_new_tokens 30 exceeds max_seq_len 320"),
    (dict(tokens=[]), "the prompt is empty"),
    (dict(tokens=[1, 500]), "outside the vocabulary \\[0, 97\\)"),
    (dict(temperature=-1.0), "temperature must be finite and >= 0"),
    (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
    (dict(top_k=33), "top_k must be an int in \\[0, 32\\]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0"),
    (dict(stop=((1, 2000),)), "holds ids outside the vocabulary"),
])
def test_bad_requests_are_refused_with_a_clear_error(dense, kwargs, message):
    model, _ = dense
    engine = SamplingEngine(model, CONFIG)
    kwargs = dict(kwargs)  # parametrize shares the dict between runs
    tokens = kwargs.pop("tokens", [1, 2, 3])
    params = SamplingParams(**{"max_new_tokens": 4, **kwargs})
    with pytest.raises(ValueError, match=message):
        asyncio.run(engine.submit(tokens, params))


def test_bad_engine_configs_are_refused():
    with pytest.raises(ValueError, match="leaves fewer than the 20 pages one max_seq_len sequence needs"):
        EngineConfig(page_size=16, max_seq_len=320, num_pages=10)
    with pytest.raises(ValueError, match="must be a positive multiple of page_size"):
        EngineConfig(page_size=16, max_seq_len=100)
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        EngineConfig(attn_impl="flash")
    with pytest.raises(ValueError, match="prefill_block .* must be a power of two and at most half"):
        EngineConfig(prefill_block=48)
    with pytest.raises(ValueError, match="prefill_block .* must be a power of two and at most half"):
        EngineConfig(prefill_block=64, min_prefill_bucket=64)
    with pytest.raises(ValueError, match=r"decode_groups \(3\) must be >= 1 and divide max_rows \(64\)"):
        EngineConfig(max_rows=64, decode_groups=3)
    with pytest.raises(ValueError, match="decode_groups > 1 needs attn_impl='reference'"):
        EngineConfig(decode_groups=2, attn_impl="pallas")
    with pytest.raises(ValueError, match="prefill_buckets_per_octave must be 1, 2 or 4"):
        EngineConfig(prefill_buckets_per_octave=3)


@pytest.fixture(scope="module")
def tiny_model():
    from flax import nnx

    from rao_jax.models import Qwen3, tiny_config

    return Qwen3(tiny_config("qwen3"), rngs=nnx.Rngs(0))


def test_a_request_waiting_for_the_next_prefill_holds_no_pages(tiny_model):
    """The prefill token budget is checked before pages are reserved: a request left for the next
    call must not sit on pages nothing can preempt (this pool fails every request otherwise)."""
    engine = SamplingEngine(tiny_model, EngineConfig(max_rows=2, page_size=12, num_pages=22, max_seq_len=252,
                                                     max_prefill_tokens=252))
    out = engine.generate([[1] * 200, [2] * 45], max_new_tokens=8, temperature=0.0)
    assert [len(o.tokens) for o in out] == [8, 8]
    engine.scheduler.alloc.check()
    assert engine.scheduler.alloc.free_pages == 21


def test_a_rejected_batch_leaves_nothing_queued(tiny_model):
    engine = SamplingEngine(tiny_model, EngineConfig(max_rows=2, num_pages=80, max_seq_len=256,
                                                     max_prefill_tokens=256))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[1] * 10, [10 ** 6]], max_new_tokens=4)
    assert not engine.scheduler.waiting and not engine.scheduler.busy
    assert [len(o.tokens) for o in engine.generate([[3] * 10], max_new_tokens=4)] == [4]


def test_abort_and_cancellation_free_the_row_and_the_pages(tiny_model):
    engine = SamplingEngine(tiny_model, EngineConfig(max_rows=1, num_pages=80, max_seq_len=256,
                                                     max_prefill_tokens=256, decode_steps=2))
    free = engine.scheduler.alloc.free_pages

    async def main():
        long = SamplingParams(max_new_tokens=200, temperature=0.0)
        running = asyncio.create_task(engine.submit([1] * 20, long, seq_id="a"))
        queued = asyncio.create_task(engine.submit([2] * 20, long, seq_id="b"))   # one row: it waits
        while engine.stats["decode_chunks"] < 2:
            await asyncio.sleep(0.01)
        assert await engine.abort("b") and await engine.abort("a")
        for task in (running, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not await engine.abort("a")   # nothing left to abort
        # Cancelling the awaiting task aborts too; the engine then serves the next request.
        chunks = engine.stats["decode_chunks"]
        cancelled = asyncio.create_task(engine.submit([3] * 20, long, seq_id="c"))
        while engine.stats["decode_chunks"] < chunks + 2:
            await asyncio.sleep(0.01)
        assert engine.scheduler.rows[0].seq == "c"
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        done = await engine.submit([4] * 20, SamplingParams(max_new_tokens=3, temperature=0.0))
        assert len(done.tokens) == 3

    asyncio.run(main())
    engine.scheduler.alloc.check()
    assert engine.scheduler.alloc.free_pages == free and "c" not in engine.scheduler.alloc
    assert engine.stats["aborted"] == 3
    assert engine.scheduler.rows == [None] and not engine.scheduler.waiting and not engine.scheduler.busy
