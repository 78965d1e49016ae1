"""ACE-Step 1.5 DiT (ace_step/models/v15/: model.py, dit.py, condition_encoder.py, audio_codes.py) against the golden
fixtures made with ComfyUI's native implementation (shared/reference/data/ace15: comfy/ldm/ace/ace_step15.py @
1d5eae081b76cfdf721ae231bd3f8458e365111c, reduced config, fp32, every intermediate).

Tolerance on every tensor: |ours - ref| <= 2e-5 + 1e-4 |ref| elementwise (FSQ codes and masks exactly).
ComfyUI's forward puts every timbre reference in batch row 0; the golden calls reproduce that with
`refer_order=zeros(B)`, the default path gives each row its own reference (checked against the fixture's
single-item call).
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from ace_step.models.v15.condition_encoder import pack_sequences, unpack_references
from ace_step.models.v15.dit import DiTConfig
from ace_step.models.v15.layers import rope_tables
from ace_step.models.v15.model import PAD_AUDIO_CODE, AceStep15, AceStep15Config
from fixtures.v15_configs import dit_decoder_layout, golden_dit_config, real_dit_layouts
from fixtures.recording_operations import counting_attention, plain_weighted_modules, recording_operations
from measure import report
from reference import DATA_DIR

GOLDEN = DATA_DIR / "ace15"
ATOL, RTOL = 2e-5, 1e-4
# call -> (timestep input, reference input, is_covers, audio codes input, rows)
CALLS = {
    "full_ref_t1": ("timestep_t1", "refer_audio", True, None, slice(None)),
    "full_ref_t2": ("timestep_t2", "refer_audio", True, None, slice(None)),
    "noref_t1": ("timestep_t1", "silence_refer_audio", False, None, slice(None)),
    "noref_t2": ("timestep_t2", "silence_refer_audio", False, None, slice(None)),
    "codes_t1": ("timestep_t1", "silence_refer_audio", None, "audio_codes", slice(None)),
    "single_item1_full_ref_t1": ("timestep_t1", "refer_audio", True, None, slice(1, 2)),
}


@pytest.fixture(scope="module")
def golden():
    weights = load_file(GOLDEN / "weights.safetensors")
    config = AceStep15Config.from_shapes({k: v.shape for k, v in weights.items()}, sliding_window=4)
    model = AceStep15(config).eval()
    model.load_state_dict(weights, strict=True)
    return model, load_file(GOLDEN / "inputs.safetensors"), load_file(GOLDEN / "outputs.safetensors")


def check(name: str, ours: torch.Tensor, ref: torch.Tensor, worst: dict):
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    if not ref.dtype.is_floating_point:
        assert torch.equal(ours.to(ref.dtype), ref), name
        return
    diff = (ours.double() - ref.double()).abs()
    bad = diff > ATOL + RTOL * ref.double().abs()
    assert not bad.any(), f"{name}: {int(bad.sum())} values off, max abs {diff.max().item():.3g}"
    worst["abs"] = max(worst["abs"], diff.max().item())
    worst["rel"] = max(worst["rel"], (diff.max() / ref.abs().max()).item())


class Recorder:
    """Forward hooks that keep the outputs (and decoder inputs) under the fixture's intermediate names."""

    def __init__(self, model: AceStep15):
        self.seen, self.handles = {}, []
        dec, enc = model.decoder, model.encoder
        outputs = {"text_projector": enc.text_projector, "lyric_encoder": enc.lyric_encoder,
                   "timbre_vectors": enc.timbre_encoder, "encoder": enc, "detokenizer_out": model.detokenizer,
                   "decoder.time_embed": dec.time_embed, "decoder.time_embed_r": dec.time_embed_r,
                   "decoder.proj_in": dec.proj_in, "decoder.condition_embedder": dec.condition_embedder,
                   "decoder.norm_out_raw": dec.norm_out, "decoder.proj_out": dec.proj_out,
                   "decoder.output": dec}
        outputs.update({f"decoder.layer_{i}": layer for i, layer in enumerate(dec.layers)})
        for name, module in outputs.items():
            self.handles.append(module.register_forward_hook(self._keep(name)))
        self.handles.append(model.detokenizer.register_forward_pre_hook(
            lambda m, args: self.seen.__setitem__("detokenizer_in", args[0])))
        self.handles.append(dec.register_forward_pre_hook(self._decoder_inputs, with_kwargs=True))

    def _keep(self, name):
        def hook(module, args, out):
            if isinstance(out, tuple):
                for i, item in enumerate(out):
                    self.seen[f"{name}.{i}"] = item
            else:
                self.seen[name] = out
        return hook

    def _decoder_inputs(self, module, args, kwargs):
        x, timestep, context_latents = args[:3]
        timestep_r = kwargs.get("timestep_r", args[5] if len(args) > 5 else None)
        timestep_r = timestep if timestep_r is None else timestep_r
        self.seen.update({"decoder.in.hidden_states": x, "decoder.in.timestep": timestep,
                          "decoder.in.timestep_r": timestep_r, "decoder.in.context_latents": context_latents})

    def close(self):
        for handle in self.handles:
            handle.remove()


