"""ACE-Step DiT + Conformer lyric encoder: checkpoint layout, config inference, parity with ComfyUI's own
implementation, mask semantics of the original pipeline, bf16 smoke."""
import copy
import json

import pytest
import torch

from ace_step.models.v1.lyric_encoder import LyricEncoderConfig, relative_position_table, relative_to_absolute
from ace_step.models.v1.rope import apply_rope, rope_tables
from ace_step.models.v1.transformer import ACEStepTransformer, TransformerConfig, unused_checkpoint_shapes
from fixtures.v1_configs import tiny_lyric_encoder, tiny_transformer
from comfy_inprocess import import_comfy
from measure import max_rel_error, report
from reference import REFERENCE_DIR

REFERENCE = REFERENCE_DIR
KEYS_JSON = REFERENCE / "data" / "ace_step_v1_3.5b.keys.json"
PREFIX = "model.diffusion_model."
PARITY_TOL = 1e-5


def checkpoint_shapes() -> dict:
    if not KEYS_JSON.exists():
        pytest.skip(f"no reference key list at {KEYS_JSON}")
    entries = json.loads(KEYS_JSON.read_text())
    return {k[len(PREFIX):]: tuple(shape) for k, shape, _ in entries if k.startswith(PREFIX)}


def module_shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ layout
def test_full_size_layout_matches_checkpoint():
    cfg = TransformerConfig.full_size()
    with torch.device("meta"):
        model = ACEStepTransformer(cfg)
    ours, unused = module_shapes(model), unused_checkpoint_shapes(cfg)
    assert not set(ours) & set(unused)
    assert {**ours, **unused} == checkpoint_shapes()
    assert not list(model.buffers())  # no derived state: RoPE / position tables are computed on the fly


def test_from_shapes_round_trip():
    assert TransformerConfig.from_shapes(checkpoint_shapes()) == TransformerConfig.full_size()
    tiny = tiny_transformer()
    with torch.device("meta"):
        model = ACEStepTransformer(tiny)
    shapes = {**module_shapes(model), **unused_checkpoint_shapes(tiny)}
    assert TransformerConfig.from_shapes(shapes) == tiny
    # Without the dead tensors (what our loader keeps) only the training-only SSL dims are lost.
    assert TransformerConfig.from_shapes(module_shapes(model)) == TransformerConfig(
        **{**tiny.__dict__, "ssl_latent_dims": ()}
    )
    lyric = {k[len("lyric_encoder."):]: v for k, v in shapes.items() if k.startswith("lyric_encoder.")}
    assert LyricEncoderConfig.from_shapes(lyric) == tiny.lyric_encoder_config == tiny_lyric_encoder()
    assert sum(v.numel() for v in model.parameters()) * 4 < 5e6  # tiny stays < 5 MB of fp32


# ------------------------------------------------------------------------------------------------ pieces
def test_rope_interleaved_pairs_on_half_split_table():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 5, 8)
    cos, sin = rope_tables(5, 8, theta=1e6)
    out = apply_rope(x, cos, sin)
    freqs = [1e6 ** (-2 * (d % 4) / 8) for d in range(8)]
    for p in range(5):
        for k in range(4):
            a, b = x[0, 0, p, 2 * k].item(), x[0, 0, p, 2 * k + 1].item()
            fa, fb = p * freqs[2 * k], p * freqs[2 * k + 1]
            ea = a * torch.tensor(fa).cos() - b * torch.tensor(fa).sin()
            eb = b * torch.tensor(fb).cos() + a * torch.tensor(fb).sin()
            assert torch.allclose(out[0, 0, p, 2 * k], ea, atol=1e-5)
            assert torch.allclose(out[0, 0, p, 2 * k + 1], eb, atol=1e-5)


def test_relative_shift_matches_pad_and_reshape():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 6, 11)
    # Transformer-XL's formulation, written out for the check.
    padded = torch.cat((torch.zeros(2, 3, 6, 1), scores), dim=-1).view(2, 3, 12, 6)
    expected = padded[:, :, 1:].reshape(2, 3, 6, 11)[..., :6]
    assert torch.equal(relative_to_absolute(scores), expected)
    table = relative_position_table(4, 6)
    assert table.shape == (7, 6) and torch.allclose(table[3], torch.tensor([0.0, 1.0] * 3))  # row of offset 0


