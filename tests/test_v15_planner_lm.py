"""The LM planner on the real network (ace_step/sampling/planner_lm.py): `Qwen3PlannerLM` against plain full
forwards of the same `Qwen3CausalLM` (no cache, no padding), and `plan()` end to end on a tiny random LM with the
real Qwen tokenizer (ComfyUI's bundled folder, with the audio-code tokens).

Tolerance: max |adapter - full forward| <= 1e-5 * max |full forward| (fp32) over every generated position. The CUDA
tests run only where CUDA is (the CUDA-graph step against the eager step and the full forward)."""
import gc
import weakref

import pytest
import torch

from ace_step.models.v15.qwen3 import KVCache, Qwen3CausalLM, Qwen3Config
from ace_step.sampling import planner_grammar, planner_lm
from ace_step.sampling.planner import PlanRequest, plan
from ace_step.sampling.planner_lm import Qwen3PlannerLM, real_tokens
from ace_step.sampling.planner_sampling import SamplingParams
from ace_step.text.qwen_tokenizer import LM_VOCAB_SIZE, load_qwen3_tokenizer
from ace_step.text.v15_prompts import (BPM_MAX, BPM_MIN, VALID_KEYSCALES, VALID_LANGUAGES, VALID_TIME_SIGNATURES,
                                       SongMetadata)
from fixtures.v15_configs import tiny_qwen3
from fixtures.v15_text_models import bundled_tokenizer_dir
from measure import max_rel_error, report as record

REL_TOL = 1e-5
SHORT_CAPTIONS = 40  # caption token limit in the plan tests (a random LM otherwise writes the original's 512)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def random_lm(config: Qwen3Config, seed: int = 0, device="cpu", dtype=torch.float32) -> Qwen3CausalLM:
    torch.manual_seed(seed)
    lm = Qwen3CausalLM(config).eval()
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith("norm.weight"):  # ones by default: make every norm matter
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return lm.to(device=device, dtype=dtype)


def real_vocab_lm(seed: int = 0) -> Qwen3CausalLM:
    """2 layers, 32 wide, the LM's 217,204-token vocabulary: cheap steps, real planner masks. The (tied) embedding
    is scaled to std 0.3: at std 1 a token's own logit dominates and the LM repeats one token whatever the seed."""
    config = Qwen3Config(vocab_size=LM_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                         num_kv_heads=1, head_dim=16)
    lm = random_lm(config, seed)
    with torch.no_grad():
        lm.model.embed_tokens.weight.mul_(0.3)
    return lm


