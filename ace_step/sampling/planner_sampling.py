"""Token sampling for the ACE-Step 1.5 LM planner: classifier-free guidance on logits, top-k, min-p, top-p,
temperature, seeded draws.

Order, as the original pipeline's PyTorch path (ace-step/ACE-Step-1.5 `acestep/llm_inference.py` @ f30aee4c,
`_generate_with_cfg_custom`): guidance (in float32) -> grammar mask -> top-k -> top-p -> temperature -> draw; min-p
(ComfyUI's addition, Comfy-Org/ComfyUI `comfy/text_encoders/ace15.py` @ 523fba4d `_sample_audio_token`) sits
between top-k and top-p as in ComfyUI. The original's nano-vllm backend (its default on CUDA) divides by the
temperature before top-k/top-p instead, so its top-p keeps a different set whenever the temperature is not 1.
Removed tokens get -inf. Defaults are the original's (`acestep/inference.py` GenerationParams: lm_cfg_scale 2.0,
lm_temperature 0.85, lm_top_k 0 = off, lm_top_p 0.9); min-p 0 = off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingParams:
    cfg_scale: float = 2.0  # guidance only above 1.0, as the original (1.0 and below: no unconditional rows)
    temperature: float = 0.85  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 0.9  # 1.0 = off
    min_p: float = 0.0  # 0 = off
    seed: int = 0

    def __post_init__(self):
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be a whole number >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p:
            raise ValueError(f"top_p must be > 0 (1 or more = off), got {self.top_p!r}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in 0..1 (0 = off), got {self.min_p!r}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale > 1.0


def guided_logits(cond: torch.Tensor, uncond: Optional[torch.Tensor], cfg_scale: float) -> torch.Tensor:
    """uncond + cfg_scale * (cond - uncond) in float32 (the original's formula and upcast); `cond` itself (as
    float32) without an unconditional batch."""
    if uncond is None:
        return cond.float()
    uncond = uncond.float()
    return uncond + cfg_scale * (cond.float() - uncond)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the tokens whose logit is at least the k-th largest (ties at the k-th value are all kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drops the tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keeps the most likely tokens up to and including the first whose cumulative probability exceeds top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[..., 1:] = cumulative[..., :-1] > top_p  # a token goes once the ones before it exceed top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    logits = top_k_filter(logits, params.top_k)
    logits = min_p_filter(logits, params.min_p)
    return top_p_filter(logits, params.top_p)


def draw(logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One token per row [R] from filtered logits [R, V], distributed as softmax(logits / temperature), or the argmax
    at temperature 0. Drawn by inverting the cumulative distribution (float64) with one uniform number per row: the
    distribution of torch.multinomial, which on CPU takes ~30x longer over 217k tokens."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    cumulative = torch.softmax(logits.double() / temperature, dim=-1).cumsum(dim=-1)
    uniform = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device, dtype=torch.float64)
    # The first token whose cumulative probability exceeds the draw: a token of probability 0 never is.
    token = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)
    return token.clamp_max(logits.shape[-1] - 1).squeeze(-1)
