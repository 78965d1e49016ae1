"""ACE-Step 1.5 LM planner decoding (ace_step/sampling/planner*.py) with deterministic stand-in LMs
(tests/fixtures/v15_text_models.py) and the real Qwen3 tokenizer (ComfyUI's bundled folder).

Sampling values are computed by hand; token ids come from Qwen3's tokenizer (checked against transformers in
test_v15_text.py); grammar facts from ace-step/ACE-Step-1.5 `acestep/constrained_logits_processor.py` @ f30aee4c.
"""
import math
import random
import re
from dataclasses import replace

import pytest
import torch

from ace_step.sampling import planner_grammar, planner_vocab as planner_vocab_module
from ace_step.sampling.planner import PlanRequest, plan
from ace_step.sampling.planner_grammar import MetadataGrammar
from ace_step.sampling.planner_sampling import (SamplingParams, draw, filter_logits, guided_logits, min_p_filter,
                                                top_k_filter, top_p_filter)
from ace_step.sampling.planner_vocab import planner_vocab
from ace_step.text.qwen_tokenizer import AUDIO_CODE_FIRST_ID, ENDOFTEXT_ID, THINK_ID, load_qwen3_tokenizer
from ace_step.text.v15_prompts import (VALID_KEYSCALES, VALID_LANGUAGES, SongMetadata, lm_codes_prompt,
                                       lm_codes_unconditional_prompt, lm_cot_prompt, lm_cot_unconditional_prompt,
                                       parse_lm_output)
from fixtures.v15_text_models import HistoryLM, ScriptedLM, bundled_tokenizer_dir

INF = float("inf")
NEWLINE = 198
BPM, CAPTION, DURATION = [17808, 76, 25], [23347, 25], [17021, 25]  # the original's forced "bpm:" is "bp" "m" ":"
KEYSCALE, LANGUAGE, TIMESIG = [10563, 2246, 25], [11528, 25], [15136, 622, 1568, 25]
COT_LINE = re.compile(r"^(bpm|caption|duration|keyscale|language|timesignature):")


SHORT_CAPTIONS = 40  # caption token limit in these tests (the original's 512 makes a random caption long to run)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Vocabulary-wide ops on 2 cores shared with other test runs: a second thread mostly waits for the first.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def short_captions(monkeypatch):
    assert planner_grammar.CAPTION_MAX_TOKENS == 512  # the original's limit
    monkeypatch.setattr(planner_grammar, "CAPTION_MAX_TOKENS", SHORT_CAPTIONS)


@pytest.fixture(scope="module")
def tok():
    return load_qwen3_tokenizer([bundled_tokenizer_dir()], audio_codes=True)


@pytest.fixture(scope="module")
def vocab(tok):
    return planner_vocab(tok)


def no_filters(**kwargs):
    return SamplingParams(top_p=1.0, **kwargs)


# ---------------------------------------------------------------------------------------------- sampling

def test_guided_logits():
    cond = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.bfloat16)
    uncond = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.bfloat16)
    # uncond + 2 * (cond - uncond) = [1 + 2, 1 - 2, 0 - 2]
    assert guided_logits(cond, uncond, 2.0).tolist() == [[3.0, -1.0, -2.0]]
    assert guided_logits(cond, uncond, 2.0).dtype == torch.float32
    assert guided_logits(cond, None, 2.0).tolist() == [[2.0, 0.0, -1.0]]


def test_top_k():
    logits = torch.tensor([[3.0, -1.0, -2.0, 0.5], [1.0, 1.0, 0.0, -5.0]])
    assert top_k_filter(logits, 2).tolist() == [[3.0, -INF, -INF, 0.5], [1.0, 1.0, -INF, -INF]]
    assert top_k_filter(logits[1:], 1).tolist() == [[1.0, 1.0, -INF, -INF]]  # ties with the k-th are kept
    assert top_k_filter(logits, 0).equal(logits) and top_k_filter(logits, 9).equal(logits)


def test_top_p_and_min_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    # Sorted: 0.5, 0.3, 0.15, 0.05; cumulative 0.5, 0.8, 0.95, 1.0. A token goes once those before it pass top_p.
    kept = lambda out: (out > -INF).squeeze(0).tolist()  # noqa: E731
    assert kept(top_p_filter(logits, 0.45)) == [False, True, False, False]
    assert kept(top_p_filter(logits, 0.6)) == [False, True, False, True]
    assert kept(top_p_filter(logits, 0.85)) == [False, True, True, True]
    assert kept(top_p_filter(logits, 1.0)) == [True, True, True, True]
    # min_p: drop p < min_p * 0.5.
    assert kept(min_p_filter(logits, 0.2)) == [False, True, True, True]
    assert kept(min_p_filter(logits, 0.5)) == [False, True, False, True]
    assert top_p_filter(logits, 0.6)[0, 1].item() == pytest.approx(math.log(0.5))  # kept logits unchanged


