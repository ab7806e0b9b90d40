"""WINO's model input: the sequence plus a "shadow" copy of the current window, all masks.

Layout of one row (T = P + width + S columns)::

    [ prompt (P) | response (width live columns) | shadow (S = widest window) ]

- Shadow position j stands for response column ``c_j = window_start + j``: it carries the mask
  token and ``c_j``'s position id, so it re-predicts ``c_j``.
- Main positions see the main sequence as in a plain forward (padding and cut positions
  hidden) and never the shadow, so their logits equal a plain forward's.
- Shadow position j sees the whole visible main sequence except its own counterpart ``c_j``,
  plus the other shadow positions: a leave-one-out re-prediction of the committed token.
- Shadow positions past a row's window end (rows with narrower windows) or on cut columns
  are hidden from every query; their outputs are ignored.

The 4-D mask is additive (0 where a query may attend, the dtype's minimum elsewhere), shape
(B, 1, T, T), in the model's dtype: transformers 5 passes a 4-D mask through unchanged and both
its ``sdpa`` and ``eager`` attention add it to the scores (``sdpa`` also takes a bool mask,
``eager`` does not).  Attention kernels that take no dense mask (flash attention, flex
attention) cannot run WINO.
"""

from __future__ import annotations

import attrs
import torch

from dllm_strategies.state import DecodeState, Plan


@attrs.frozen
class ShadowInputs:
    """What :func:`shadow_inputs` builds.

    Attributes:
        ids: (B, T) input ids.
        attention: (B, 1, T, T) additive attention mask.
        positions: (B, T) position ids.
        width: live response columns in the main sequence.
        columns: (B, S) the response column each shadow position re-predicts.
        valid: (B, S) bool, shadow positions inside their row's window and live.
    """

    ids: torch.Tensor = attrs.field(eq=False)
    attention: torch.Tensor = attrs.field(eq=False)
    positions: torch.Tensor = attrs.field(eq=False)
    width: int
    columns: torch.Tensor = attrs.field(eq=False)
    valid: torch.Tensor = attrs.field(eq=False)


def allowed_pairs(visible: torch.Tensor, counterpart: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool, query x key: who may attend to whom.

    :param visible: (B, N) bool, main positions any query may see (N = prompt + width).
    :param counterpart: (B, S) long, the main index each shadow position must not see.
    :param valid: (B, S) bool, shadow positions that exist.
    """
    B, N = visible.shape
    S = counterpart.shape[1]
    T = N + S
    keys = torch.cat([visible, valid], 1)  # (B, T)
    allowed = keys[:, None, :].expand(B, T, T).clone()
    allowed[:, :N, N:] = False  # main never sees the shadow
    own = torch.arange(T, device=visible.device)[None, None, :] == counterpart[:, :, None]  # (B, S, T)
    allowed[:, N:, :] &= ~(own & valid[:, :, None])
    return allowed


def shadow_inputs(state: DecodeState, plan: Plan, dtype: torch.dtype) -> ShadowInputs:
    """The input of WINO's forward for the live rows (see the module docstring)."""
    config = state.config
    width = int(state.live_length.max())
    ids, visible = state.sequence()
    P = state.prompt.shape[1]
    ids, visible = ids[:, :P + width], visible[:, :P + width]
    main_positions = (visible.long().cumsum(-1) - 1).clamp(min=0)

    span = int((plan.window_end - plan.window_start).max())
    columns = plan.window_start[:, None] + torch.arange(span, device=state.device)[None, :]
    valid = (columns < plan.window_end[:, None]) & (columns < state.live_length[:, None])
    counterpart = P + columns.clamp(max=width - 1)
    shadow_positions = main_positions.gather(1, counterpart)

    all_ids = torch.cat([ids, torch.full_like(columns, config.mask_id)], 1)
    positions = torch.cat([main_positions, shadow_positions], 1)
    allowed = allowed_pairs(visible, counterpart, valid)
    attention = torch.zeros(allowed.shape, dtype=dtype, device=state.device)
    attention = attention.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return ShadowInputs(ids=all_ids, attention=attention, positions=positions, width=width, columns=columns,
                        valid=valid)
