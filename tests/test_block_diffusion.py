"""Masked block diffusion (block-causal attention, exact cache), the block loop and the loaders
of the block-diffusion families."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

from dllm_strategies import ModelError, Plugin, decode, hookimpl, load_model
from dllm_strategies.defaults import model_inputs
from dllm_strategies.discovery import strategy_plugins
from dllm_strategies.models.block_causal import tiny_block_causal
from dllm_strategies.models.diffusion_gemma import tiny_diffusion_gemma
from dllm_strategies.testing import check_strategy

WORDS = ["Tom has 3 apples", "hi", "What is two plus two", "abc"]


@pytest.fixture(scope="module", params=[False, True], ids=["sdar", "shifted"])
def bc(request):
    """A tiny block-causal model in float64 (exact comparisons), as SDAR (position i scores i) or
    with Fast-dLLM v2's token shift."""
    return tiny_block_causal(shifted=request.param, dtype=torch.float64, seed=2)


def prompts(model, words=WORDS):
    return [model.tokenizer(w)["input_ids"] for w in words]


class ExactAgainstUncached(Plugin):
    """A forward that runs the model's exact cache and checks its logits against the uncached
    block-causal forward over the whole sequence, on every column the cache covers."""

    name = "exact_against_uncached"
    windows: list[torch.Tensor] = []  # every step's window starts (a run builds its own instance)

    @hookimpl
    def dllm_start(self, state, model) -> None:
        self.cache = model.exact_cache(state)

    @hookimpl
    def dllm_forward(self, model, state, plan):
        logits = self.cache.logits(model, state, plan)
        G = state.config.gen_length
        ids, attention, _ = model_inputs(state, G)
        attention = torch.ones_like(ids) if attention is None else attention
        full = model.model.logits(ids, attention_mask=attention, logits_to_keep=G)
        reach = logits.reach(G, state.device)
        assert bool(reach.any(1).all())
        gap = (logits.widen(logits.values, 0.0, G) - full).abs().amax(-1).masked_fill(~reach, 0.0)
        assert float(gap.max()) < 1e-9, f"step {state.step}: cached logits differ by {float(gap.max())}"
        ExactAgainstUncached.windows.append(plan.window_start.clone())
        return logits


@pytest.mark.parametrize("spec", [None, "sub_blocks(size=2)+threshold(tau=0.2)",
                                  pytest.param("threshold(tau=0.2)", marks=pytest.mark.slow),
                                  pytest.param("dream_schedule+margin", marks=pytest.mark.slow)])
def test_exact_cache_equals_the_uncached_block_causal_forward_at_every_step(bc, spec):
    ExactAgainstUncached.windows = []
    result = decode(bc, prompts(bc), strategy=[ExactAgainstUncached, *([spec] if spec else [])], gen_length=12,
                    seed=0)
    windows = ExactAgainstUncached.windows
    assert len(windows) == result.forwards and result.encoder_forwards > 0
    if spec is None or "dream_schedule" not in spec:  # windows on the model's (per-row) blocks
        assert any(bool((w != w[0]).any()) for w in windows), "rows of the batch must be in different blocks"


@pytest.mark.parametrize("spec", [None, "confidence_dynamic(tau=0.3)",
                                  *(pytest.param(s, marks=pytest.mark.slow) for s in (
                                      "threshold(tau=0.3)", "eb_sampler(gamma=1.0)",
                                      "sub_blocks(size=2)+threshold(tau=0.3)", "klass(conf=0.1,kl=10.0)+eot"))])
def test_a_row_decodes_in_a_batch_as_alone(bc, spec):
    """Each row reads only its own cache: a batch's rows decode as they do alone (float64)."""
    batch = decode(bc, prompts(bc), strategy=spec, gen_length=12, seed=0)
    for i, prompt in enumerate(prompts(bc)):
        alone = decode(bc, [prompt], strategy=spec, gen_length=12, seed=0)
        assert torch.equal(alone.tokens[0], batch.tokens[i])
        assert int(alone.steps[0]) == int(batch.steps[i]) and int(alone.nfe[0]) == int(batch.nfe[i])


FIRST_PARTY_MASKED = sorted(name for name, (info, cls) in strategy_plugins().items()
                            if info.distribution == "dllm-strategies" and "absorbing" in getattr(cls, "processes", ())
                            and name not in ("prefix_cache", "dual_cache", "learned_filter"))
KIT_SPECS = {"egp_oracle": "egp_oracle(reference=given)"}