def check_decoder(prefix: str, seen: dict, outputs: dict, head_dim: int, worst: dict):
    names = [n[len(prefix) + 1:] for n in outputs if n.startswith(prefix + ".decoder.")]
    for name in names:
        if name.startswith("decoder.rope."):
            tokens = outputs[f"{prefix}.{name}"].shape[0]
            tables = rope_tables(torch.arange(tokens), head_dim, 1_000_000.0, torch.float32)
            check(f"{prefix}.{name}", tables[int(name[-1])], outputs[f"{prefix}.{name}"], worst)
        elif name != "decoder.in.encoder_hidden_states":
            check(f"{prefix}.{name}", seen[name], outputs[f"{prefix}.{name}"], worst)


@torch.no_grad()
@pytest.mark.parametrize("call", list(CALLS))
def test_golden_forward_and_every_intermediate(golden, call):
    model, inputs, outputs = golden
    timestep, refer, covers, codes, rows = CALLS[call]
    batch = inputs["x"][rows].shape[0]
    recorder = Recorder(model)
    try:
        out = model(inputs["x"][rows], inputs[timestep][rows], inputs["text_hidden_states"][rows],
                    inputs["lyric_hidden_states"][rows], inputs[refer][rows],
                    audio_codes=None if codes is None else inputs[codes][rows], is_covers=covers,
                    refer_order=torch.zeros(batch, dtype=torch.long))
    finally:
        recorder.close()
    seen, worst = recorder.seen, {"abs": 0.0, "rel": 0.0}
    if covers is False:  # ComfyUI detokenizes the reference even when it discards the result; we skip it
        refer_latents = inputs[refer][rows].movedim(-1, -2)
        seen["detokenizer_in"] = model.tokenizer.tokenize(refer_latents)[0]
        seen["detokenizer_out"] = model.detokenizer(seen["detokenizer_in"])
    timbre, timbre_keep = unpack_references(seen["timbre_vectors"], torch.zeros(batch, dtype=torch.long), batch)
    seen.update({"timbre_encoder.0": timbre, "timbre_encoder.1": timbre_keep, "output": out})
    for name in ("output", "text_projector", "lyric_encoder", "timbre_encoder.0", "timbre_encoder.1", "encoder.0",
                 "detokenizer_in", "detokenizer_out"):
        check(f"{call}.{name}", seen[name], outputs[f"{call}.{name}"], worst)
    check(f"{call}.memory", seen["encoder.0"], outputs[f"{call}.decoder.in.encoder_hidden_states"], worst)
    assert seen["encoder.1"] is None  # no masks: ComfyUI's plain concatenation
    check_decoder(call, seen, outputs, model.config.decoder.head_dim, worst)
    report(f"v15_dit_golden_{call}_max_abs", worst["abs"])
    report(f"v15_dit_golden_{call}_max_rel", worst["rel"])


@torch.no_grad()
def test_golden_decoder_alone_with_a_distinct_timestep_r(golden):
    model, inputs, outputs = golden
    recorder = Recorder(model)
    try:
        out = model.decoder(inputs["dd_hidden_states"], inputs["dd_timestep"], inputs["dd_context_latents"],
                            model.decoder.memory_kv(inputs["dd_encoder_hidden_states"]),
                            timestep_r=inputs["dd_timestep_r"])
    finally:
        recorder.close()
    worst = {"abs": 0.0, "rel": 0.0}
    check("decoder_direct.output", out, outputs["decoder_direct.output"], worst)
    check_decoder("decoder_direct", recorder.seen, outputs, model.config.decoder.head_dim, worst)
    report("v15_dit_golden_decoder_direct_max_abs", worst["abs"])


@torch.no_grad()
def test_golden_masked_packing(golden):
    """ComfyUI's encoder with masks packs each row's real tokens first (its lyric encoder ignores the mask)."""
    model, inputs, outputs = golden
    enc = model.encoder
    order = torch.zeros(2, dtype=torch.long)
    timbre, timbre_keep = unpack_references(enc.timbre_encoder(inputs["refer_audio"].movedim(-1, -2)), order, 2)
    lyrics = enc.lyric_encoder(inputs["lyric_hidden_states"])
    memory, keep = pack_sequences(lyrics, timbre, inputs["lyric_attention_mask"].bool(), timbre_keep)
    memory, keep = pack_sequences(memory, enc.text_projector(inputs["text_hidden_states"]), keep,
                                  inputs["text_attention_mask"].bool())
    worst = {"abs": 0.0, "rel": 0.0}
    check("encoder_masked.encoder_hidden", memory, outputs["encoder_masked.encoder_hidden"], worst)
    check("encoder_masked.encoder_mask", keep, outputs["encoder_masked.encoder_mask"], worst)


