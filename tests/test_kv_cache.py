"""The approximate KV caches (Fast-dLLM's prefix and dual cache, plugins ``prefix_cache`` and
``dual_cache``) on tiny real models, and the GPU benchmark's CPU path."""

from __future__ import annotations

import json
import types

import attrs
import pytest
import torch

from dllm_arith.tokenizer import build_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_strategies import decode
from dllm_strategies.decode import MeteredModel, Run, encode_prompts
from dllm_strategies.defaults import full_forward, semi_ar_plan
from dllm_strategies.errors import ModelError, PluginError, SpecError
from dllm_strategies.models.adapter import DiffusionModel
from dllm_strategies.models.families import DREAM, MASKED_LM
from dllm_strategies.strategy import build_strategy
from dllm_strategies.state import DecodeConfig, DecodeState
from dllm_strategies.testing import FakeModel, ScriptedLogits, check_strategy
from dllm_strategies.testing.invariants import check_step

CACHES = ["prefix_cache", "dual_cache"]
# transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name goes in 5.40)
pytestmark = pytest.mark.filterwarnings("error:`past_key_values` is deprecated:FutureWarning")
PROMPTS = [[5, 6, 7, 8, 9, 40, 41], [10, 11, 12], [20, 21, 22, 23, 60]]  # different lengths: left padding


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
def _lively(model: DiffusionModel, std: float = 0.3, seed: int = 0) -> DiffusionModel:
    """Re-draw a random model's matrices with a larger scale, so its predictions depend on the
    input and its confidences vary (a default-initialised random model predicts one token
    everywhere, which would exercise nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.module.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)
    model.module.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def lively():
    from dllm_strategies.models.tiny import tiny_model

    return _lively(tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, dtype=torch.float64, seed=3))


@pytest.fixture(scope="module")
def eager():
    from dllm_strategies.models.tiny import tiny_model

    model = _lively(tiny_model(tokenizer=build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, dtype=torch.float64, seed=4), seed=1)
    model.module.set_attn_implementation("eager")
    return model


@pytest.fixture(scope="module")
def dream_like():
    """A Dream-shaped model: bidirectional Qwen2 with grouped-query attention, logits shifted by one."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         use_sliding_window=False, layer_types=["full_attention"] * 2, is_causal=False,
                         tie_word_embeddings=False)
    torch.manual_seed(5)
    module = Qwen2ForCausalLM(config).to(torch.float64).eval()
    model = DiffusionModel(module=module, tokenizer=None, family=DREAM, mask_id=63, eot_ids=(1,), fill_id=1,
                           vocab_size=64, name="dream-like")
    return _lively(model, seed=2)


