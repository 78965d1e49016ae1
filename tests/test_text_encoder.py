"""UMT5 text encoder + tokenizer: checkpoint layout, parity with ComfyUI's own T5 and UMT5BaseTokenizer, ERG q-scale."""
import json
import os
import random
import tempfile
import types
from pathlib import Path

import pytest
import torch

from ace_step.models.v1 import umt5
from fixtures.spm_training import read_spm_model, spm_to_tokenizer_json, train_spm, tiny_corpus, train_tiny_spm
from ace_step.text.umt5_tokenizer import UMT5Tokenizer, parse_prompt_weights
from ace_step.models.operations import ManualCastOps
from fixtures.v1_configs import tiny_umt5
from comfy_inprocess import import_comfy
from measure import max_rel_error, report
from reference import DATA_DIR

KEYS_JSON = DATA_DIR / "ace_step_v1_3.5b.keys.json"
PREFIX = "text_encoders.umt5base."

PROMPTS = [
    "pop, rock, 120 BPM, female vocals",
    "(rock:1.3), pop, (female vocals:0.8), ((upbeat)), electronic",
    "\\(literal\\) parens, (nested (inner:1.5) outer:1.2), end",
    "我爱音乐, Ça va très bien, Москва, 안녕하세요 😀",
    "",
    "   ",
    "a) (b (c",
    "(x:abc), (:1.2), ((a:1.2):0.5), (big:2)",
    "rock embedding:foo, pop",
    "embedding:bar jazz\nembedding:baz, x embedding:",
    "Hold me close until the morning comes\n[chorus]",
]


def tiny_comfy_config(cfg: umt5.UMT5Config) -> dict:
    # The keys ComfyUI's T5 reads (umt5_config_base.json), at our tiny sizes.
    return {"d_ff": cfg.d_ff, "d_kv": cfg.d_kv, "d_model": cfg.d_model, "num_heads": cfg.num_heads,
            "num_layers": cfg.num_layers, "vocab_size": cfg.vocab_size, "dense_act_fn": "gelu_pytorch_tanh",
            "is_gated_act": True, "model_type": "umt5", "layer_norm_epsilon": 1e-6, "eos_token_id": 1,
            "pad_token_id": 0, "relative_attention_num_buckets": 32}


def random_state_dict(cfg: umt5.UMT5Config, seed: int = 0) -> dict:
    """Weights with T5-like activation scales (no 1/sqrt(d) in attention, so q/k stay O(1) per entry)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in umt5.UMT5Encoder(cfg).state_dict().items()}
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("layer_norm.weight"):
            sd[k] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif k.endswith("shared.weight") or k.endswith("relative_attention_bias.weight"):
            sd[k] = torch.randn(shape, generator=g)
        else:
            sd[k] = torch.randn(shape, generator=g) / shape[1] ** 0.5
    return sd


@pytest.fixture(scope="module")
def spm_bytes() -> bytes:
    return train_tiny_spm()


@pytest.fixture(scope="module")
def tiny(spm_bytes):
    cfg = tiny_umt5(vocab_size=UMT5Tokenizer.from_spiece_model(spm_bytes).vocab_size)
    model = umt5.UMT5Encoder(cfg).eval()
    model.load_state_dict(random_state_dict(cfg))
    return model


@pytest.fixture(scope="module")
def comfy_model(tiny):
    """ComfyUI's UMT5 as AceT5Model builds it (SDClipModel around comfy T5), loaded with our tiny weights."""
    import_comfy()
    from comfy import sd1_clip
    import comfy.text_encoders.t5

    ref = sd1_clip.SDClipModel(device="cpu", layer="last", textmodel_json_config=tiny_comfy_config(tiny.config),
                               dtype=torch.float32, special_tokens={"end": 1, "pad": 0},
                               model_class=comfy.text_encoders.t5.T5, enable_attention_masks=True,
                               zero_out_masked=False)
    # strict: our keys + the unused logit_scale are exactly ComfyUI's keys for this component.
    ref.load_state_dict({**tiny.state_dict(), "logit_scale": torch.tensor(4.6055)}, strict=True)
    return ref


def comfy_tokenizer(spm_bytes):
    import_comfy()
    from comfy.text_encoders.ace import UMT5BaseTokenizer

    # As CLIP loading builds it (UMT5BaseTokenizer passes no embeddings folder on to SDTokenizer).
    return UMT5BaseTokenizer(embedding_directory="/nonexistent", tokenizer_data={"spiece_model": spm_bytes})


# ---------------------------------------------------------------- layout