def test_filter_order():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # top-k 3 first: renormalised 4/9, 3/9, 2/9 -> cumulative 0.44, 0.78 -> top-p 0.7 keeps two.
    out = filter_logits(logits, SamplingParams(top_k=3, top_p=0.7))
    assert (out > -INF).tolist() == [[True, True, False, False]]
    # min-p 0.6 (threshold 0.24 of the kept three: 4/9 * 0.6) then top-p over what is left.
    out = filter_logits(logits, SamplingParams(top_k=3, min_p=0.6, top_p=0.95))
    assert (out > -INF).tolist() == [[True, True, False, False]]


def test_draw():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert draw(logits, 0.0, None).tolist() == [0]
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = [draw(logits, 1.0, g1).item() for _ in range(50)]
    assert a == [draw(logits, 1.0, g2).item() for _ in range(50)]
    # Frequencies follow softmax(logits / T): T = 0.5 squares the probabilities (0.25, 0.09, 0.04) / 0.38.
    samples = draw(logits.expand(40000, 3), 0.5, torch.Generator().manual_seed(0))
    freq = torch.bincount(samples, minlength=3).float() / 40000
    assert freq.tolist() == pytest.approx([0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38], abs=0.01)


@pytest.mark.parametrize("bad", [dict(cfg_scale=-1), dict(temperature=-0.1), dict(top_k=-1), dict(top_k=1.5),
                                 dict(top_p=0), dict(min_p=1.5)])