# ------------------------------------------------------------------------------------------------ models
def realistic_init_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Default init keeps activations O(1); additionally make every norm affine, bias and modulation table
    visibly non-trivial so that a wrongly wired one cannot hide (zero-init gates would make parity vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "scale_shift_table" in name:
                p.copy_(0.5 * noise)
            elif "norm" in name or "early_conv_layers.1" in name or "embed.out.1" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            elif name.endswith("bias") or "pos_bias" in name:
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise * p.std().clamp_min(1e-3))  # same scale as the default init, different draw
    return model


@pytest.fixture(scope="module")
def ours():
    torch.manual_seed(0)
    return realistic_init_(ACEStepTransformer(tiny_transformer())).eval()


@pytest.fixture(scope="module")
def theirs(ours):
    import_comfy()
    import comfy.ops
    from comfy.ldm.ace.lyric_encoder import ConformerEncoder
    from comfy.ldm.ace.model import ACEStepTransformer2DModel

    cfg, ops = ours.config, comfy.ops.disable_weight_init
    common = dict(dtype=torch.float32, device="cpu", operations=ops)
    model = ACEStepTransformer2DModel(
        in_channels=cfg.in_channels, num_layers=cfg.num_layers, inner_dim=cfg.hidden_size,
        attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        out_channels=cfg.out_channels, max_position=32768, rope_theta=cfg.rope_theta,
        speaker_embedding_dim=cfg.speaker_embedding_dim, text_embedding_dim=cfg.text_embedding_dim,
        ssl_latent_dims=list(cfg.ssl_latent_dims), lyric_encoder_vocab_size=cfg.lyric_vocab_size,
        lyric_hidden_size=cfg.lyric_hidden_size, patch_size=list(cfg.patch_size), max_height=16, max_width=32768,
        **common,
    )
    # ComfyUI builds its Conformer with the full-size defaults whatever lyric_hidden_size is; swap in one of
    # its own class with the tiny widths.
    model.lyric_encoder = ConformerEncoder(
        input_size=cfg.lyric_hidden_size, output_size=cfg.lyric_hidden_size, attention_heads=cfg.lyric_encoder_heads,
        linear_units=cfg.lyric_encoder_linear_units, num_blocks=cfg.lyric_encoder_blocks, static_chunk_size=0, **common,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # the dead tensors: never read, but keep them finite
    missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and set(missing) == set(unused_checkpoint_shapes(cfg))
    return model.eval()


def make_inputs(cfg, batch, width, n_text, n_lyric, seed):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, cfg.in_channels, cfg.patch_size[0], width, generator=g),
        timestep=torch.rand(batch, generator=g) * 1000,
        text_hidden=torch.randn(batch, n_text, cfg.text_embedding_dim, generator=g),
        lyric_ids=torch.randint(0, cfg.lyric_vocab_size, (batch, n_lyric), generator=g),
    )


SHAPES = [  # (batch, width W, text tokens N, lyric tokens L, lyrics_strength)
    (2, 37, 5, 11, 1.0),
    (1, 130, 9, 3, 0.7),
]


@pytest.mark.parametrize("batch,width,n_text,n_lyric,strength", SHAPES)
@torch.no_grad()
def test_parity_with_comfyui(ours, theirs, batch, width, n_text, n_lyric, strength):
    cfg = ours.config
    inp = make_inputs(cfg, batch, width, n_text, n_lyric, seed=width)
    speaker = torch.zeros(batch, cfg.speaker_embedding_dim)

    emb = ours.lyric_embs(inp["lyric_ids"])
    lyr_err = max_rel_error(ours.lyric_encoder(emb), theirs.lyric_encoder(emb, None, 1, -1)[0])
    report("transformer.lyric_encoder_parity_max_rel", lyr_err, shape=f"B{batch} L{n_lyric}")
    assert lyr_err <= PARITY_TOL

    v_ours = ours(inp["x"], inp["timestep"], inp["text_hidden"], inp["lyric_ids"], lyrics_strength=strength)
    v_theirs = theirs(
        inp["x"], inp["timestep"], context=inp["text_hidden"], lyric_token_idx=inp["lyric_ids"],
        speaker_embeds=speaker, lyrics_strength=strength,
    )
    assert v_ours.shape == (batch, 8, 16, width)
    err = max_rel_error(v_ours, v_theirs)
    report("transformer.velocity_parity_max_rel", err, shape=f"B{batch} W{width} N{n_text} L{n_lyric}")
    assert err <= PARITY_TOL
    assert v_theirs.abs().mean() > 0.05  # the comparison is not vacuous