def test_full_size_keys_match_checkpoint():
    expected = {k[len(PREFIX):]: tuple(shape) for k, shape, _ in json.loads(KEYS_JSON.read_text())
                if k.startswith(PREFIX)}
    cfg = umt5.UMT5Config.full_size()
    with torch.device("meta"):
        model = umt5.UMT5Encoder(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unused = umt5.unused_checkpoint_shapes(cfg)
    assert not set(ours) & set(unused)
    assert {**ours, **unused} == expected
    assert umt5.UMT5Config.from_shapes(ours) == cfg
    assert sum(v.numel() for v in model.parameters()) == 281_861_376  # + logit_scale = 281,861,377


def test_tiny_from_shapes_round_trip(tiny):
    shapes = {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    assert umt5.UMT5Config.from_shapes(shapes) == tiny.config
    assert sum(v.numel() for v in tiny.parameters()) * 4 < 5e6


# ---------------------------------------------------------------- encoder parity with ComfyUI


def test_relative_position_buckets_match_comfy():
    import_comfy()
    from comfy.text_encoders.t5 import T5Attention

    rel = torch.arange(-600, 601)[None, :]
    assert torch.equal(umt5.relative_position_bucket(rel), T5Attention._relative_position_bucket(rel))


@pytest.mark.parametrize("masked", [False, True])
def test_hidden_states_match_comfy_t5(tiny, comfy_model, masked):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, tiny.config.vocab_size, (2, 160), generator=g)  # 160 > max distance 128
    mask = None
    if masked:
        mask = torch.ones_like(ids)
        mask[1, 97:] = 0  # second row padded, as a batch of unequal prompts
        ids[1, 97:] = 0
    with torch.no_grad():
        ref = comfy_model.transformer(ids, mask, dtype=torch.float32)[0]
        ours = tiny(ids, mask)
    err = max_rel_error(ours, ref)
    report(f"umt5 hidden states vs ComfyUI T5 ({'masked' if masked else 'no mask'})", err, tokens=160)
    assert err <= 1e-5


@pytest.mark.parametrize("prompt", PROMPTS)
def test_conditioning_matches_comfy_clip_encode(tiny, comfy_model, spm_bytes, prompt):
    """Tokeniser + encoder + ComfyUI's weight rule, end to end against SDClipModel.encode_token_weights."""
    tokens = comfy_tokenizer(spm_bytes).tokenize_with_weights(prompt)
    ref = comfy_model.encode_token_weights(tokens)[0]
    pairs = UMT5Tokenizer.from_spiece_model(spm_bytes).encode_with_weights(prompt)
    ours = umt5.encode_token_weights(tiny, pairs)
    err = max_rel_error(ours, ref)
    weighted = any(w != 1.0 for _, w in pairs)
    report("umt5 CONDITIONING vs ComfyUI encode_token_weights", err, prompt=prompt[:40], weighted=weighted)
    assert err <= 1e-5


def test_bf16_weights_compute_fp32(tiny):
    ids = torch.tensor([[5, 17, 99, 1]])
    ref = tiny(ids)
    half = umt5.UMT5Encoder(tiny.config, operations=ManualCastOps).eval()
    half.load_state_dict(tiny.state_dict())
    half.to(torch.bfloat16)
    with torch.no_grad():
        out32 = half(ids)
        out16 = half(ids, dtype=torch.bfloat16)
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    report("umt5 bf16 weights, fp32 compute vs fp32 weights", max_rel_error(out32, ref))
    assert max_rel_error(out32, ref) < 0.1 and max_rel_error(out16.float(), ref) < 0.2


# ---------------------------------------------------------------- ERG q-scale


def test_q_scale_matches_forward_hooks(tiny, comfy_model):
    ids = torch.randint(3, tiny.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = tiny(ids)
        assert torch.equal(tiny(ids, q_scale={0: 1.0, 1: 1.0}), plain)
        scale = umt5.erg_tag_q_scale(tiny.config.num_layers)
        assert scale == {1: 0.01}
        assert umt5.erg_tag_q_scale(12) == {8: 0.01, 9: 0.01}
        erg = tiny(ids, q_scale=scale)
        assert max_rel_error(erg, plain) > 1e-3

        # The original's way: in-place forward hooks on the q projections, here on our model and on ComfyUI's.
        def hook(module, args, output):
            output.mul_(0.01)

        handles = [m.transformer.encoder.block[i].layer[0].SelfAttention.q.register_forward_hook(hook)
                   for m in (tiny, comfy_model) for i in scale]
        try:
            hooked = tiny(ids)
            hooked_comfy = comfy_model.transformer(ids, None, dtype=torch.float32)[0]
        finally:
            for h in handles:
                h.remove()
    assert torch.equal(erg, hooked)
    err = max_rel_error(erg, hooked_comfy)
    report("umt5 ERG q-scale vs ComfyUI T5 with q hooks", err)
    assert err <= 1e-5
    with pytest.raises(ValueError):
        tiny(ids, q_scale={2: 0.01})


# ---------------------------------------------------------------- tokenizer


def test_spm_training_is_fast_and_deterministic(spm_bytes):
    import time

    t0 = time.perf_counter()
    again = train_spm(tiny_corpus())
    seconds = time.perf_counter() - t0
    report("tiny spm training seconds", round(seconds, 3), bytes=len(again))
    assert again == spm_bytes and seconds < 2.0
    spec = read_spm_model(spm_bytes)
    assert len(spec["pieces"]) == 512
    assert [p["piece"] for p in spec["pieces"][:3]] == ["<pad>", "</s>", "<unk>"] and spec["unk_id"] == 2


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenizer_matches_comfy(spm_bytes, prompt):
    ours = UMT5Tokenizer.from_spiece_model(torch.frombuffer(bytearray(spm_bytes), dtype=torch.uint8))
    ref = comfy_tokenizer(spm_bytes).tokenize_with_weights(prompt)
    assert len(ref) == 1
    assert ours.encode_with_weights(prompt) == ref[0]
    assert ours.encode(prompt) == [t for t, _ in ref[0]]


def test_tokenizer_fuzz_matches_comfy(spm_bytes):
    """Random prompts made of the syntax characters: weight parsing and ids."""
    import_comfy()
    from comfy import sd1_clip

    rng = random.Random(0)
    alphabet = ["a", "b", " ", ",", "(", ")", ":", "1.5", "0", "\\", "\n", "embedding:", "é", "rock"]
    ours = UMT5Tokenizer.from_spiece_model(spm_bytes)
    ref = comfy_tokenizer(spm_bytes)
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        expected = [(sd1_clip.unescape_important(s), w)
                    for s, w in sd1_clip.token_weights(sd1_clip.escape_important(text), 1.0)]
        assert parse_prompt_weights(text) == expected, text
        assert ours.encode_with_weights(text) == ref.tokenize_with_weights(text)[0], text


def test_tokenizer_json_path_equals_spm_path(spm_bytes, tmp_path):
    folder = tmp_path / "umt5-base"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(spm_to_tokenizer_json(spm_bytes), encoding="utf-8")
    spm_tok = UMT5Tokenizer.from_spiece_model(spm_bytes)
    for hf_tok in (UMT5Tokenizer.from_tokenizer_json(folder), UMT5Tokenizer.from_tokenizer_json(folder / "tokenizer.json")):
        assert hf_tok.vocab_size == spm_tok.vocab_size == 512
        for prompt in PROMPTS + ["  a   b ", "ＡＢＣ ﬁ", "tab\there", "x\u00a0y\u3000z", "e\u0301"]:
            assert hf_tok.encode(prompt) == spm_tok.encode(prompt), prompt
            assert hf_tok.encode(prompt, weight_syntax=False) == spm_tok.encode(prompt, weight_syntax=False), prompt
    # Known difference: the HF file matches control pieces written in the text, SentencePiece reads them as text.
    assert hf_tok.encode("a </s>", weight_syntax=False) == hf_tok.encode("a", weight_syntax=False)[:-1] + [1, 1]


def test_original_truncation(spm_bytes):
    tok = UMT5Tokenizer.from_spiece_model(spm_bytes)
    long_prompt = ", ".join(["rock", "pop", "jazz"] * 200)
    ids = tok.encode_original(long_prompt)
    assert len(ids) == 256 and ids[-1] == 1
    assert ids[:-1] == tok.encode(long_prompt, weight_syntax=False)[:255]
    assert tok.encode("(rock:1.5)", weight_syntax=False) != tok.encode("(rock:1.5)")
    assert tok.encode("") == [1]


def test_tokenizer_json_equals_transformers_converter(spm_bytes):
    """Our protobuf-free converter writes the same tokenizer.json as transformers' T5Converter (test-only import)."""
    from transformers import T5Tokenizer
    from transformers.convert_slow_tokenizer import T5Converter

    spec = read_spm_model(spm_bytes)
    ns = types.SimpleNamespace
    # T5Converter normally parses the proto with protobuf (not installed); hand it the same fields read our way.
    proto = ns(pieces=[ns(**p) for p in spec["pieces"]],
               trainer_spec=ns(model_type=1, unk_id=spec["unk_id"], byte_fallback=False, unk_piece="<unk>"),
               normalizer_spec=ns(precompiled_charsmap=spec["precompiled_charsmap"], add_dummy_prefix=True))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "spiece.model")
        Path(path).write_bytes(spm_bytes)
        converter = T5Converter.__new__(T5Converter)
        converter.original_tokenizer = T5Tokenizer(vocab_file=path, extra_ids=0, legacy=True)
        converter.proto = proto
        theirs = json.loads(converter.converted().to_str())
    assert json.loads(spm_to_tokenizer_json(spm_bytes)) == theirs