def test_sampling_params_validation(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


# ---------------------------------------------------------------------------------------------- vocabulary

def test_vocab_tokens_and_masks(vocab):
    assert vocab.name_tokens == {"bpm": tuple(BPM), "caption": tuple(CAPTION), "duration": tuple(DURATION),
                                 "keyscale": tuple(KEYSCALE), "language": tuple(LANGUAGE),
                                 "timesignature": tuple(TIMESIG)}
    bpm = vocab.tries["bpm"]
    allowed = lambda trie, node: set(torch.nonzero(~vocab.blocked[trie.row[node]]).flatten().tolist())  # noqa: E731
    assert allowed(bpm, 0) == {220}  # " "
    space = bpm.children[0][220]
    assert allowed(bpm, space) == set(range(16, 25))  # "1".."9"
    n30 = bpm.children[bpm.children[space][18]][15]  # " 3" "0"
    assert allowed(bpm, n30) == {15, NEWLINE}  # 30 may end, or become 300
    assert allowed(bpm, bpm.children[n30][15]) == {NEWLINE}
    keys = vocab.tries["keyscale"]
    g = keys.children[0][479]  # " G"
    assert allowed(keys, g) == {2, 65, 3598, 8922, 145346, 145761}  # # b " major" " minor" ♯ ♭
    assert allowed(keys, keys.children[g][3598]) == {NEWLINE}
    assert sum(keys.complete) == len(VALID_KEYSCALES) and sum(vocab.tries["language"].complete) == len(VALID_LANGUAGES)
    codes = ~vocab.blocked[vocab.codes_row]
    assert codes.sum().item() == 64000 and codes[AUDIO_CODE_FIRST_ID] and codes[AUDIO_CODE_FIRST_ID + 63999]
    assert not codes[AUDIO_CODE_FIRST_ID + 64000]
    caption = ~vocab.blocked[vocab.caption_row]
    assert not caption[63] and not caption[ENDOFTEXT_ID:].any() and caption[:63].all()  # 63 = "`"
    assert vocab.mask_rows == 16  # one row per distinct allowed set


def test_vocab_built_once(tok, monkeypatch):
    assert planner_vocab(tok) is planner_vocab(tok)
    builds = []
    real = planner_vocab_module.PlannerVocab

    def counting(tokenizer):
        builds.append(tokenizer)
        return real(tokenizer)

    monkeypatch.setattr(planner_vocab_module, "_VOCABS", type(planner_vocab_module._VOCABS)())
    monkeypatch.setattr(planner_vocab_module, "PlannerVocab", counting)
    lm = HistoryLM(tok.vocab_size, seed=1)
    request = PlanRequest("pop", "la", known=SongMetadata(bpm=100, duration=10, keyscale="C major", timesignature=4))
    plan(lm, tok, request, no_filters(seed=1))
    vocab = planner_vocab(tok)
    on_cpu = vocab.blocked_on(torch.device("cpu"), tok.vocab_size)
    plan(lm, tok, request, no_filters(seed=2))
    assert len(builds) == 1 and vocab.blocked_on(torch.device("cpu"), tok.vocab_size) is on_cpu
    with pytest.raises(ValueError, match="logits"):
        vocab.blocked_on(torch.device("cpu"), tok.vocab_size - 1)


# ---------------------------------------------------------------------------------------------- grammar paths

def natural(tok, text):
    return tok.encode(text)


def test_scripted_metadata_block(tok, vocab):
    caption = natural(tok, " Soft piano.\n") + natural(tok, "  Warm strings\n")  # ".\n" is one token: line ends
    script = ([THINK_ID, NEWLINE] + BPM + natural(tok, " 120\n") + CAPTION + caption + DURATION
              + natural(tok, " 12\n") + KEYSCALE + natural(tok, " C# major\n") + LANGUAGE + natural(tok, " zh\n")
              + TIMESIG + natural(tok, " 4\n"))
    lm = ScriptedLM(tok.vocab_size, [script], seed=3)
    result = plan(lm, tok, PlanRequest("A calm song", "la la"), SamplingParams(seed=0))
    assert result.cot_tokens == script
    assert result.metadata == SongMetadata(bpm=120, duration=12, keyscale="C# major", timesignature=4,
                                           language="zh", caption="Soft piano. Warm strings")
    assert len(result.codes[0]) == 60  # the LM's 12 seconds
    assert lm.prefills[1][0][0].tolist() == tok.encode(lm_codes_prompt("A calm song", "la la", result.metadata))


def test_invalid_values_are_blocked(tok):
    # The script asks for bpm 999, duration 9 and key "H": the grammar ends bpm at 99 and keeps the rest valid.
    script = [THINK_ID, NEWLINE] + BPM + [220, 24, 24, 24, NEWLINE] + CAPTION + natural(tok, " x\n") + DURATION \
        + [220, 24, NEWLINE, NEWLINE] + KEYSCALE + natural(tok, " H major\n")
    lm = ScriptedLM(tok.vocab_size, [script], seed=4)
    meta = plan(lm, tok, PlanRequest("c", "l", generate_codes=False), SamplingParams(seed=4)).metadata
    assert meta.bpm == 99 and meta.duration >= 90 and meta.keyscale in VALID_KEYSCALES


def test_caption_limit(tok):
    # A caption that never ends a line: at the limit a newline is forced, and the caption ends there.
    la = natural(tok, " la")[0]
    script = [THINK_ID, NEWLINE] + BPM + natural(tok, " 120\n") + CAPTION + [la] * 100
    lm = ScriptedLM(tok.vocab_size, [script], seed=9)
    cot = plan(lm, tok, PlanRequest("c", "l", generate_codes=False), SamplingParams(seed=9)).cot_tokens
    start = len(script) - 100
    assert cot[start:start + SHORT_CAPTIONS + 1 + 2] == [la] * SHORT_CAPTIONS + [NEWLINE] + DURATION


def test_language_first_token_is_greedy(tok, vocab):
    zh = natural(tok, " zh")[0]
    bias = torch.zeros(tok.vocab_size)
    bias[zh] = 100.0  # the top logit among the languages, but at temperature 200 a draw would rarely give it
    for seed in range(3):
        lm = HistoryLM(tok.vocab_size, seed=seed, bias=bias)
        known = SongMetadata(bpm=90, duration=20, keyscale="A minor")
        result = plan(lm, tok, PlanRequest("c", "l", known=known, generate_codes=False, write_caption=False),
                      SamplingParams(temperature=200.0, top_p=1.0, seed=seed))
        assert result.metadata.language == "zh"


def test_known_values_are_injected(tok):
    lm = HistoryLM(tok.vocab_size, seed=5)
    known = SongMetadata(bpm=120, keyscale="C# major", duration=12.5)
    result = plan(lm, tok, PlanRequest("c", "l", known=known, write_caption=False), no_filters(seed=5))
    cot = result.cot_tokens
    assert cot[:10] == [THINK_ID, NEWLINE] + BPM + [220, 16, 17, 15, NEWLINE]
    assert cot[10:16] == DURATION + [220, 16, 17, NEWLINE]  # int(12.5) = 12, as the original
    assert cot[16:23] == KEYSCALE + [356, 2, 3598, NEWLINE]
    assert result.metadata.duration == 12.5 and len(result.codes[0]) == 62  # int(12.5 * 5)
    # Phase 2 saw the metadata block with the LM's language and time signature.
    codes_prompt = lm_codes_prompt("c", "l", result.metadata)
    assert "bpm: 120\nduration: 12\nkeyscale: C# major\nlanguage: " in codes_prompt
    assert lm.prefills[1][0][0].tolist() == tok.encode(codes_prompt)


def test_prompts_batching_and_padding(tok):
    lm = HistoryLM(tok.vocab_size, seed=6)
    known = SongMetadata(bpm=100, duration=10, keyscale="E minor", timesignature=3)
    result = plan(lm, tok, PlanRequest("Funky disco", "[chorus]\nDance all night", known=known, batch_size=2),
                  no_filters(seed=6))
    assert result.cot_tokens == [] and len(lm.prefills) == 1  # all four given: phase 1 is skipped
    ids, padding = lm.prefills[0]
    cond = tok.encode(lm_codes_prompt("Funky disco", "[chorus]\nDance all night", known))
    uncond = tok.encode(lm_codes_unconditional_prompt("Funky disco", "[chorus]\nDance all night"))
    assert ids.shape == (4, max(len(cond), len(uncond)))  # 2 conditional rows, then 2 unconditional
    for row, expected in zip(range(4), [cond, cond, uncond, uncond]):
        pad = ids.shape[1] - len(expected)
        assert ids[row, pad:].tolist() == expected and (ids[row, :pad] == ENDOFTEXT_ID).all()
        assert padding[row].tolist() == [True] * pad + [False] * len(expected)
    assert [len(c) for c in result.codes] == [50, 50]
    # Every step feeds each sample's token to its conditional and unconditional rows.
    assert all(step[:2] == step[2:] for step in lm.steps)


def test_cot_prompts_and_unguided_batch(tok):
    lm = HistoryLM(tok.vocab_size, seed=7)
    plan(lm, tok, PlanRequest("c", "l", generate_codes=False, negative_prompt="noise"), no_filters(seed=7))
    ids, padding = lm.prefills[0]
    assert ids[0][~padding[0]].tolist() == tok.encode(lm_cot_prompt("c", "l"))
    assert ids[1][~padding[1]].tolist() == tok.encode(lm_cot_unconditional_prompt("l", "noise"))
    lm = HistoryLM(tok.vocab_size, seed=7)
    plan(lm, tok, PlanRequest("c", "l", generate_codes=False), no_filters(cfg_scale=1.0, seed=7))
    assert lm.prefills[0][0].shape[0] == 1  # no guidance: no unconditional row


class FixedLM:
    """Constant logits per row: conditional rows `cond`, unconditional rows `uncond`."""

    def __init__(self, vocab_size, cond, uncond):
        self.rows = [torch.zeros(vocab_size), torch.zeros(vocab_size)]
        for row, values in zip(self.rows, (cond, uncond)):
            for code, value in values.items():
                row[AUDIO_CODE_FIRST_ID + code] = value

    def prefill(self, input_ids, key_padding):
        self.batch = input_ids.shape[0]
        return self.step(None)

    def step(self, token_ids):
        half = max(self.batch // 2, 1)
        return torch.stack([self.rows[0]] * half + [self.rows[1]] * (self.batch - half))


def test_guidance_changes_the_choice(tok):
    # Code 7: cond 5, uncond 5 -> guided 5 + s * 0. Code 9: cond 4.5, uncond 2 -> guided 2 + s * 2.5.
    lm = FixedLM(tok.vocab_size, {7: 5.0, 9: 4.5}, {7: 5.0, 9: 2.0})
    known = SongMetadata(bpm=100, duration=10, keyscale="E minor", timesignature=3)
    greedy = SamplingParams(temperature=0.0, top_p=1.0)
    assert plan(lm, tok, PlanRequest("c", "l", known=known), SamplingParams(cfg_scale=1.0, temperature=0.0)).codes \
        == [[7] * 50]  # 5 > 4.5
    assert plan(lm, tok, PlanRequest("c", "l", known=known), greedy).codes == [[9] * 50]  # 7 > 5 at scale 2


def test_same_seed_same_plan(tok):
    request = PlanRequest("Dreamy shoegaze", "[verse]\nfloating", known=SongMetadata(duration=10))
    runs = [plan(HistoryLM(tok.vocab_size, seed=8), tok, request, SamplingParams(seed=s, top_k=50))
            for s in (11, 11, 12)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_progress_and_interrupt(tok):
    known = SongMetadata(bpm=100, duration=10, keyscale="E minor", timesignature=3)
    calls = []
    plan(HistoryLM(tok.vocab_size), tok, PlanRequest("c", "l", known=known), no_filters(),
         on_progress=lambda done, total: calls.append((done, total)), progress_every=10)
    assert calls == [(10, 50), (20, 50), (30, 50), (40, 50), (50, 50)]

    calls = []
    plan(HistoryLM(tok.vocab_size), tok, PlanRequest("c", "l", known=SongMetadata(duration=10)), no_filters(),
         on_progress=lambda done, total: calls.append((done, total)), progress_every=10)
    assert calls[-1][0] == calls[-1][1] and calls[-1][1] > 50
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))

    class Interrupted(Exception):
        pass

    def stop(done, total):
        if done >= 20:
            raise Interrupted

    lm = HistoryLM(tok.vocab_size)
    with pytest.raises(Interrupted):
        plan(lm, tok, PlanRequest("c", "l", known=known), no_filters(), on_progress=stop, progress_every=10)
    assert len(lm.steps) == 19  # tokens 1..20 chosen, 19 of them fed back before the callback stopped it


# ---------------------------------------------------------------------------------------------- fuzz

def check_block(tok, tokens, known, request):
    """The metadata block parses into valid values, in the original's layout, with the known values kept."""
    text = tok.decode(tokens)
    assert text.startswith("<think>\n") and text.endswith("\n") and tokens[:2] == [THINK_ID, NEWLINE]
    lines = text[len("<think>\n"):-1].split("\n")
    starts = [line for line in lines if line.strip() and not line.startswith((" ", "\t"))]  # blank lines: YAML's too
    assert all(COT_LINE.match(line) for line in starts), text
    fields = [COT_LINE.match(line).group(1) for line in starts]
    skipped = {"caption"} if not request.write_caption else set()
    skipped |= {"language"} if not request.write_language else set()
    expected = [f for f in ("bpm", "caption", "duration", "keyscale", "language", "timesignature") if f not in skipped]
    assert fields == expected, text
    meta, codes = parse_lm_output(text)
    assert codes == []
    for name in ("bpm", "duration", "keyscale", "timesignature"):
        value = getattr(meta, name)
        assert value is not None, (name, text)
        if getattr(known, name) is not None:
            assert value == (int(known.duration) if name == "duration" else getattr(known, name))
    assert (meta.language is not None) == request.write_language
    return meta


def test_fuzz_plans_are_valid(tok, vocab):
    line_ends = vocab.opens_line.float() * 4.0  # shorter captions: cheaper to run, same paths
    rng = random.Random(0)
    for seed in range(40):
        known = SongMetadata(**{name: value for name, value in (
            ("bpm", rng.randint(30, 300)), ("keyscale", rng.choice(VALID_KEYSCALES)),
            ("timesignature", rng.choice([2, 3, 4, 6]))) if rng.random() < 0.4})
        generate_codes = seed % 3 == 0
        if generate_codes or rng.random() < 0.4:  # codes for an LM-chosen duration: test_scripted_metadata_block
            known = replace(known, duration=rng.choice([10, 11.5]))
        request = PlanRequest("Lo-fi hip hop", "[verse]\nrain on the window", known=known,
                              generate_codes=generate_codes, write_caption=rng.random() < 0.8,
                              write_language=rng.random() < 0.8)
        params = SamplingParams(cfg_scale=rng.choice([1.0, 2.0, 3.5]), temperature=rng.choice([0.0, 0.85, 1.5]),
                                top_k=rng.choice([0, 20]), top_p=1.0 if seed % 4 else 0.9,
                                min_p=rng.choice([0.0, 0.05]), seed=seed)
        lm = HistoryLM(tok.vocab_size, seed=seed, bias=line_ends)
        result = plan(lm, tok, request, params)
        if known.has_planning_fields():
            assert result.cot_tokens == []
            continue
        check_block(tok, result.cot_tokens, known, request)
        grammar = MetadataGrammar(vocab, known, request.write_caption, request.write_language)
        assert len(result.cot_tokens) <= grammar.max_tokens()
        if request.generate_codes:
            assert len(result.codes[0]) == int(known.duration * 5)
            assert all(0 <= c < 64000 for c in result.codes[0])