@pytest.mark.slow
@pytest.mark.parametrize("name", FIRST_PARTY_MASKED)
def test_every_first_party_masked_strategy_decodes_inside_blocks(name):
    """Each keeps the decoder's promises (the invariant kit, batch comparison included) on a
    block-causal model with the exact cache, rows of different prompt lengths."""
    model = tiny_block_causal(dtype=torch.float64, seed=2)
    words = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14]]
    reference = torch.randint(2, 24, (3, 8), generator=torch.Generator().manual_seed(0))
    check_strategy(KIT_SPECS.get(name, name), model, words, gen_length=8, block_length=4, steps=8, seed=1,
                   reference=reference)


@pytest.mark.slow
def test_the_learned_filter_runs_on_blocks_of_its_width():
    model = tiny_block_causal(block_length=32, dtype=torch.float64, seed=2)
    result = decode(model, [[5, 6, 7], [8]], strategy="learned_filter", gen_length=32, seed=0)
    assert result.steps.max() <= 32


@pytest.mark.parametrize("cache", ["prefix_cache", "dual_cache"])
def test_approximate_caches_are_refused_on_exact_cache_models(cache):
    model = tiny_block_causal(seed=2)
    with pytest.raises(Exception, match="keeps an exact cache of its own"):
        decode(model, [[5, 6]], strategy=cache, gen_length=8)


def test_a_row_ends_at_its_first_decided_end_of_text():
    """Fast-dLLM v2's and LLaDA 2's early stop: once everything before an end-of-text token is
    decided, the row is over: the rest is fill, and it takes no more steps."""
    model = tiny_block_causal(seed=2)
    eot = model.eot_ids[0]

    class EndsEarly(Plugin):
        name = "ends_early"

        @hookimpl
        def dllm_sample(self, state, logits):
            tokens = logits.values.argmax(-1)
            column = logits.start + torch.arange(tokens.shape[1])
            return torch.where((column == 5) & (state.rows[:, None] == 0), eot, tokens)

    result = decode(model, [[5, 6, 7], [8, 9]], strategy=[EndsEarly()], gen_length=16, seed=0)
    assert int(result.tokens[0, 5]) == eot and bool((result.tokens[0, 6:] == model.fill_id).all())
    assert int(result.steps[0]) < int(result.steps[1]) and int(result.steps[1]) == 16


def _save_qwen(tmp_path, model, model_type: str, extra: dict) -> str:
    directory = tmp_path / model_type
    model.module.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type=model_type, architectures=[f"{model_type}ForCausalLM"], **extra)
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


@pytest.mark.parametrize(("model_type", "extra", "shifted"), [("sdar", {}, False),
                                                             ("Fast_dLLM_Qwen", {"bd_size": 4}, True)])
def test_block_causal_checkpoints_load_natively(tmp_path, model_type, extra, shifted):
    """SDAR (a Qwen3) and Fast-dLLM v2 (a Qwen2.5) layouts load onto transformers' own classes:
    the same logits as the module they were saved from, under the block-causal mask."""
    original = tiny_block_causal(shifted=shifted, seed=4)
    loaded = load_model(_save_qwen(tmp_path, original, model_type, extra), device="cpu", dtype="float32",
                        mask_id=original.mask_id)
    assert loaded.family.name == ("fast_dllm_v2" if shifted else "sdar") and loaded.block_length == 4
    assert loaded.shifted == shifted and type(loaded.module) is type(original.module)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    assert torch.allclose(loaded.logits(ids), original.logits(ids), atol=1e-5)


def test_diffusion_gemma_checkpoints_load_through_transformers_own_class(tmp_path):
    original = tiny_diffusion_gemma(seed=1, sharpness=30.0)
    original.module.save_pretrained(tmp_path / "dg")
    original.tokenizer.save_pretrained(tmp_path / "dg")
    (tmp_path / "dg" / "generation_config.json").write_text(json.dumps(
        {"max_denoising_steps": 7, "sampler_config": {"entropy_bound": 0.2, "_cls_name": "EntropyBoundSamplerConfig"},
         "eos_token_id": list(original.eot_ids), "pad_token_id": original.fill_id}))
    loaded = load_model(str(tmp_path / "dg"), device="cpu", dtype="float32")
    assert type(loaded.module).__name__ == "DiffusionGemmaForBlockDiffusion"
    assert loaded.steps_per_block == 7 and "entropy_bound(bound=0.2)" in loaded.recommended_strategy
    assert loaded.block_length == original.block_length and loaded.eot_ids == original.eot_ids
    ids = torch.tensor([[5, 6, 7] + [9] * original.block_length])
    assert torch.allclose(loaded.logits(ids), original.logits(ids), atol=1e-5)