def pad_left(prompts, vocab: int, generator: torch.Generator):
    """ids [B, L] with each prompt at the end of its row and random ids in front (padding must not matter), and the
    planner's key_padding [B, L] (True = PADDING)."""
    width = max(len(p) for p in prompts)
    ids = torch.randint(0, vocab, (len(prompts), width), generator=generator)
    padding = torch.ones(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        padding[row, width - len(prompt):] = False
    return ids, padding


def run_adapter(adapter: Qwen3PlannerLM, prompts, written, generator):
    """Prefill `prompts` (samples' conditional rows, then their unconditional rows), then step the samples' tokens
    `written` [samples, steps] into both rows of each sample. Logits [rows, steps + 1, V]."""
    vocab = adapter.lm.config.vocab_size
    ids, padding = pad_left(prompts, vocab, generator)
    out = [adapter.prefill(ids.to(adapter.device), padding.to(adapter.device))]
    for step in range(written.shape[1]):
        tokens = written[:, step].repeat(len(prompts) // written.shape[0])[:, None]
        out.append(adapter.step(tokens.to(adapter.device)))
    return torch.stack(out, 1)


def full_forward_logits(lm: Qwen3CausalLM, prompts, written) -> list:
    """Per row: a plain forward of its prompt and written tokens alone (no cache, no padding, positions 0..), the
    logits from the prompt's last token on."""
    samples, device = written.shape[0], lm.model.embed_tokens.weight.device
    rows = []
    for row, prompt in enumerate(prompts):
        sequence = torch.cat([prompt, written[row % samples]]).to(device)
        rows.append(lm(sequence[None])[0, len(prompt) - 1:])
    return rows


# Two samples with CFG: conditional rows (5 and 8 tokens) then unconditional rows (3 and 6); then "phase 2": new
# prompts (7, 2, 7, 4) into the same cache.
PHASES = ((5, 8, 3, 6), (7, 2, 7, 4))
STEPS = 11


@torch.no_grad()
def test_logits_equal_a_full_forward_for_every_generated_position(monkeypatch):
    config = tiny_qwen3()
    lm = random_lm(config, seed=1)
    allocations = []
    allocate = KVCache.allocate
    monkeypatch.setattr(KVCache, "allocate", classmethod(
        lambda cls, *args, **kwargs: allocations.append(args) or allocate(*args, **kwargs)))
    projected = []  # the hidden states the LM turned into logits
    logits = lm.logits
    monkeypatch.setattr(lm, "logits", lambda hidden: projected.append(tuple(hidden.shape)) or logits(hidden))
    # window 4: the attention window grows 8 -> 12 -> 16 -> 20 within a phase, so views of every size are used.
    adapter = Qwen3PlannerLM(lm, max_tokens=20, window=4)
    g = torch.Generator().manual_seed(2)
    errors, keys = [], []
    for lengths in PHASES:
        prompts = [torch.randint(0, config.vocab_size, (n,), generator=g) for n in lengths]
        written = torch.randint(0, config.vocab_size, (2, STEPS), generator=g)
        projected.clear()
        got = run_adapter(adapter, prompts, written, g)
        keys.append(adapter.cache.layers[0].keys)
        assert set(projected) == {(4, 1, config.hidden_size)} and len(projected) == STEPS + 1
        for row, ref in enumerate(full_forward_logits(lm, prompts, written)):
            errors.append(max_rel_error(got[row], ref))
    record("v15_planner_lm_vs_full_forward_rel_err", max(errors))
    assert max(errors) <= REL_TOL
    # One cache for both phases; every LM call above projected one position per row (never [B, L, V]).
    assert len(allocations) == 1 and keys[0] is keys[1]
    assert adapter.length == max(PHASES[1]) + STEPS


@torch.no_grad()
def test_positions_count_real_tokens_and_padding_is_inverted_for_the_model(monkeypatch):
    """The planner's key_padding (True = padding) reaches Qwen3Model as True = real, per cache slot; RoPE positions
    start at each row's first real token; a step writes slot L + k at position (real tokens) + k."""
    lm = random_lm(tiny_qwen3())
    calls = []
    forward = lm.forward
    monkeypatch.setattr(lm, "forward", lambda **kw: calls.append(
        {k: v.clone() if torch.is_tensor(v) else v for k, v in kw.items()}) or forward(**kw))
    adapter = Qwen3PlannerLM(lm, max_tokens=16, window=8)
    ids = torch.tensor([[7, 7, 7, 1, 2], [3, 4, 5, 6, 8]])
    padding = torch.tensor([[True, True, True, False, False], [False] * 5])
    adapter.prefill(ids, padding)
    adapter.step(torch.tensor([[9], [9]]))
    adapter.step(torch.tensor([[4], [4]]))
    prefill, step1, step2 = calls
    assert prefill["positions"].tolist() == [[0, 0, 0, 0, 1], [0, 1, 2, 3, 4]]
    assert prefill["cache_slots"].tolist() == [0, 1, 2, 3, 4] and prefill["logits_at"] == -1
    assert prefill["key_padding"].tolist() == [[False] * 3 + [True] * 2 + [False] * 3, [True] * 5 + [False] * 3]
    assert step1["positions"].tolist() == [[2], [5]] and step1["cache_slots"].tolist() == [5]
    assert step2["positions"].tolist() == [[3], [6]] and step2["cache_slots"].tolist() == [6]
    assert step2["key_padding"].tolist() == [[False] * 3 + [True] * 4 + [False], [True] * 7 + [False]]
    assert step2["key_padding"].shape == (2, 8)  # the 8-slot window, not the 16-slot cache


def test_key_padding_convention_is_checked():
    padding = torch.tensor([[True, False, False], [False, False, False]])
    assert real_tokens(padding).tolist() == [[False, True, True], [True, True, True]]
    with pytest.raises(ValueError, match="True at PADDING"):
        real_tokens(~padding)  # Qwen3Model's convention handed to the planner's API
    with pytest.raises(ValueError, match="padded on the left"):
        real_tokens(torch.tensor([[False, True, False]]))
    with pytest.raises(ValueError, match="bool"):
        real_tokens(torch.zeros(1, 3))


@torch.no_grad()
def test_bad_use_is_named():
    lm = random_lm(tiny_qwen3())
    adapter = Qwen3PlannerLM(lm, max_tokens=6)
    with pytest.raises(RuntimeError, match="before prefill"):
        adapter.step(torch.tensor([[1]]))
    with pytest.raises(ValueError, match="larger max_tokens"):
        adapter.prefill(torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 6, dtype=torch.bool))
    adapter.prefill(torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[2, 1\]"):
        adapter.step(torch.tensor([[1]]))
    adapter.step(torch.tensor([[1], [1]]))
    adapter.step(torch.tensor([[1], [1]]))
    with pytest.raises(ValueError, match="cache is full"):
        adapter.step(torch.tensor([[1], [1]]))
    for bad in (dict(max_tokens=1), dict(window=0), dict(rows=0)):
        with pytest.raises(ValueError):
            Qwen3PlannerLM(lm, **bad)


# ---------------------------------------------------------------------------------------------- plan() end to end

@pytest.fixture(scope="module")
def tok():
    return load_qwen3_tokenizer([bundled_tokenizer_dir()], audio_codes=True)


@pytest.fixture(scope="module")
def small_lm():
    return real_vocab_lm(seed=3)


@pytest.fixture(autouse=True)
def short_captions(monkeypatch):
    monkeypatch.setattr(planner_grammar, "CAPTION_MAX_TOKENS", SHORT_CAPTIONS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Vocabulary-wide sampling ops on 2 shared cores: a second thread mostly waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REQUEST = PlanRequest("Dreamy synth pop with a female voice", "[verse]\nneon lights on the water",
                      known=SongMetadata(duration=10))


def assert_valid_plan(result, codes=50, samples=1):
    meta = result.metadata
    assert BPM_MIN <= meta.bpm <= BPM_MAX and meta.keyscale in VALID_KEYSCALES
    assert meta.timesignature in VALID_TIME_SIGNATURES and meta.language in VALID_LANGUAGES
    assert meta.duration == 10 and meta.caption
    assert len(result.codes) == samples
    assert all(len(c) == codes and all(0 <= x < 64000 for x in c) for c in result.codes)


def test_plan_end_to_end_on_the_real_tokenizer(tok, small_lm, monkeypatch):
    allocations = []
    allocate = KVCache.allocate
    monkeypatch.setattr(KVCache, "allocate", classmethod(
        lambda cls, *args, **kwargs: allocations.append(args[1]) or allocate(*args, **kwargs)))
    adapter = Qwen3PlannerLM(small_lm, max_tokens=512)
    prefills, prefill = [], adapter.prefill
    adapter.prefill = lambda ids, padding: prefills.append(ids.shape) or prefill(ids, padding)
    seen = []  # (cache, keys storage, phase) at every progress report

    def progress(done, total):
        seen.append((id(adapter.cache), adapter.cache.layers[0].keys.data_ptr(), len(prefills)))

    result = plan(adapter, tok, REQUEST, SamplingParams(seed=5), on_progress=progress, progress_every=10)
    assert_valid_plan(result)
    assert len(result.cot_tokens) > 20
    record("v15_planner_lm_plan_tokens", len(result.cot_tokens) + len(result.codes[0]))
    # One cache for the whole plan (both phases, every step), freed when plan() returned.
    assert len(prefills) == 2 and {s[2] for s in seen} == {1, 2}  # reports from both phases
    assert allocations == [2] and len({s[:2] for s in seen}) == 1
    assert adapter.cache is None

    again = plan(adapter, tok, REQUEST, SamplingParams(seed=5))
    other = plan(Qwen3PlannerLM(small_lm, max_tokens=512), tok, REQUEST, SamplingParams(seed=6))
    assert again == result and other != result


def test_batch_of_samples_allocates_once_with_rows(tok, small_lm, monkeypatch):
    allocations = []
    allocate = KVCache.allocate
    monkeypatch.setattr(KVCache, "allocate", classmethod(
        lambda cls, *args, **kwargs: allocations.append(args[1]) or allocate(*args, **kwargs)))
    request = PlanRequest(REQUEST.caption, REQUEST.lyrics, known=REQUEST.known, batch_size=2)
    # Phase 1 runs 2 rows (1 sample with CFG), phase 2 runs 4: sized up front, the cache is made once.
    result = plan(Qwen3PlannerLM(small_lm, max_tokens=512, rows=4), tok, request, SamplingParams(seed=7))
    assert_valid_plan(result, samples=2)
    assert result.codes[0] != result.codes[1]
    assert allocations == [4]


def test_interrupt_from_progress_frees_the_cache(tok, small_lm):
    class Interrupted(Exception):  # stands in for ComfyUI's InterruptProcessingException
        pass

    adapter = Qwen3PlannerLM(small_lm, max_tokens=512)
    held = []

    def interrupt(done, total):
        held.append(weakref.ref(adapter.cache.layers[0].keys))
        if done >= 30:
            raise Interrupted

    with pytest.raises(Interrupted):
        plan(adapter, tok, REQUEST, SamplingParams(seed=8), on_progress=interrupt, progress_every=10)
    gc.collect()
    assert adapter.cache is None and held and all(ref() is None for ref in held)
    # The adapter starts over cleanly: the same plan as a fresh one.
    params = SamplingParams(seed=8, cfg_scale=1.0)
    assert plan(adapter, tok, REQUEST, params) == plan(Qwen3PlannerLM(small_lm, max_tokens=512), tok, REQUEST,
                                                       params)


# ---------------------------------------------------------------------------------------------- CUDA graphs

@torch.no_grad()
def test_graph_path_bookkeeping_on_cpu(monkeypatch):
    """The graph path with a stand-in for the capture that "replays" by running the captured step function: one
    capture per (rows, window), reused by the second phase, and the logits of the eager path."""
    captures = []

    class Rerun:
        def __init__(self, run, device, pool):
            captures.append(run)
            self.run = run

        def replay(self):
            return self.run()

    monkeypatch.setattr(planner_lm, "_GraphedStep", Rerun)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    lm = random_lm(tiny_qwen3(), seed=6)
    runs = {}
    for graphs in (False, True):
        adapter = Qwen3PlannerLM(lm, max_tokens=20, window=4)
        adapter.use_graphs = graphs  # what a CUDA device sets
        g = torch.Generator().manual_seed(7)
        runs[graphs] = [run_adapter(adapter, [torch.randint(0, 97, (n,), generator=g) for n in lengths],
                                    torch.randint(0, 97, (2, STEPS), generator=g), g) for lengths in PHASES]
    # Phase 1 steps slots 8..18 (windows 12, 16, 20), phase 2 slots 7..17 (8, then the same three).
    assert adapter.captured == [(4, 8), (4, 12), (4, 16), (4, 20)] and len(captures) == 4
    assert all(torch.equal(a, b) for a, b in zip(runs[False], runs[True]))


def cuda_lm(dtype):
    """Real head sizes (128 wide, 16/8 heads) at small width and depth, on CUDA."""
    config = Qwen3Config(vocab_size=4096, hidden_size=256, intermediate_size=512, num_layers=3, num_heads=4,
                         num_kv_heads=2, head_dim=128)
    return random_lm(config, seed=4, device="cuda", dtype=dtype)


@CUDA
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@torch.no_grad()
def test_cuda_graph_steps_equal_eager_steps(dtype, tol):
    """The captured step replays the eager step's kernels: the same logits (to the dtype's rounding, should the
    library pick other kernels under capture; a wrong slot, window or stale input is off by O(1)), graphs captured
    once per (rows, window) and reused by the second phase; fp32 also against the full forward."""
    lm = cuda_lm(dtype)
    results = {}
    for graphs in (False, True):
        adapter = Qwen3PlannerLM(lm, max_tokens=40, window=8, cuda_graphs=graphs)
        assert adapter.use_graphs == graphs
        g = torch.Generator().manual_seed(5)
        runs = []
        for lengths in PHASES:
            prompts = [torch.randint(0, 4096, (n,), generator=g) for n in lengths]
            written = torch.randint(0, 4096, (2, 20), generator=g)
            runs.append((prompts, written, run_adapter(adapter, prompts, written, g)))
        results[graphs] = runs
        if graphs:
            # Phase 1 steps slots 8..27 (windows 16, 24, 32), phase 2 slots 7..26 (8, then the same three).
            assert adapter.captured == [(4, 8), (4, 16), (4, 24), (4, 32)]
    for (prompts, written, eager), (_, _, graphed) in zip(results[False], results[True]):
        err = max_rel_error(graphed, eager)
        record(f"v15_planner_lm_cuda_graph_vs_eager_rel_err_{str(dtype)[6:]}", err)
        assert err <= tol
        if dtype == torch.float32:
            for row, ref in enumerate(full_forward_logits(lm, prompts, written)):
                assert max_rel_error(graphed[row], ref) <= 1e-4


@CUDA
def test_cuda_graph_plan_equals_eager_plan(tok):
    lm = real_vocab_lm(seed=3).cuda()
    plans = [plan(Qwen3PlannerLM(lm, max_tokens=512, cuda_graphs=graphs), tok, REQUEST, SamplingParams(seed=9),
                  device="cuda") for graphs in (False, True)]
    assert_valid_plan(plans[1])
    assert plans[0] == plans[1]


def test_benchmark_script_runs(tmp_path):
    """scripts/benchmark_planner.py end to end at the 0.6B width, 1 layer, a few tokens: every case reported, with
    positive rates and floors (speed itself is not asserted)."""
    import json

    from benchmark_planner import main

    out = tmp_path / "planner.json"
    assert main(["--layers", "1", "--prompt", "8", "--decode", "3", "--repeats", "1", "--dtypes", "fp32",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["size"], r["layers"], r["cfg"], r["rows"]) for r in results] == [("lm-0.6B", 1, True, 2),
                                                                                ("lm-0.6B", 1, False, 1)]
    for r in results:
        assert min(r["prefill_tok_s"], r["decode_tok_s"], r["sampling_tok_s"]) > 0
        assert r["floor"]["decode_tok_s"] > 0 and 0 < r["floor"]["kv_share"] < 1
        assert r["cache_mib"] == pytest.approx(r["rows"] * 12 * 1 * 2 * 8 * 128 * 4 / 2 ** 20)  # 12 slots, fp32