def test_from_shapes_reads_the_golden_config(golden):
    model, _, _ = golden
    assert model.config == golden_dit_config()
    config = json.loads((GOLDEN / "config.json").read_text())
    assert model.config.decoder.layer_types == tuple(config["_resolved_layer_types"])


@torch.no_grad()
def test_default_path_keeps_batch_rows_independent(golden):
    """Each row gets its own reference: row 1 of the batch equals the fixture's row-1-alone call, row 0 equals
    row 0 alone."""
    model, inputs, outputs = golden
    args = [inputs[k] for k in ("x", "timestep_t1", "text_hidden_states", "lyric_hidden_states", "refer_audio")]
    batched = model(*args, is_covers=True)
    worst = {"abs": 0.0, "rel": 0.0}
    check("default_row1_vs_alone", batched[1:], outputs["single_item1_full_ref_t1.output"], worst)
    check("default_row0_vs_alone", batched[:1], model(*[a[:1] for a in args], is_covers=True), worst)
    report("v15_dit_default_path_row_vs_alone_max_abs", worst["abs"])
    coupled = model(*args, is_covers=True, refer_order=torch.zeros(2, dtype=torch.long))
    assert (coupled[1] - batched[1]).abs().max() > 1e-3  # the reference path really differs


@torch.no_grad()
def test_masks_make_a_padded_row_equal_to_the_row_alone(golden):
    model, inputs, _ = golden
    text_keep, lyric_keep = inputs["text_attention_mask"].bool(), inputs["lyric_attention_mask"].bool()
    lt, ll = int(text_keep[1].sum()), int(lyric_keep[1].sum())
    x, t = inputs["x"], inputs["timestep_t1"]
    condition = model.encode_condition(inputs["text_hidden_states"], inputs["lyric_hidden_states"],
                                       inputs["refer_audio"], x.shape[-1], text_keep=text_keep,
                                       lyric_keep=lyric_keep, is_covers=True)
    padded = model.decode(x, t, condition)
    alone_condition = model.encode_condition(inputs["text_hidden_states"][1:, :lt],
                                             inputs["lyric_hidden_states"][1:, :ll], inputs["refer_audio"][1:],
                                             x.shape[-1], is_covers=True)
    alone = model.decode(x[1:], t[1:], alone_condition)
    worst = {"abs": 0.0, "rel": 0.0}
    check("masked_row_vs_alone", padded[1:], alone, worst)
    report("v15_dit_masked_row_vs_alone_max_abs", worst["abs"])
    unmasked = model(x, t, inputs["text_hidden_states"], inputs["lyric_hidden_states"], inputs["refer_audio"],
                     is_covers=True)
    assert (unmasked[1:] - alone).abs().max() > 1e-3  # without masks the padding is attended
    check("masked_row0_unchanged", padded[:1], unmasked[:1], worst)  # row 0 has no padding


@torch.no_grad()
def test_condition_options(golden):
    """Null memory (CFG's unconditional pass), per-row is_covers, short audio codes padded with ComfyUI's code."""
    model, inputs, _ = golden
    x, t = inputs["x"], inputs["timestep_t2"]
    args = (inputs["text_hidden_states"], inputs["lyric_hidden_states"], inputs["refer_audio"], x.shape[-1])
    null = model.encode_condition(*args, replace_with_null=True)
    memory = model.null_condition_emb.expand_as(null.memory)
    direct = model.decoder(x.movedim(-1, -2), t, null.context_latents, model.decoder.memory_kv(memory))
    assert torch.equal(model.decode(x, t, null), direct.movedim(-1, -2))
    covers, plain = model.encode_condition(*args, is_covers=True), model.encode_condition(*args, is_covers=False)
    mixed = model.encode_condition(*args, is_covers=torch.tensor([True, False]))
    assert torch.equal(mixed.context_latents[0], covers.context_latents[0])
    assert torch.equal(mixed.context_latents[1], plain.context_latents[1])
    codes = inputs["audio_codes"]
    padded = torch.cat([codes, torch.full((2, 2), PAD_AUDIO_CODE)], 1)  # 8 codes cover the 37 frames
    assert torch.equal(model.lm_hints(37, audio_codes=codes), model.lm_hints(37, audio_codes=padded))
    with pytest.raises(ValueError, match="audio codes must lie in"):
        model.lm_hints(37, audio_codes=codes + 64_000)
    with pytest.raises(ValueError, match="refer_order"):
        model.encode_condition(*args[:2], inputs["refer_audio"][:1], x.shape[-1])
    with pytest.raises(ValueError, match="shorter than the latent"):
        model.encode_condition(*args[:2], inputs["refer_audio"][..., :30], x.shape[-1])