@torch.no_grad()
def test_parity_with_comfyui_masked_original_semantics(ours, theirs):
    """With masks ComfyUI's module runs the original pipeline's code path (latent mask in the linear
    attention, outer(latent, cond) mask in cross-attention, pad mask in the Conformer)."""
    cfg = ours.config
    inp = make_inputs(cfg, 2, 29, 6, 10, seed=5)
    text_mask = torch.ones(2, 6)
    text_mask[1, 4:] = 0
    lyric_mask = torch.ones(2, 10)
    lyric_mask[0, 7:] = 0
    latent_mask = torch.ones(2, 29)

    emb = ours.lyric_embs(inp["lyric_ids"])
    lyr_err = max_rel_error(ours.lyric_encoder(emb, lyric_mask), theirs.lyric_encoder(emb, lyric_mask, 1, -1)[0])
    report("transformer.lyric_encoder_parity_masked_max_rel", lyr_err)
    assert lyr_err <= PARITY_TOL

    v_ours = ours(inp["x"], inp["timestep"], inp["text_hidden"], inp["lyric_ids"], text_mask=text_mask,
                  lyric_mask=lyric_mask, latent_mask=latent_mask)
    v_theirs = theirs(
        inp["x"], inp["timestep"], attention_mask=latent_mask, context=inp["text_hidden"],
        text_attention_mask=text_mask, lyric_token_idx=inp["lyric_ids"], lyric_mask=lyric_mask,
        speaker_embeds=torch.zeros(2, cfg.speaker_embedding_dim),
    )
    err = max_rel_error(v_ours, v_theirs)
    report("transformer.velocity_parity_masked_max_rel", err)
    assert err <= PARITY_TOL


def erg_hooks(model, lyric_layers, dit_layers, tau=0.01):
    """The original pipeline's ERG: scale query projections' outputs in place."""

    def hook(module, args, output):
        output.mul_(tau)

    handles = [model.lyric_encoder.encoders[i].self_attn.linear_q.register_forward_hook(hook) for i in lyric_layers]
    for i in dit_layers:
        block = model.transformer_blocks[i]
        handles += [block.attn.to_q.register_forward_hook(hook), block.cross_attn.to_q.register_forward_hook(hook)]
    return handles


@torch.no_grad()
def test_erg_hooks_take_effect_like_comfyui(ours, theirs):
    cfg = ours.config
    inp = make_inputs(cfg, 1, 21, 4, 6, seed=9)
    plain = ours(inp["x"], inp["timestep"], inp["text_hidden"], inp["lyric_ids"])
    handles = erg_hooks(ours, [1], [0]) + erg_hooks(theirs, [1], [0])
    try:
        hooked = ours(inp["x"], inp["timestep"], inp["text_hidden"], inp["lyric_ids"])
        ref = theirs(inp["x"], inp["timestep"], context=inp["text_hidden"], lyric_token_idx=inp["lyric_ids"],
                     speaker_embeds=torch.zeros(1, cfg.speaker_embedding_dim))
    finally:
        for h in handles:
            h.remove()
    assert max_rel_error(hooked, plain) > 1e-3
    err = max_rel_error(hooked, ref)
    report("transformer.velocity_parity_erg_hooks_max_rel", err)
    assert err <= PARITY_TOL


