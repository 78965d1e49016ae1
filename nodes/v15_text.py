"""ACE-Step 1.5 conditioning: tags, lyrics and song metadata (with the 5 Hz LM planner) -> CONDITIONING; a reference
audio's timbre added to a conditioning."""
import node_helpers
from comfy_api.latest import io

from ..ace_step.text.v15_prompts import (BPM_MAX, DURATION_MAX, VALID_KEYSCALES, VALID_LANGUAGES,
                                         VALID_TIME_SIGNATURES, cot_yaml)
from ..comfy_bridge.v15_clip import AUTO, METADATA_KEY
from ..comfy_bridge.v15_family import check_latent, refuse_v1_conditioning
from .common import choice, display_name, finite, node_id
from .v15_common import CATEGORY, require_clip

LANGUAGES = [AUTO, *VALID_LANGUAGES]
KEYSCALES = [AUTO, *VALID_KEYSCALES]
TIME_SIGNATURES = [AUTO, *map(str, VALID_TIME_SIGNATURES)]
REFERENCE_KEY = "reference_audio_timbre_latents"  # ComfyUI's key (comfy_extras/nodes_ace.py ReferenceTimbreAudio)


class TextEncode15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15TextEncode"),
            display_name=display_name("ACE-Step 1.5 Text Encode"),
            category=CATEGORY,
            description="Encodes tags, lyrics and song metadata for ACE-Step 1.5 with the original pipeline's prompts. "
                        "With a 5 Hz LM loaded, the planner first fills in the metadata left on auto (bpm, duration, "
                        "key, time signature, language; it may also rewrite the tags into a caption), then writes the "
                        "song's audio codes, 5 per second, which guide the DiT. The second output shows the metadata "
                        "the song was made with.",
            inputs=[
                io.Clip.Input("clip", tooltip="The ACE-Step 1.5 text encoders (and optional LM) from Load ACE-Step 1.5 "
                                              "Checkpoint or Load ACE-Step 1.5 Text Encoders."),
                io.String.Input("tags", multiline=True, dynamic_prompts=True,
                                tooltip="The song's description: genre, instruments, mood, vocal type, e.g. 'funk, "
                                        "pop, soul, female vocals, energetic'."),
                io.String.Input("lyrics", multiline=True, dynamic_prompts=True,
                                tooltip="The lyrics, one sung line per line, sections such as [verse] [chorus] "
                                        "[bridge] on their own lines; [Instrumental] or empty for no vocals."),
                io.Int.Input("bpm", default=0, min=0, max=BPM_MAX,
                             tooltip="Tempo, 30-300 beats per minute; 0 = auto (the planner chooses; without an LM "
                                     "the text encoder is told 'N/A')."),
                io.Float.Input("duration", default=120.0, min=0.0, max=float(DURATION_MAX), step=0.1,
                               tooltip="The song's length in seconds (10-600) as the prompt states it and the LM "
                                       "writes codes for (5 per second): set it to the latent's length. 0 = auto "
                                       "(the planner chooses)."),
                io.Combo.Input("timesignature", options=TIME_SIGNATURES, default=AUTO,
                               tooltip="Beats per bar (2, 3, 4 or 6 for 6/8); auto = the planner chooses."),
                io.Combo.Input("language", options=LANGUAGES, default=AUTO,
                               tooltip="The lyrics' language; auto = the planner's choice ('unknown' without an LM)."),
                io.Combo.Input("keyscale", options=KEYSCALES, default=AUTO,
                               tooltip="Key and mode, e.g. 'F# minor'; auto = the planner chooses."),
                io.Boolean.Input("generate_audio_codes", default=True,
                                 tooltip="Let the 5 Hz LM write the song's audio codes (slow on a CPU, better "
                                         "structure). Needs an LM. Turn off for a reference-timbre song or to save "
                                         "time."),
                io.Boolean.Input("planner_caption", default=True,
                                 tooltip="Let the planner rewrite the tags into its own caption for the DiT (the "
                                         "original app's default); off keeps your tags."),
                io.Float.Input("lm_cfg_scale", default=2.0, min=0.0, max=100.0, step=0.1,
                               tooltip="The LM's classifier-free guidance; 1 or below = none (faster)."),
                io.Float.Input("temperature", default=0.85, min=0.0, max=2.0, step=0.01,
                               tooltip="The LM's sampling temperature; 0 = always the most likely token."),
                io.Float.Input("top_p", default=0.9, min=0.0, max=1.0, step=0.01,
                               tooltip="The LM's nucleus sampling: keep the most likely tokens up to this "
                                       "probability mass; 1 = off."),
                io.Int.Input("top_k", default=0, min=0, max=1000,
                             tooltip="The LM keeps only the k most likely tokens; 0 = off."),
                io.Float.Input("min_p", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="The LM drops tokens less likely than min_p times the most likely one; 0 = off."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The LM's random seed: the same seed and inputs give the same plan."),
            ],
            outputs=[io.Conditioning.Output(), io.String.Output(display_name="metadata")],
        )

    @classmethod
    def execute(cls, clip, tags, lyrics, bpm, duration, timesignature, language, keyscale, generate_audio_codes,
                planner_caption, lm_cfg_scale, temperature, top_p, top_k, min_p, seed) -> io.NodeOutput:
        clip = require_clip(clip)
        for name, value in (("duration", duration), ("lm_cfg_scale", lm_cfg_scale), ("temperature", temperature),
                            ("top_p", top_p), ("min_p", min_p)):
            finite(name, value)
        tokens = clip.tokenize(tags, lyrics=lyrics, bpm=bpm, duration=duration,
                               timesignature=choice("timesignature", timesignature, TIME_SIGNATURES),
                               language=choice("language", language, LANGUAGES),
                               keyscale=choice("keyscale", keyscale, KEYSCALES), seed=seed,
                               generate_audio_codes=generate_audio_codes, cfg_scale=lm_cfg_scale,
                               temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                               write_caption=planner_caption)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        extra = conditioning[0][1]
        summary = cot_yaml(extra[METADATA_KEY])
        summary += f"\naudio_codes: {len(extra['audio_codes'][0]) if 'audio_codes' in extra else 0}"
        return io.NodeOutput(conditioning, summary)


class ReferenceTimbre15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15ReferenceTimbre"),
            display_name=display_name("ACE-Step 1.5 Reference Timbre"),
            category=CATEGORY,
            description="Gives the song a reference audio's timbre: the reference latent goes into the conditioning "
                        "(ComfyUI's reference_audio_timbre_latents), where the DiT's timbre encoder reads it and, "
                        "without LM codes, follows its structure (cover mode). Cut or padded with silence to the "
                        "song's length.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The positive conditioning from ACE-Step 1.5 Text "
                                                              "Encode."),
                io.Latent.Input("latent", tooltip="The reference audio's latent (Audio to ACE-Step 1.5 Latent)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning, latent) -> io.NodeOutput:
        refuse_v1_conditioning(conditioning)
        samples = check_latent(latent["samples"] if isinstance(latent, dict) else latent, "the reference latent")
        return io.NodeOutput(node_helpers.conditioning_set_values(conditioning, {REFERENCE_KEY: [samples]},
                                                                  append=True))


NODES = [TextEncode15, ReferenceTimbre15]
