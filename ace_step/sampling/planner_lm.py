"""The LM planner (`planner.plan`) on the real 5 Hz LM: `Qwen3PlannerLM` runs a `Qwen3CausalLM` behind the
`PlannerLM` protocol with one static KV cache, and on CUDA replays its one-token step as a CUDA graph.

Semantics:
- Padding. The planner's `key_padding` is True at PADDING; `Qwen3Model`'s is True at REAL tokens.
  `real_tokens` is the one place that turns one into the other (and rejects what is not left padding).
- Positions. Each row's RoPE positions count its real tokens only: a row's first real token is at position 0
  whatever padding precedes it, so a row decodes as it would alone. That is what the original's default backend
  computes (ace-step/ACE-Step-1.5 `acestep/third_parts/nano-vllm`, which never pads), and not what the original's
  PyTorch path does (`acestep/llm_inference.py` @ f30aee4c `_forward_pass` calls the transformers model with an
  attention mask but no position ids, so a left-padded row's positions count its padding). Both give the same
  logits up to rounding: the padding is masked, and RoPE attention depends on position differences only, which
  a constant shift per row keeps; ours keeps the angles (and their rounding) those of the row alone.
- Batch. Conditional and unconditional (CFG) rows are one batch, one forward per token.
- Cache. One `KVCache` of `rows` x `max_tokens` slots per layer (prompt, padding included, then the tokens written
  after it), allocated at the first prefill, reused by later prefills with no more rows (the planner's phase 2),
  freed by `release()` (`plan` calls it when it ends, by an exception too). Slot s holds the s-th token of the
  padded row; a token sees the slots up to its own only, so nothing of an earlier sequence is ever seen.
- Attention windows. A forward attends to the first `window` multiple of slots that covers the sequence so far
  (views of the cache, not copies), so its cost follows the sequence length, not `max_tokens`.
- Logits. Prefill projects only each row's last position ([B, 1, H] -> [B, V]; never [B, L, V]).

CUDA graphs (`cuda_graphs=True`, a CUDA device, every LM weight on it): the one-token step reads only static
buffers (token ids, positions, write slot, key mask) and the cache, so it is captured once per (rows, window) and
replayed; the host writes the new inputs into those buffers before each replay. See `_GraphedStep`.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from ..models.v15.layers import LayerCache
from ..models.v15.qwen3 import KVCache, Qwen3CausalLM, default_positions

DEFAULT_MAX_TOKENS = 4096  # tokens per row: the original's `max_model_len` (acestep/llm_inference.py @ f30aee4c)
DEFAULT_WINDOW = 256  # attention-window granularity in slots (and so at most max_tokens / 256 step graphs)


def real_tokens(key_padding: torch.Tensor) -> torch.Tensor:
    """The planner's key_padding [B, L] (True = padding, rows LEFT padded) as Qwen3Model's mask (True = real)."""
    if key_padding.dtype != torch.bool or key_padding.ndim != 2:
        raise ValueError(f"key_padding must be a bool [batch, length] tensor (True = padding), got "
                         f"{key_padding.dtype} {tuple(key_padding.shape)}")
    real = ~key_padding
    if not bool(real[:, -1].all()):
        raise ValueError("every row's last token must be real: key_padding is True at PADDING (the planner's "
                         "convention, the opposite of Qwen3Model's) and rows are padded on the left")
    if bool((real[:, :-1] & ~real[:, 1:]).any()):
        raise ValueError("key_padding has a real token followed by padding: rows must be padded on the left only")
    return real


class Qwen3PlannerLM:
    """`PlannerLM` over `lm`. `max_tokens`: cache slots per row (the longest padded prompt plus the tokens written
    after it). `device`, `dtype`: where and in which dtype the activations and the cache live (default: those of
    the embedding table). `rows`: cache rows to allocate (default: the first prefill's; a later prefill with more
    rows reallocates). `cuda_graphs`: replay the step as a CUDA graph where possible. `window`: see the module."""

    def __init__(self, lm: Qwen3CausalLM, max_tokens: int = DEFAULT_MAX_TOKENS,
                 device: Union[None, str, torch.device] = None, dtype: Optional[torch.dtype] = None, *,
                 rows: Optional[int] = None, cuda_graphs: bool = True, window: int = DEFAULT_WINDOW,
                 transformer_options: Optional[dict] = None):
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 (a prompt token and one written), got {max_tokens}")
        if window < 1:
            raise ValueError(f"window must be >= 1 slot, got {window}")
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be >= 1 or None, got {rows}")
        weight = lm.model.embed_tokens.weight
        self.lm = lm
        self.max_tokens, self.window, self.rows = max_tokens, window, rows
        self.device = torch.device(device) if device is not None else weight.device
        self.dtype = dtype if dtype is not None else weight.dtype
        self.transformer_options = transformer_options
        self.use_graphs = cuda_graphs and self.device.type == "cuda" and torch.cuda.is_available()
        self.release()

    # ------------------------------------------------------------------------------------------ state

    def release(self) -> None:
        """Frees the cache, its step buffers and captured graphs; the next prefill allocates again."""
        self.cache: Optional[KVCache] = None
        self._views: Dict[Tuple[int, int], KVCache] = {}
        self._graphs: Dict[Tuple[int, int], _GraphedStep] = {}
        self._pool = None  # the memory pool the step graphs share
        self._tokens = self._positions = self._slot = self._real = None
        self._active_rows = 0
        self.length = 0  # slots of the current sequences (padded prompt + tokens stepped)

    def _allocate(self, rows: int) -> None:
        self.release()  # the old cache goes before the new one is made
        self.cache = KVCache.allocate(self.lm.config, rows, self.max_tokens, self.dtype, self.device)
        self._tokens = torch.zeros(rows, 1, dtype=torch.long, device=self.device)
        self._positions = torch.zeros(rows, 1, dtype=torch.long, device=self.device)
        self._slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self._real = torch.zeros(rows, self.max_tokens, dtype=torch.bool, device=self.device)  # True = real

    @property
    def captured(self) -> list:
        """The (rows, window) pairs that have a captured step graph."""
        return sorted(self._graphs)

    def window_for(self, slots: int) -> int:
        """The slots a forward attends to when the sequences hold `slots` (the next multiple of `window`)."""
        return min(self.max_tokens, -(-slots // self.window) * self.window)

    def _view(self, rows: int, window: int) -> KVCache:
        """The cache's first `rows` rows and `window` slots, as views (writes land in the cache)."""
        view = self._views.get((rows, window))
        if view is None:
            view = KVCache([LayerCache(layer.keys[:rows, :, :window], layer.values[:rows, :, :window])
                            for layer in self.cache.layers], window)
            self._views[(rows, window)] = view
        return view

    # ------------------------------------------------------------------------------------------ PlannerLM

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        """New sequences: input_ids [B, L] left padded, key_padding [B, L] True = padding. Logits [B, V] of each
        row's last token."""
        real = real_tokens(key_padding.to(self.device))
        rows, length = input_ids.shape
        if tuple(real.shape) != (rows, length):
            raise ValueError(f"key_padding {tuple(real.shape)} must match input_ids {(rows, length)}")
        if length >= self.max_tokens:
            raise ValueError(f"a prompt of {length} tokens leaves no room in a cache of max_tokens="
                             f"{self.max_tokens}; build Qwen3PlannerLM with a larger max_tokens")
        if self.cache is None or rows > self.cache.layers[0].keys.shape[0]:
            self._allocate(max(rows, self.rows or 0))
        self._active_rows, self.length = rows, length
        self._real[:rows, :length] = real  # later slots: only the causal mask hides them (stale or unwritten)
        self._positions[:rows, 0] = real.sum(-1)  # the next token's position
        window = self.window_for(length)
        embeds = self.lm.model.embed(input_ids.to(self.device)).to(self.dtype)
        slots = torch.arange(length, device=self.device)
        logits = self.lm(inputs_embeds=embeds, positions=default_positions(real, slots, rows),
                         key_padding=self._real[:rows, :window], cache=self._view(rows, window), cache_slots=slots,
                         logits_at=-1, transformer_options=self.transformer_options)
        return logits[:, 0]

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Appends token_ids [B, 1] to every row; logits [B, V] of the next token."""
        rows = self._active_rows
        if rows == 0:
            raise RuntimeError("step() before prefill(): start the sequences with prefill first")
        if tuple(token_ids.shape) != (rows, 1):
            raise ValueError(f"token_ids must be [{rows}, 1] (one token per row), got {tuple(token_ids.shape)}")
        slot = self.length
        if slot >= self.max_tokens:
            raise ValueError(f"the planner's KV cache is full ({self.max_tokens} tokens per row): build "
                             "Qwen3PlannerLM with a larger max_tokens")
        self._tokens[:rows].copy_(token_ids)
        self._slot.fill_(slot)
        self._real[:rows, slot] = True
        window = self.window_for(slot + 1)
        if self.use_graphs:
            logits = self._graphed(rows, window).replay()
        else:
            logits = self._step_forward(rows, window)
        self._positions[:rows] += 1
        self.length += 1
        return logits

    def _step_forward(self, rows: int, window: int) -> torch.Tensor:
        """One token per row, from the static buffers only (what a CUDA graph captures)."""
        embeds = self.lm.model.embed(self._tokens[:rows]).to(self.dtype)
        logits = self.lm(inputs_embeds=embeds, positions=self._positions[:rows],
                         key_padding=self._real[:rows, :window], cache=self._view(rows, window),
                         cache_slots=self._slot, transformer_options=self.transformer_options)
        return logits[:, 0]

    # ------------------------------------------------------------------------------------------ CUDA graphs

    def _graphed(self, rows: int, window: int) -> "_GraphedStep":
        graph = self._graphs.get((rows, window))
        if graph is None:
            off_device = [name for name, t in (*self.lm.named_parameters(), *self.lm.named_buffers())
                          if t.device != self.device]
            if off_device:
                raise RuntimeError(f"CUDA graphs need every LM weight on {self.device}; {off_device[0]} is on "
                                   "another device (partly offloaded model): use cuda_graphs=False")
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = self._graphs[(rows, window)] = _GraphedStep(lambda: self._step_forward(rows, window),
                                                                self.device, self._pool)
        return graph


class _GraphedStep:
    """`run` (a step reading only static buffers) captured as a CUDA graph.

    Capture: one eager warm-up on a side stream (it initialises lazy kernels and workspaces; it writes the same
    key/value slot the replay will, from the same inputs, so it changes nothing), then the capture on that stream
    into `pool`, one memory pool shared by all of an adapter's step graphs (they never run concurrently, and each
    keeps its output alive). `replay()` returns a copy of the static output, which the next replay overwrites."""

    def __init__(self, run, device: torch.device, pool):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            run()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: only this thread is barred from calls unsafe during a capture; others (a ComfyUI
            # server's) go on. Work is captured from this stream only, either way.
            with torch.cuda.graph(self.graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                self.output = run()
        except Exception as error:
            raise RuntimeError(f"capturing the planner's step as a CUDA graph failed ({error}); "
                               "build Qwen3PlannerLM with cuda_graphs=False") from error

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.output.clone()


__all__ = ["Qwen3PlannerLM", "real_tokens", "DEFAULT_MAX_TOKENS", "DEFAULT_WINDOW"]
