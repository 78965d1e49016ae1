"""What a sampling run computes from its conditions, computed once per distinct condition instead of at every step.

A sampler calls the DiT at every step with the same conditions (in ComfyUI: the tags' UMT5 states, the lyric token
ids and lyrics_strength, as cond/uncond rows repeated over the latent batch). `encode_condition` (the speaker, genre
and lyric encoders; the 6-block Conformer is the costly part) and every block's cross-attention keys and values
depend on those alone. `ConditionCache` computes them once per distinct row of a run and serves them at every step.

Rows are matched by value (`torch.equal`), not by identity: ComfyUI concatenates fresh tensors at every step. A row
is computed in a batch of the run's new rows instead of the step's batch, which may change float rounding in the
last bits only (the tests bound it); the uncached path (`ACEStepTransformer.forward`) stays as it was.

A cache belongs to one sampling run: the caller makes one when a run starts and drops it when the run ends, and the
model's weights must not change in between.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Row:
    text_hidden: torch.Tensor  # [N, text_dim]
    lyric_ids: torch.Tensor  # [L]
    lyrics_strength: float
    cond: torch.Tensor = None  # [S, hidden]
    kv: list = None  # per block (k, v), each [H, S, head_dim]

    def matches(self, text_hidden: torch.Tensor, lyric_ids: torch.Tensor, lyrics_strength: float) -> bool:
        return (self.lyrics_strength == lyrics_strength and self.text_hidden.shape == text_hidden.shape
                and self.lyric_ids.shape == lyric_ids.shape and torch.equal(self.text_hidden, text_hidden)
                and torch.equal(self.lyric_ids, lyric_ids))


class _StackedKV:
    """The blocks' (k, v) for a step's batch, stacked from the cached rows one block at a time (so that only one
    block's batch is alive at once)."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __getitem__(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.stack([r.kv[block][0] for r in self.rows]), torch.stack([r.kv[block][1] for r in self.rows]))


class ConditionCache:
    """`encode_condition` outputs and cross-attention keys/values of one sampling run, per distinct condition row."""

    def __init__(self):
        self._rows: list[_Row] = []

    def lookup(self, model, text_hidden: torch.Tensor, lyric_ids: torch.Tensor, lyrics_strength: float = 1.0,
               transformer_options: dict | None = None) -> tuple[torch.Tensor, _StackedKV]:
        """(cond [B, S, hidden], per-block keys/values) for a step's text_hidden [B, N, text_dim], lyric_ids [B, L]
        and (one, as ComfyUI sends) lyrics_strength, to pass to `model.decode(x, t, cond, cross_kv=...)`."""
        rows, new = [], []
        for b in range(text_hidden.shape[0]):
            row = next((r for r in self._rows if r.matches(text_hidden[b], lyric_ids[b], lyrics_strength)), None)
            if row is None:
                row = _Row(text_hidden[b].clone(), lyric_ids[b].clone(), lyrics_strength)
                self._rows.append(row)
                new.append(row)
            rows.append(row)
        if new:
            cond, _ = model.encode_condition(torch.stack([r.text_hidden for r in new]),
                                             torch.stack([r.lyric_ids for r in new]),
                                             lyrics_strength=lyrics_strength,
                                             transformer_options=transformer_options)
            kv = model.cross_attention_kv(cond)
            for j, row in enumerate(new):
                row.cond, row.kv = cond[j], [(k[j], v[j]) for k, v in kv]
        return torch.stack([r.cond for r in rows]), _StackedKV(rows)
