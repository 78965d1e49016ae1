"""Qwen3 text encoder and 5 Hz LM (ace_step/models/v15/qwen3.py) against transformers' Qwen3Model /
Qwen3ForCausalLM built from the same tiny config with the same random weights, fp32.

Tolerance: max |ours - theirs| <= 1e-5 * max |theirs| over the real (non-padding) tokens."""
import pytest
import torch
import transformers

from ace_step.models.v15.qwen3 import FULL_SIZES, KVCache, Qwen3CausalLM, Qwen3Config, Qwen3Model, \
    audio_code_ids, default_positions
from fixtures.v15_configs import tiny_qwen3
from fixtures.recording_operations import counting_attention, plain_weighted_modules, recording_operations
from measure import report as record

REL_TOL = 1e-5
PROMPT_LENGTHS = (5, 8, 3)  # left padded to 8


def hf_config(config: Qwen3Config) -> transformers.Qwen3Config:
    return transformers.Qwen3Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings, attn_implementation="eager",
        initializer_range=0.1)


def hf_lm(config: Qwen3Config, seed: int = 0) -> transformers.Qwen3ForCausalLM:
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(hf_config(config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # ones by default: make every norm matter
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


def ours_from(hf_model, config: Qwen3Config, **kwargs) -> Qwen3CausalLM:
    model = Qwen3CausalLM(config, **kwargs).eval()
    state = hf_model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")  # transformers lists the tied head; the file and our model hold it once
    model.load_state_dict(state, strict=True)
    return model


def left_padded_batch(vocab: int, seed: int = 1):
    """ids [B, 8] with each row's prompt at the end, key_padding [B, 8] (True = real)."""
    g = torch.Generator().manual_seed(seed)
    width = max(PROMPT_LENGTHS)
    ids = torch.randint(0, vocab, (len(PROMPT_LENGTHS), width), generator=g)
    keep = torch.arange(width)[None] >= width - torch.tensor(PROMPT_LENGTHS)[:, None]
    return ids.masked_fill(~keep, 0), keep


def rel_error(ours: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> float:
    return ((ours - ref)[keep].abs().max() / ref[keep].abs().max()).item()


@torch.no_grad()
def test_hidden_states_match_transformers_on_a_left_padded_batch():
    config = tiny_qwen3()
    ref_lm = hf_lm(config)
    ours = ours_from(ref_lm, config).model
    ids, keep = left_padded_batch(config.vocab_size)
    positions = default_positions(keep, torch.arange(ids.shape[1]), ids.shape[0])
    assert positions[0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4]  # row 0: 3 pads, then its 5 tokens from 0
    ref = ref_lm.model(input_ids=ids, attention_mask=keep.long(), position_ids=positions).last_hidden_state
    err = rel_error(ours(ids, key_padding=keep), ref, keep)
    record("v15_qwen3_hidden_rel_err_padded", err)
    assert err <= REL_TOL
    # Rows are independent: row 1 (no padding) alone, without a mask, gives the same states.
    alone = ours(ids[1:2])
    assert rel_error(alone, ref[1:2], keep[1:2]) <= REL_TOL
    assert torch.equal(ours.embed(ids), ref_lm.model.embed_tokens(ids))  # the lyric path: embeddings only


@pytest.mark.parametrize("tied", [True, False])
@torch.no_grad()
def test_logits_match_transformers(tied):
    config = tiny_qwen3(tie_word_embeddings=tied)
    ref_lm = hf_lm(config, seed=2)
    ours = ours_from(ref_lm, config)
    ids, keep = left_padded_batch(config.vocab_size, seed=3)
    positions = default_positions(keep, torch.arange(ids.shape[1]), ids.shape[0])
    ref = ref_lm(input_ids=ids, attention_mask=keep.long(), position_ids=positions).logits
    err = rel_error(ours(ids, key_padding=keep), ref, keep)
    record(f"v15_qwen3_logits_rel_err_{'tied' if tied else 'untied'}", err)
    assert err <= REL_TOL
    last = ours(ids, key_padding=keep, logits_at=-1)
    assert last.shape == (ids.shape[0], 1, config.vocab_size)
    assert rel_error(last, ref[:, -1:], torch.ones_like(last, dtype=torch.bool)) <= REL_TOL
    picked = ours(ids, key_padding=keep, logits_at=torch.tensor([2, 7]))
    assert rel_error(picked, ref[:, [2, 7]], keep[:, [2, 7], None].expand_as(picked)) <= REL_TOL


@torch.no_grad()
def test_kv_cached_decoding_equals_a_full_forward():
    """Prefill a left-padded batch, then decode 6 tokens one at a time through the static cache (explicit slots and
    positions on the last steps, as a CUDA-graph caller would pass them): every step's last-token logits equal a
    full forward over the whole sequence, ours and transformers'."""
    config = tiny_qwen3()
    ref_lm = hf_lm(config, seed=4)
    ours = ours_from(ref_lm, config)
    ids, keep = left_padded_batch(config.vocab_size, seed=5)
    batch, prompt = ids.shape
    steps = 6
    cache = KVCache.allocate(config, batch, prompt + steps, torch.float32, "cpu")
    padding = torch.zeros(batch, cache.max_len, dtype=torch.bool)
    padding[:, :prompt] = keep
    step_logits = [ours(ids, key_padding=padding, cache=cache, logits_at=-1)]
    new_tokens = torch.randint(0, config.vocab_size, (batch, steps), generator=torch.Generator().manual_seed(6))
    for step in range(steps):
        slot = prompt + step
        padding[:, slot] = True
        token = new_tokens[:, step:step + 1]
        if step < 3:  # the cache picks the slot
            step_logits.append(ours(token, key_padding=padding, cache=cache))
        else:  # static-shape call: every argument a tensor
            slots = torch.tensor([slot])
            positions = default_positions(padding, slots, batch)
            step_logits.append(ours(token, key_padding=padding, cache=cache, cache_slots=slots,
                                    positions=positions))
    full_ids = torch.cat([ids, new_tokens], 1)
    full_keep = padding
    full_positions = default_positions(full_keep, torch.arange(full_ids.shape[1]), batch)
    full = ours(full_ids, key_padding=full_keep)
    ref = ref_lm(input_ids=full_ids, attention_mask=full_keep.long(), position_ids=full_positions).logits
    cached = torch.cat(step_logits, 1)  # logits at positions prompt-1 .. prompt+steps-1
    window = slice(prompt - 1, prompt + steps)
    everything = torch.ones_like(cached, dtype=torch.bool)
    err_full = rel_error(cached, full[:, window], everything)
    err_ref = rel_error(cached, ref[:, window], everything)
    record("v15_qwen3_kv_cache_vs_full_rel_err", err_full)
    record("v15_qwen3_kv_cache_vs_transformers_rel_err", err_ref)
    assert err_full <= REL_TOL and err_ref <= REL_TOL


def test_full_size_configs_round_trip_through_shapes_on_meta():
    """Each real size builds on the meta device and reads itself back from its own state-dict shapes; the tied
    head adds no tensor. Parameter counts are recorded."""
    for name, config in FULL_SIZES.items():
        with torch.device("meta"):
            model = Qwen3CausalLM(config)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert "lm_head.weight" not in shapes
        assert Qwen3Config.from_shapes(shapes) == config
        assert Qwen3Config.from_shapes({k[len("model."):]: v for k, v in shapes.items()}) == config
        record(f"v15_qwen3_{name}_parameters", sum(p.numel() for p in model.parameters()))
    assert len(audio_code_ids(FULL_SIZES["lm-1.7B"])) == 64_000
    with pytest.raises(ValueError, match="no audio-code tokens"):
        audio_code_ids(FULL_SIZES["embedding-0.6B"])
    with pytest.raises(ValueError, match="unknown Qwen3 size"):
        Qwen3Config.full_size("lm-8B")
    with pytest.raises(ValueError, match="num_heads"):
        Qwen3Config(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=3, num_kv_heads=2)


@torch.no_grad()
def test_layers_come_from_operations_and_attention_from_the_injected_function():
    config = tiny_qwen3(tie_word_embeddings=False)
    operations, counts = recording_operations()
    attention, calls = counting_attention()
    model = Qwen3CausalLM(config, operations=operations, attention=attention)
    assert plain_weighted_modules(model, operations) == []
    # Per layer: 7 Linear + 4 RMSNorm; plus the embedding, the final norm and the untied head.
    assert counts == {"Linear": 7 * config.num_layers + 1, "RMSNorm": 4 * config.num_layers + 1, "Embedding": 1}
    options = {"marker": 1}
    ids, keep = left_padded_batch(config.vocab_size)
    model(ids, key_padding=keep, transformer_options=options)
    assert len(calls) == config.num_layers and all(c is options for c in calls)


def test_bad_inputs_are_named():
    model = Qwen3Model(tiny_qwen3())
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="key_padding must be"):
        model(ids, key_padding=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    cache = KVCache.allocate(model.config, 2, 4, torch.float32, "cpu")
    model(ids, cache=cache)
    with pytest.raises(ValueError, match="KV cache full"):
        model(ids[:, :1], cache=cache)