def test_llada2_moe_is_refused_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada2_moe"}))
    with pytest.raises(ModelError, match="BailingMoeV2"):
        load_model(str(tmp_path), device="cpu")


def test_the_block_benchmark_runs_at_cpu_size(tmp_path):
    """The GPU benchmark's script at its CPU size: DiffusionGemma beside generate() (same tokens,
    NFE = decoder passes) and the block-causal exact cache beside the uncached forward."""
    from dllm_harness import bench_block

    code = bench_block.main(["--device", "cpu", "--size", "tiny", "--batches", "1", "2", "--canvases", "1",
                             "--repeats", "1", "--denoising-steps", "4", "--block-strategies", "threshold(tau=0.9)",
                             "--output", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench_block.json").read_text())
    assert [r["same_tokens"] and r["same_nfe"] for r in report["diffusion_gemma"]] == [True, True]
    costs = [(r["generate_loop_ms_per_pass"], r["ours_loop_ms_per_pass"]) for r in report["diffusion_gemma"]]
    assert min(costs[0]) > 0 and costs[1] == (None, None)  # the replayed loops: batch 1 only
    assert len(report["block_causal"]) == 4 and all(r["same_tokens"] for r in report["block_causal"])
    assert "ours / generate" in (tmp_path / "bench_block.md").read_text()


def test_the_bench_reports_a_block_models_encoder_passes_apart_from_nfe():
    """The bench runs a block-diffusion model unchanged and reports its cache writes (encoder
    passes) in their own column, never inside NFE; a table of masked models keeps its columns."""
    from dllm_harness import bench, matrix, report
    from dllm_strategies import discovery

    model = tiny_block_causal(dtype=torch.float64, seed=2)
    problems = discovery.task("arith").test_problems()[:2]
    entries = matrix.expand([matrix.Entry(spec="threshold(tau=0.9)")], [8], block_length=4)
    entry = next(e for e in entries if not e.baseline)
    result = bench.run_entry(model, entry, problems, batch_size=2, seed=0, chat=False, example=0, progress=False)
    direct = decode(model, [p.question for p in problems], strategy="threshold(tau=0.9)", gen_length=8,
                    block_length=4)
    assert direct.encoder_forwards > 0
    assert [r.encoder_forwards for r in result.records] == [direct.encoder_forwards] * 2
    assert [r.nfe for r in result.records] == direct.nfe.tolist()
    summary = result.summary()
    assert summary["mean_encoder_forwards"] == direct.encoder_forwards
    meta = {"problem_set": "x", "seed": 0, "batch_size": 2, "torch_threads": 1}
    header, _, row = report.markdown([result], [], meta).splitlines()[2:5]
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert columns[6:8] == ["mean NFE", "encoder passes"]
    assert cells[7] == f"{float(direct.encoder_forwards):.1f}"
    masked = attrs.evolve(result, records=[attrs.evolve(r, encoder_forwards=0) for r in result.records])
    assert "encoder passes" not in report.markdown([masked], [], meta)


def test_generate_and_the_lm_eval_model_run_block_models_with_their_own_decoding(tmp_path, capsys):
    """The CLI and the lm-eval model need nothing new for these families: a saved DiffusionGemma or
    SDAR checkpoint decodes with its own strategy and block when none is given, and both report its
    encoder passes apart from NFE."""
    lm_eval_model = pytest.importorskip("dllm_harness.lm_eval_model")
    from lm_eval.api.instance import Instance

    from dllm_strategies.cli import main

    dg = tiny_diffusion_gemma(seed=1, sharpness=30.0)
    dg.module.save_pretrained(tmp_path / "dg")
    dg.tokenizer.save_pretrained(tmp_path / "dg")
    sdar = _save_qwen(tmp_path, tiny_block_causal(seed=4), "sdar", {})
    for path, gen in ((str(tmp_path / "dg"), 2 * dg.block_length), (sdar, 8)):
        assert main(["generate", "--model", path, "--gen-length", str(gen), "--json", "--quiet", "--raw",
                     "Tom has 3 apples", "hi"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == 2 and all(r["nfe"] > 0 and r["encoder_forwards"] > 0 for r in rows)
        lm = lm_eval_model.DllmLM(pretrained=path, gen_length=gen, batch_size=2, progress=False)
        requests = [Instance(request_type="generate_until", doc={}, arguments=(text, {"until": []}), idx=0,
                             metadata=("t", doc, 1)) for doc, text in enumerate(["Tom has 3 apples", "hi"])]
        assert len(lm.generate_until(requests)) == 2
        summary = lm.get_model_info()["dllm"]["costs"]["generate_until"]["all"]
        assert summary["encoder_forwards"] > 0 and summary["nfe"] > 0