def meta_shapes(config: AceStep15Config) -> dict:
    with torch.device("meta"):
        model = AceStep15(config)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_full_size_layouts_match_the_real_files():
    """2B: the real key/shape list (full_size_state_dict_shapes.json). XL: that list with the decoder rewritten to
    2560 wide, 32 layers, 32/8 heads, SwiGLU 9728 and a 2048 -> 2560 condition_embedder (everything else, the
    2048-wide encoder/tokenizer/detokenizer and null_condition_emb, unchanged). Both read back by from_shapes."""
    layouts, real_parameters = real_dit_layouts()
    two_b = layouts["2B"]
    assert {k: v for k, v in two_b.items() if k.startswith("decoder.")} == \
        dit_decoder_layout(2048, 24, 16, 6144, 2048)
    for variant, expected in layouts.items():
        config = AceStep15Config.full_size(variant)
        ours = meta_shapes(config)
        assert sorted(set(expected) - set(ours)) == [], f"{variant}: missing"
        assert sorted(set(ours) - set(expected)) == [], f"{variant}: unexpected"
        assert {k: v for k, v in ours.items() if v != expected[k]} == {}, f"{variant}: shapes differ"
        assert AceStep15Config.from_shapes(expected) == config
        count = sum(torch.Size(v).numel() for v in ours.values())
        report(f"v15_dit_{variant}_parameters", count)
        if variant == "2B":
            assert count == real_parameters == 2_393_872_518
    assert AceStep15Config.full_size("XL").encoder.timbre_special_token
    with pytest.raises(ValueError, match="unknown ACE-Step 1.5 DiT variant"):
        AceStep15Config.full_size("3B")
    with pytest.raises(ValueError, match="layer_types"):
        DiTConfig(num_layers=2, layer_types=("sliding_attention",))
    with pytest.raises(ValueError, match="missing tensor 'decoder.proj_in.1.weight'"):
        AceStep15Config.from_shapes({k: v for k, v in two_b.items() if not k.startswith("decoder.proj_in")})


@torch.no_grad()
def test_layers_come_from_operations_and_attention_from_the_injected_function(golden):
    reference, inputs, _ = golden
    operations, counts = recording_operations()
    attention, calls = counting_attention()
    model = AceStep15(reference.config, operations=operations, attention=attention).eval()
    model.load_state_dict(reference.state_dict())
    assert plain_weighted_modules(model, operations) == []
    c = model.config
    stacks = c.encoder.lyric.num_layers + c.encoder.timbre.num_layers + c.tokenizer.pooler.num_layers + \
        c.detokenizer.stack.num_layers
    # Per encoder-stack layer 7 Linear + 4 RMSNorm, per DiT layer 11 + 7; then 16 Linear (time embeddings 6,
    # condition_embedder, text_projector, 2 embed_tokens, audio_acoustic_proj, pooler and detokenizer embed_tokens,
    # FSQ project_in/out, detokenizer proj_out) and 5 final norms.
    assert counts == {"Linear": 7 * stacks + 11 * c.decoder.num_layers + 16,
                      "RMSNorm": 4 * stacks + 7 * c.decoder.num_layers + 5, "Conv1d": 1, "ConvTranspose1d": 1}
    options = {"marker": 1}
    args = [inputs[k] for k in ("x", "timestep_t1", "text_hidden_states", "lyric_hidden_states", "refer_audio")]
    out = model(*args, is_covers=True, transformer_options=options)
    assert torch.equal(out, reference(*args, is_covers=True))
    assert len(calls) == stacks + 2 * c.decoder.num_layers and all(call is options for call in calls)


@torch.no_grad()
def test_encoder_sliding_window_as_the_original(golden):
    """encoder_sliding_window=w windows even encoder layers (the original's layer_types): a window covering the
    whole lyric changes nothing, a narrow one changes the lyric states; only even layers take the band."""
    model, inputs, _ = golden
    lyrics = inputs["lyric_hidden_states"]  # 20 tokens
    full = model.encoder.lyric_encoder(lyrics)
    for window, same in ((19, True), (3, False)):
        config = AceStep15Config.from_shapes({k: v.shape for k, v in model.state_dict().items()}, sliding_window=4,
                                             encoder_sliding_window=window)
        windowed = AceStep15(config).eval()
        windowed.load_state_dict(model.state_dict())
        assert torch.equal(windowed.encoder.lyric_encoder(lyrics), full) == same
    assert [config.encoder.lyric.window(i) for i in range(2)] == [3, None]