class Recorder:
    """A model that records, per call, the input width and rows and whether a cache was read."""

    def __init__(self, model):
        self.model = model
        self.calls: list[dict] = []

    def logits(self, input_ids, attention_mask=None, **kwargs):
        from dllm_kv_cache.fresh_span import FreshSpanCache

        assert "past_key_values" not in kwargs  # deprecated in transformers 5.24 (removed in 5.40): `cache`
        self.calls.append({"rows": input_ids.shape[0], "width": input_ids.shape[1],
                           "reads_cache": isinstance(kwargs.get("cache"), FreshSpanCache),
                           "mask_dim": None if attention_mask is None else attention_mask.dim()})
        return self.model.logits(input_ids, attention_mask=attention_mask, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def _start(model, prompts, *, gen_length=32, block_length=8, steps=None) -> DecodeState:
    ids, mask = encode_prompts(model, prompts)
    config = DecodeConfig(gen_length=gen_length, block_length=block_length, steps=steps, mask_id=model.mask_id,
                          fill_id=model.fill_id, eot_ids=tuple(model.eot_ids))
    return DecodeState.start(ids, mask, config)


def _live_close(cached, reference, state, rows=None) -> None:
    """Cached logits equal the reference's (a full forward's, from column 0) on every live response
    column each row has (of ``rows``, a (B,) bool, when given)."""
    G = state.config.gen_length
    have = cached.reach(G, state.device) & state.live
    if rows is not None:
        have = have & rows[:, None]
    assert cached.values.shape[1] == cached.stop - cached.start
    full = reference.new_zeros(reference.shape[0], G, reference.shape[2])
    full[:, :reference.shape[1]] = reference
    torch.testing.assert_close(cached.widen(cached.values, 0.0, G)[have], full[have], rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------
# Models a cache cannot serve: a clear error when the run starts
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", CACHES)
def test_fake_model_is_refused_when_the_run_starts(cache):
    fake = FakeModel(logits_fn=ScriptedLogits(12), vocab_size=12)
    with pytest.raises(PluginError) as err:
        decode(fake, [[3, 4]], strategy=cache, gen_length=4, block_length=2)
    assert err.value.plugin == cache and err.value.hook == "dllm_start"
    assert "FakeModel" in str(err.value) and "past_key_values" in str(err.value)
    assert not fake.calls  # refused before any forward


@pytest.mark.parametrize("cache", CACHES)
def test_invariant_kit_fake_models_get_the_clear_error(cache):
    assert build_strategy(cache).plugins[cache].supports_fake_models is False  # the kit's suite can skip it
    fake = FakeModel(logits_fn=ScriptedLogits(24), vocab_size=24)
    with pytest.raises(PluginError, match=f"plugin '{cache}'.*FakeModel"):
        check_strategy(f"threshold+{cache}", fake, [[3, 4], [5]], gen_length=4, block_length=2)


def test_masked_lm_causal_and_unsupported_attention_are_refused(tiny):
    from transformers import BertConfig, BertForMaskedLM

    from dllm_kv_cache.support import require_cacheable

    bert = BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    masked = DiffusionModel(module=bert, tokenizer=None, family=MASKED_LM, mask_id=4, eot_ids=(2,), fill_id=2,
                            vocab_size=30, name="tiny-bert")
    with pytest.raises(PluginError, match=r"dual_cache.*'tiny-bert'.*BertForMaskedLM.*past_key_values"):
        decode(masked, [[5, 6]], strategy="dual_cache", gen_length=4, block_length=2)

    class Stub(torch.nn.Module):
        def __init__(self, **config):
            super().__init__()
            self.config = types.SimpleNamespace(**config)
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, past_key_values=None):
            raise AssertionError("never called")

    stub = types.SimpleNamespace(module=Stub(is_causal=True, _attn_implementation="sdpa"), name="causal-stub")
    with pytest.raises(ModelError, match=r"prefix_cache.*causal-stub.*is causal"):
        require_cacheable("prefix_cache", stub)
    stub.module = Stub(is_causal=False, _attn_implementation="flash_attention_2")
    with pytest.raises(ModelError, match=r"'flash_attention_2'.*attn_implementation='sdpa'"):
        require_cacheable("prefix_cache", stub)
    stub.module = Stub(is_causal=False, _attn_implementation="sdpa", layer_types=["sliding_attention"])
    with pytest.raises(ModelError, match=r"sliding-window"):
        require_cacheable("prefix_cache", stub)
    assert require_cacheable("prefix_cache", tiny).shifted is False


def test_the_two_caches_cannot_be_combined():
    with pytest.raises(SpecError, match="'prefix_cache' and 'dual_cache' cannot be combined.*choose one"):
        build_strategy("prefix_cache+dual_cache")


# ------------------------------------------------------------------------------------------
# Exactness: a cache used on the state it was built from gives the uncached logits
# ------------------------------------------------------------------------------------------
@st.composite
def mid_decode_states(draw, vocab: int, mask_id: int, fill_id: int):
    """A state in the middle of decoding: left-padded prompts of different lengths, each row in
    its own block with some of it committed, some rows cut short (end-of-text truncation)."""
    block = draw(st.sampled_from([2, 4, 8]))
    blocks = draw(st.integers(1, 3))
    G, B = block * blocks, draw(st.integers(1, 3))
    token = st.integers(3, vocab - 2).filter(lambda t: t != mask_id)
    prompts = [draw(st.lists(token, min_size=1, max_size=6)) for _ in range(B)]
    width = max(map(len, prompts))
    ids = torch.tensor([[fill_id] * (width - len(p)) + p for p in prompts])
    pmask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    config = DecodeConfig(gen_length=G, block_length=block, mask_id=mask_id, fill_id=fill_id)
    state = DecodeState.start(ids, pmask, config)
    response, live = state.response.clone(), state.live_length.clone()
    for r in range(B):  # building a test input, not a hot path
        b = draw(st.integers(0, blocks - 1))
        live[r] = draw(st.integers(b * block + 1, G))
        end = min(live[r].item(), (b + 1) * block)
        response[r, :b * block] = torch.tensor(draw(st.lists(token, min_size=b * block, max_size=b * block)),
                                               dtype=torch.long)
        for c in range(b * block, end):
            if draw(st.booleans()):
                response[r, c] = draw(token)
        response[r, draw(st.integers(b * block, end - 1))] = mask_id  # the window keeps a masked position
        response[r, live[r]:] = fill_id
    return attrs.evolve(state, response=response, live_length=live)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("which", ["tiny", "eager", "dream_like"])
def test_reuse_on_the_state_it_was_built_from_equals_the_full_forward(cache, which, request):
    """Refresh, then reuse on the same state: the reuse forward feeds only the fresh span yet
    gives the default forward's logits (left padding, rows in different blocks, cut rows, GQA,
    eager attention, Dream's shift)."""
    model = request.getfixturevalue(which)
    strategy = build_strategy(cache)
    plugin = strategy.plugins[cache]

    @settings(max_examples=12, deadline=None, database=None)
    @given(state=mid_decode_states(model.vocab_size, model.mask_id, model.fill_id))
    def check(state):
        plan = semi_ar_plan(state)
        recorder = Recorder(model)
        metered = MeteredModel(recorder)
        plugin.dllm_start(state=state, model=metered)
        reference = full_forward(model, state).values
        refreshed = plugin.dllm_forward(model=metered, state=state, plan=plan)
        _live_close(refreshed, reference, state)
        before = metered.positions
        reused = plugin.dllm_forward(model=metered, state=state, plan=plan)
        _live_close(reused, reference, state)
        assert [c["reads_cache"] for c in recorder.calls] == [False, True]
        # the reuse forward fed the fresh span only, from the earliest window start
        shift = int(model.family.shifted)
        start = int(plan.window_start.min())
        stop = int(torch.minimum(plan.window_end, state.live_length).max()) if cache == "dual_cache" \
            else int(state.live_length.max())
        assert reused.start == start and reused.stop == stop
        assert recorder.calls[1]["width"] == stop - start + shift
        assert metered.positions - before == state.batch_size * (stop - start + shift)

    check()


@pytest.mark.parametrize("cache", CACHES)
def test_cache_follows_rows_that_leave_the_batch(lively, cache):
    state = _start(lively, PROMPTS)
    response = state.response.clone()
    response[0, :8], response[2, :5] = 30, 31  # rows in blocks 1, 0, 0
    state = attrs.evolve(state, response=response)
    plugin = build_strategy(cache).plugins[cache]
    recorder = Recorder(lively)
    metered = MeteredModel(recorder)
    plugin.dllm_start(state=state, model=metered)
    plugin.dllm_forward(model=metered, state=state, plan=semi_ar_plan(state))
    for keep in ([0, 2], [2]):  # row 1 finishes, then row 0
        part = state.take(torch.tensor(keep))
        logits = plugin.dllm_forward(model=metered, state=part, plan=semi_ar_plan(part))
        assert recorder.calls[-1]["reads_cache"] and recorder.calls[-1]["rows"] == len(keep)
        _live_close(logits, full_forward(lively, part).values, part)
    assert plugin.kv.rows == 1 and plugin.snapshot.rows.tolist() == [2]


# ------------------------------------------------------------------------------------------
# Decoding: refresh rules, cost, composition, invariants
# ------------------------------------------------------------------------------------------
@attrs.define
class Drive:
    result: object
    refreshes: int = 0  # refresh forwards
    reuses: int = 0  # reuse forwards
    row_refreshes: int = 0  # rows refreshed, over all refresh forwards
    mixed_steps: int = 0  # steps with both forwards: some rows refreshed, the others kept their cache
    split_steps: int = 0  # steps whose rows were in different blocks
    followed: int = 0  # reuse forwards after rows left the batch
    truncations: int = 0  # steps after which a live length shrank
    reuse_positions: list = attrs.field(factory=list)


def drive(spec, model, prompts, *, gen_length=32, block_length=8, steps=None) -> Drive:
    """Decode step by step, checking every step: the invariant kit's per-step promises; per row, a
    refresh (a full forward over its live width, whose logits equal the uncached forward's)
    exactly when the row has no cache yet, its window moved or its live length shrank, otherwise a
    reuse forward over fewer positions; the rows of each kind share one forward, each row is
    charged one forward per step, and each row's logits cover exactly its own columns."""
    strategy = build_strategy(spec)
    cache = "dual_cache" if "dual_cache" in strategy.plugins else "prefix_cache"
    shift = int(model.family.shifted)
    recorder = Recorder(model)
    state = _start(recorder, prompts, gen_length=gen_length, block_length=block_length, steps=steps)
    prompt = state.prompt.clone()
    run = Run.begin(strategy, recorder, state)
    out = Drive(result=None)
    built: dict[int, tuple] = {}  # batch row -> (live length, window start, window end) its cache was built for
    cached_rows = len(prompts)
    while not run.done:
        calls, positions = len(recorder.calls), run.metered.positions
        record = run.step()
        before, plan = record.before, record.plan
        check_step(strategy, record, prompt)
        rows, G = before.rows.tolist(), gen_length
        live, start = before.live_length, plan.window_start
        end = torch.minimum(plan.window_end, live) if cache == "dual_cache" else live
        ends = plan.window_end.tolist() if cache == "dual_cache" else [None] * len(rows)  # the prefix cache feeds past it
        now = list(zip(live.tolist(), start.tolist(), ends))
        stale = torch.tensor([built.get(r) != now[i] for i, r in enumerate(rows)])
        new = recorder.calls[calls:]
        assert [c["reads_cache"] for c in new] == [False] * bool(stale.any()) + [True] * bool((~stale).any()), \
            f"step {before.step}: refresh rows {stale.tolist()}"
        assert torch.equal(record.after.nfe - before.nfe, torch.ones_like(before.nfe))  # one forward per row
        cost = run.metered.positions - positions
        out.split_steps += int(start.unique().numel() > 1)
        out.truncations += int(bool((record.after.live_length < live).any()))
        out.mixed_steps += int(len(new) == 2)
        # each row has exactly its own columns: its live response when refreshed, else its window
        # up to its fresh stop (the live length, or the window end for the dual cache)
        cols = torch.arange(G)[None, :]
        own = torch.where(stale[:, None], cols < live[:, None], (cols >= start[:, None]) & (cols < end[:, None]))
        logits = record.proposal.logits
        assert torch.equal(logits.reach(G, before.device), own)
        if bool(stale.any()):
            call = new[0]
            assert call["rows"] == int(stale.sum())
            refresh_cost = int(before.prompt_mask[stale].sum() + live[stale].sum())  # their full live width
            cost -= refresh_cost
            _live_close(logits, full_forward(model, before).values, before, rows=stale)
            built.update({r: now[i] for i, r in enumerate(rows) if stale[i]})
            out.refreshes += 1
            out.row_refreshes += int(stale.sum())
        if bool((~stale).any()):
            call, fresh = new[-1], ~stale
            assert call["mask_dim"] == 4 and call["rows"] == int(fresh.sum()) and cost == call["rows"] * call["width"]
            assert call["width"] == int(end[fresh].max() - start[fresh].min()) + shift  # the union of their spans
            # fewer positions than a full forward computes for these rows; and, while no row is cut
            # short, fewer than the core counts for one (its 2-D count leaves padding out)
            assert cost < call["rows"] * (before.prompt.shape[1] + int(live.max()))
            if bool((live == gen_length).all()):
                assert cost < int(before.prompt_mask[fresh].sum() + live[fresh].sum())
            out.reuses += 1
            out.followed += int(len(rows) < cached_rows)
            out.reuse_positions.append(call["width"])
        cached_rows = len(rows)
    out.result = run.result()
    assert not bool((out.result.tokens == model.mask_id).any())
    assert out.result.forwards == len(recorder.calls) == out.refreshes + out.reuses
    return out


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", ["", "threshold(tau=0.3)", "entropy_threshold(tau=3.0)", "topk(k=3)"])
def test_refresh_at_every_block_boundary_composed_with_remasking_rules(lively, cache, rule):
    spec = f"{rule}+{cache}" if rule else cache
    out = drive(spec, lively, PROMPTS)
    assert out.reuses > out.refreshes >= 4  # at least one refresh per block of 8 in 32
    assert out.row_refreshes >= 4 * len(PROMPTS)  # every row refreshes at each of its blocks
    if rule.startswith("threshold"):  # rows drift apart: different blocks, different finishing steps
        assert out.split_steps > 0 and out.followed > 0 and out.mixed_steps > 0
        assert len(set(out.result.steps.tolist())) > 1


@pytest.mark.parametrize("cache", CACHES)
def test_eot_truncation_invalidates_the_cache(lively, cache):
    out = drive(f"eot+{cache}", lively, PROMPTS)
    assert out.truncations > 0  # drive asserted a refresh over the new live width after each
    assert bool((out.result.tokens == lively.fill_id).any())


TRUNCATOR = '''
import torch
from dllm_strategies import hookimpl
from dllm_strategies.plugin import Plugin


class CutOnce(Plugin):
    """Test plugin: after step 2, cut even batch rows to 20 response positions."""

    @hookimpl
    def dllm_truncate(self, state, proposal):
        if state.step != 2:
            return None
        return torch.where(state.rows % 2 == 0, state.live_length.clamp(max=20), state.live_length)
'''


@pytest.mark.parametrize("cache", CACHES)
def test_a_truncating_plugin_from_another_distribution_invalidates_the_cache(lively, cache, make_distribution):
    make_distribution("dllm-test-cut", {"dllm_test_cut.py": TRUNCATOR}, {"cut_once": "dllm_test_cut:CutOnce"})
    out = drive(f"cut_once+{cache}", lively, PROMPTS)
    assert out.truncations == 1
    tokens = out.result.tokens
    assert bool((tokens[0::2, 20:] == lively.fill_id).all()) and out.result.steps.tolist()[0] < 32


def test_positions_per_step_fall(lively):
    runs = {spec: drive(spec, lively, PROMPTS) for spec in CACHES}
    plain = decode(lively, PROMPTS, gen_length=32, block_length=8)
    prefix, dual = runs["prefix_cache"], runs["dual_cache"]
    assert plain.forwards == prefix.result.forwards == dual.result.forwards == 32
    assert dual.result.positions < prefix.result.positions < plain.positions
    # inside a block the dual cache feeds the block, the prefix cache the block and all after it
    assert set(dual.reuse_positions) == {8}
    assert set(prefix.reuse_positions) == {32, 24, 16, 8}


@pytest.mark.parametrize("cache", CACHES)
def test_one_step_per_block_never_reuses_and_equals_the_uncached_decode(lively, cache):
    """With one step per block every step starts a block, so every forward is a refresh: the
    output must be the uncached decode's, token for token, at the same cost."""
    cached = decode(lively, PROMPTS, strategy=cache, gen_length=32, block_length=4, steps=8)
    plain = decode(lively, PROMPTS, gen_length=32, block_length=4, steps=8)
    assert torch.equal(cached.tokens, plain.tokens)
    assert (cached.forwards, cached.positions) == (plain.forwards, plain.positions)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", ["", "threshold(tau=0.3)+eot"])
def test_every_row_decodes_as_alone_in_any_batch_and_order(lively, cache, rule):
    """Each row's cache is its own: in lockstep (LLaDA's schedule) and with rows that drift into
    different blocks and are cut at different steps, every row of a batch, in either order,
    decodes as it decodes alone: the same tokens, steps and NFE."""
    spec = f"{rule}+{cache}" if rule else cache
    shape = {"gen_length": 16, "block_length": 8}
    batch = decode(lively, PROMPTS, strategy=spec, **shape)
    backwards = decode(lively, PROMPTS[::-1], strategy=spec, **shape)
    for i, prompt in enumerate(PROMPTS):
        alone = decode(lively, [prompt], strategy=spec, **shape)
        j = len(PROMPTS) - 1 - i
        for other, row in ((batch, i), (backwards, j)):
            assert torch.equal(other.tokens[row], alone.tokens[0])
            assert (int(other.steps[row]), int(other.nfe[row])) == (int(alone.steps[0]), int(alone.nfe[0]))
    if rule:  # the rows drifted: some steps refreshed some rows and reused the others' caches
        assert batch.forwards > int(batch.steps.max())


@pytest.mark.parametrize("cache", CACHES)
def test_dream_like_shifted_model_decodes_with_the_cache(dream_like, cache):
    out = drive(f"threshold(tau=0.3)+{cache}", dream_like, [[5, 6, 7], [9, 10]], gen_length=16, block_length=4)
    assert out.reuses > 0 and out.refreshes >= 4


# ------------------------------------------------------------------------------------------
# The GPU benchmark, tiny on CPU
# ------------------------------------------------------------------------------------------
def test_gpu_bench_runs_tiny_on_cpu(tmp_path):
    from dllm_harness import bench_gpu

    code = bench_gpu.main(["--device", "cpu", "--size", "tiny", "--output", str(tmp_path), "--gen-lengths", "16",
                           "--batches", "2", "--block-length", "8", "--prompt-length", "8", "--repeats", "1",
                           "--with", "eot", "--overhead-repeats", "1"])
    assert code == 0
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    rows = report["runs"]
    specs = {r["strategy"] for r in rows}
    assert {"baseline", "baseline+prefix_cache", "baseline+dual_cache", "threshold(tau=0.9)",
            "entropy_threshold(tau=0.5)+dual_cache", "threshold(tau=0.9)+eot+prefix_cache"} <= specs
    assert {(r["gen_length"], r["batch"]) for r in rows} == {(16, 2)} and len(rows) == 18
    by = {r["strategy"]: r for r in rows}
    base, prefix, dual = (by[s] for s in ("baseline", "baseline+prefix_cache", "baseline+dual_cache"))
    assert base["nfe"] == prefix["nfe"] == dual["nfe"] == 16  # one token per step: NFE = gen length
    assert dual["positions"] < prefix["positions"] < base["positions"]
    assert all(r["tokens_per_second"] > 0 and r["seconds"] > 0 for r in rows)
    assert base["speedup"] == 1.0
    overhead = report["overhead"]
    assert overhead and all(o["identical_tokens"] for o in overhead)
    table = (tmp_path / "bench_gpu.md").read_text()
    assert "| baseline+dual_cache |" in table and "tokens/s" in table and "overhead" in table
