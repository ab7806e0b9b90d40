"""Learn2PD's Extremely Greedy Parallel oracle (hook ``dllm_remask``)."""

from __future__ import annotations

from typing import Literal

import attrs

from dllm_strategies import hookimpl
from dllm_strategies.decode import MeteredModel
from dllm_strategies.errors import ConfigError
from dllm_strategies.registry import Plugin
from dllm_strategies.state import Commit

from dllm_learn2pd.reference import REFERENCES, self_reference


class EgpOracle(Plugin):
    """Extremely Greedy Parallel (EGP) decoding, the oracle of Learn2PD
    (Bao et al., "Learning to Parallel", arXiv 2509.25188).

    At every step, commit every masked position of the open window whose candidate equals the
    reference answer.  The authors copy the reference into the block on a *stall*: a step whose
    block argmax is identical to the previous step's.  Because every match is committed at once,
    an identical argmax means the step matches nothing; and a step that matches nothing leaves
    the input unchanged, so the forward after it is such a stall.  This plugin therefore copies
    the reference into the window's masked positions at the step that matches nothing: the same
    tokens as the authors' loop, with at most one forward fewer per stall (the one that would only
    repeat the previous forward).  Every committed token equals the reference, the core never has
    to force progress, and with ``reference="self"`` the output is the reference.  Greedy, as in
    the paper: with a sampler a step that matches nothing copies all the same.

    The reference (PAPERS.md) is by default the model's own standard decode of the same prompt
    (LLaDA low-confidence, one token per step, greedy, same generation and block length),
    computed once per prompt with the *unmetered* model (its forwards are not this run's cost)
    and cached; ``reference="given"`` uses ``decode(..., reference=...)`` (e.g. a gold answer).
    """

    @attrs.frozen
    class Options:
        """Attributes:
            reference: ``"self"`` (the model's own 1-token-per-step decode) or ``"given"``
                (``DecodeState.reference``, passed as ``decode(..., reference=...)``).
            cache: keep self-references across runs (per model and prompt).
        """

        reference: Literal["self", "given"] = attrs.field(
            default="self", validator=attrs.validators.in_(("self", "given")))
        cache: bool = True

    @hookimpl
    def dllm_start(self, state, model) -> None:
        config = state.config
        if self.options.reference == "given":
            if state.reference is None:
                raise ConfigError("egp_oracle(reference=given) needs a reference response: pass "
                                  "decode(..., reference=<(batch, gen_length) token ids>), or use "
                                  "egp_oracle(reference=self) for the model's own decode")
            reference = state.reference
        else:
            if state.reference is not None:
                raise ConfigError("a reference was passed to decode() but egp_oracle(reference=self) computes its "
                                  "own; use egp_oracle(reference=given) to decode against the one you pass")
            raw = model.model if isinstance(model, MeteredModel) else model
            compute = REFERENCES.references if self.options.cache else self_reference
            reference = compute(raw, state.prompt, state.prompt_mask, config)
        if bool((reference == config.mask_id).any()):
            row, col = (reference == config.mask_id).nonzero()[0].tolist()
            raise ConfigError(f"the oracle's reference holds the mask token (id {config.mask_id}) at row {row}, "
                              f"response position {col}; a reference must be a complete response")
        self.reference = reference.to(state.device)

    @hookimpl
    def dllm_remask(self, state, proposal, plan) -> Commit:
        reference = self.reference.index_select(0, state.rows)
        window = plan.window(state)
        match = window & (proposal.tokens == reference)
        stalled = ~match.any(1, keepdim=True)
        return Commit(mask=match | (window & stalled), tokens=reference)