# ------------------------------------------------------------------------------------------------ masks
@torch.no_grad()
def test_all_ones_masks_equal_unmasked(ours):
    cfg = ours.config
    inp = make_inputs(cfg, 2, 23, 5, 8, seed=1)
    plain = ours(inp["x"], inp["timestep"], inp["text_hidden"], inp["lyric_ids"])
    masked = ours(inp["x"], inp["timestep"], inp["text_hidden"], inp["lyric_ids"], text_mask=torch.ones(2, 5),
                  lyric_mask=torch.ones(2, 8, dtype=torch.long), latent_mask=torch.ones(2, 23))
    assert max_rel_error(masked, plain) < 1e-6
    cond, cond_mask = ours.encode_condition(inp["text_hidden"], inp["lyric_ids"], lyric_mask=torch.ones(2, 8))
    assert cond.shape == (2, 1 + 5 + 8, cfg.hidden_size) and torch.equal(cond_mask, torch.ones(2, 14))


@torch.no_grad()
def test_padded_lyrics_do_not_leak(ours):
    cfg = ours.config
    inp = make_inputs(cfg, 2, 31, 5, 12, seed=2)
    lyric_mask = torch.ones(2, 12)
    lyric_mask[0, 7:] = 0  # item 0 has 7 real lyric tokens, padded to 12
    text_mask = torch.ones(2, 5)
    args = (inp["x"], inp["timestep"], inp["text_hidden"])
    padded = ours(*args, inp["lyric_ids"], text_mask=text_mask, lyric_mask=lyric_mask)

    other_pad = inp["lyric_ids"].clone()
    other_pad[0, 7:] = torch.tensor([0, 2, 6683, 5, 1])
    repadded = ours(*args, other_pad, text_mask=text_mask, lyric_mask=lyric_mask)
    assert torch.allclose(repadded[0], padded[0], rtol=0, atol=1e-6)
    assert torch.equal(repadded[1], padded[1])

    # ... and item 0 equals a run on its real tokens alone (relative / RoPE positions are unchanged by
    # trailing padding).
    alone = ours(inp["x"][:1], inp["timestep"][:1], inp["text_hidden"][:1], inp["lyric_ids"][:1, :7])
    err = max_rel_error(padded[:1], alone)
    report("transformer.padded_vs_unpadded_max_rel", err)
    assert err < 1e-5


@torch.no_grad()
def test_encode_condition_is_reusable(ours):
    cfg = ours.config
    inp = make_inputs(cfg, 2, 17, 3, 4, seed=3)
    cond, mask = ours.encode_condition(inp["text_hidden"], inp["lyric_ids"], lyrics_strength=torch.tensor([1.0, 0.5]))
    assert mask is None
    full = ours.encode_condition(inp["text_hidden"], inp["lyric_ids"])[0]
    half = ours.encode_condition(inp["text_hidden"], inp["lyric_ids"], lyrics_strength=0.5)[0]
    assert torch.equal(cond[0], full[0]) and torch.equal(cond[1], half[1])  # per-item strength
    assert torch.equal(half[:, :-4], full[:, :-4])  # only the 4 lyric tokens are scaled
    assert torch.allclose(2 * half[:, -4:], full[:, -4:], atol=1e-6)
    v1 = ours.decode(inp["x"], inp["timestep"], cond)
    v2 = ours(inp["x"], inp["timestep"], inp["text_hidden"], inp["lyric_ids"], lyrics_strength=torch.tensor([1.0, 0.5]))
    assert torch.equal(v1, v2)
    # A scalar timestep is broadcast over the batch.
    assert torch.equal(ours.decode(inp["x"], 500.0, cond), ours.decode(inp["x"], torch.tensor([500.0, 500.0]), cond))


# ------------------------------------------------------------------------------------------------ bf16
@torch.no_grad()
def test_bf16_smoke(ours):
    cfg = ours.config
    inp = make_inputs(cfg, 2, 40, 5, 9, seed=4)
    ref = ours(inp["x"], inp["timestep"], inp["text_hidden"], inp["lyric_ids"])
    half = copy.deepcopy(ours).to(torch.bfloat16)
    out = half(inp["x"].bfloat16(), inp["timestep"], inp["text_hidden"], inp["lyric_ids"])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    err = max_rel_error(out.float(), ref)
    report("transformer.bf16_vs_fp32_max_rel", err)
    assert err < 0.05
