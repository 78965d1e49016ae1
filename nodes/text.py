"""Text conditioning: tags and lyrics -> CONDITIONING, and what of the lyrics the model cannot use, on the node."""
import node_helpers
from comfy_api.latest import io, ui

from ..ace_step.text.lyrics import TRAINED_LYRIC_TOKENS
from ..comfy_bridge.models import AceStepClip
from ..comfy_bridge.v1_family import require_clip
from .common import CATEGORY, display_name, finite, node_id
from ..comfy_bridge.original_sampling import ERG_TEXT_KEY, erg_tag_hidden


class TextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("TextEncode"),
            display_name=display_name("ACE-Step Tags + Lyrics"),
            category=CATEGORY,
            description="Encodes the style tags with UMT5 and tokenizes the lyrics. Lyrics: one line per sung line, "
                        "structure tags such as [verse] [chorus] [bridge] on their own lines; the language is found "
                        "per line (Chinese, Japanese and Korean are romanised automatically), or forced with a "
                        "[zh]/[ja]/[ko]/[es]... prefix. Parentheses are kept (backing vocals). Lines the model "
                        "cannot read (e.g. Hebrew, Thai), section tags it has no token for and lyrics longer than "
                        f"the {TRAINED_LYRIC_TOKENS:,} tokens it was trained on are reported on the node and in "
                        "the server log.",
            inputs=[
                io.Clip.Input("clip", tooltip="The ACE-Step text encoder from the checkpoint loader."),
                io.String.Input("tags", multiline=True, dynamic_prompts=True,
                                tooltip="Comma-separated style tags: genre, instruments, mood, tempo, vocal type. "
                                        "ComfyUI (tag:1.2) weights work."),
                io.String.Input("lyrics", multiline=True, dynamic_prompts=True,
                                tooltip="The lyrics, or [inst] / empty for an instrumental."),
                io.Float.Input("lyrics_strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Scales the lyric condition: below 1 the lyrics guide less, 0 ignores them."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, tags, lyrics, lyrics_strength) -> io.NodeOutput:
        require_clip(clip, "ACE-Step 1.5 Text Encode")
        finite("lyrics_strength", lyrics_strength)
        ours = isinstance(clip, AceStepClip)  # another CLIP (ComfyUI's own ACE-Step one) gives no report
        tokens, report = clip.tokenize_with_report(tags, lyrics) if ours else (clip.tokenize(tags, lyrics=lyrics), None)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        values = {"lyrics_strength": lyrics_strength}
        if ours:  # the original sampling's tag ERG needs the tags encoded once more
            values[ERG_TEXT_KEY] = erg_tag_hidden(clip, tokens)
        conditioning = node_helpers.conditioning_set_values(conditioning, values)
        # Sent even when empty (nothing lost), so that the node's display clears once the lyrics are fixed.
        return io.NodeOutput(conditioning, ui=ui.PreviewText(report.message()) if ours else None)
