"""ACE-Step 1.5 text side: the Qwen3 tokenizer (ace_step/text/qwen_tokenizer.py) against transformers 4.57.6 on the
same files, and the prompts (ace_step/text/v15_prompts.py) against the original pipeline's templates.

Expected prompt strings are written by hand from ace-step/ACE-Step-1.5 @ f30aee4c: `acestep/constants.py`
(SFT_GEN_PROMPT, DEFAULT_LM_INSTRUCTION, DEFAULT_DIT_INSTRUCTION, TASK_INSTRUCTIONS["cover"]), `acestep/handler.py`
(`_dict_to_meta_string`, `_format_lyrics`), `acestep/llm_inference.py` (`build_formatted_prompt`,
`build_formatted_prompt_with_cot`, `_format_metadata_as_cot`, `parse_lm_output`), rendered with Qwen3's chat
template; ComfyUI's strings from Comfy-Org/ComfyUI `comfy/text_encoders/ace15.py` @ 523fba4d (`lm_template`,
`lyrics_template`, `qwen3_06b_template`).
"""
import json

import pytest
from tokenizers import processors
from transformers import AddedToken, PreTrainedTokenizerFast, Qwen2Tokenizer, Qwen2TokenizerFast

from ace_step.text.qwen_tokenizer import (
    AUDIO_CODE_TOKENS, ENDOFTEXT_ID, LM_VOCAB_SIZE, TEXT_ENCODER_VOCAB_SIZE, THINK_END_ID,
    THINK_ID, host_comfy_tokenizer_dir, load_qwen3_tokenizer, tokenizer_from_json, tokenizer_from_vocab_folder,
)
from ace_step.text.v15_prompts import (
    VALID_KEYSCALES, VALID_LANGUAGES, SongMetadata, audio_code_count, caption_encoder_ids, cot_yaml,
    dit_caption_prompt, dit_instruction, format_cot, lm_codes_prompt, lm_codes_unconditional_prompt, lm_cot_prompt,
    lm_cot_unconditional_prompt, lyric_encoder_ids, parse_lm_output, text_encoder_ids,
)
from fixtures.v15_text_models import bundled_tokenizer_dir, write_qwen3_folder

CORPUS = [
    "Hello, world! It's 5 o'clock; we'll see.",
    "中文歌曲，温柔的钢琴与弦乐。",
    "日本語の歌詞：さくら さくら やよいの空は",
    "한국어 가사: 사랑해요 영원히",
    "مرحبا بالعالم، أغنية عربية",
    "emoji 😀🎵🎸👩‍👩‍👧 ok",
    "def f(x):\n\treturn x**2  # code\r\n    if a != b: pass",
    "  multiple   spaces\n\n\nnewlines \t tabs  ",
    "<|im_start|>user\n<think>\n</think><|im_end|><|endoftext|>",
    "e\u0301 cafe\u0301 \u212b \u00c5",  # decomposed and composed forms: NFC decides the ids
    "1234567890 3.14159 -42 ½ ² ﬁ ß",
    "[verse]\nWalking down the road\n[chorus]\nLa la la",
]
AUDIO_CODE_TEXT = "<|audio_code_0|><|audio_code_63999|><|audio_code_65534|>x<|audio_code_123|> <|audio_code_65535|>"

SYSTEM = ("<|im_start|>system\n# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n"
          "<|im_end|>\n")
# "<|im_start|>system\n# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n<|im_end|>\n"
# as Qwen3's tokenizer splits it (transformers Qwen2TokenizerFast on the same files).
SYSTEM_IDS = [151644, 8948, 198, 2, 29051, 198, 31115, 7699, 41733, 11211, 3118, 389, 279, 2661, 4682, 1447,
              151645, 198]


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    return write_qwen3_folder(tmp_path_factory.mktemp("qwen3_tokenizer"))


@pytest.fixture(scope="module")
def lm_tokenizer():
    return load_qwen3_tokenizer([bundled_tokenizer_dir()], audio_codes=True)


@pytest.fixture(scope="module")
def encoder_tokenizer():
    return load_qwen3_tokenizer([bundled_tokenizer_dir()], audio_codes=False)


@pytest.fixture(scope="module")
def reference_lm(qwen3_folder):
    """transformers' fast Qwen tokenizer on the same files, with the audio-code tokens added."""
    tok = Qwen2TokenizerFast.from_pretrained(qwen3_folder)
    tok.add_tokens([AddedToken(f"<|audio_code_{c}|>", special=True, normalized=False)
                    for c in range(AUDIO_CODE_TOKENS)], special_tokens=True)
    return tok


def test_bundled_folder_matches_transformers(lm_tokenizer, encoder_tokenizer, reference_lm, qwen3_folder):
    slow = Qwen2Tokenizer.from_pretrained(qwen3_folder)  # ComfyUI's class; without audio codes (adding 65k is slow)
    assert lm_tokenizer.vocab_size == len(reference_lm) == LM_VOCAB_SIZE == 217204
    assert encoder_tokenizer.vocab_size == len(slow) == TEXT_ENCODER_VOCAB_SIZE == 151669
    for text in CORPUS + [AUDIO_CODE_TEXT]:
        ids = lm_tokenizer.encode(text)
        assert ids == reference_lm.encode(text, add_special_tokens=False), text
        assert lm_tokenizer.decode(ids) == reference_lm.decode(ids, skip_special_tokens=False)
        assert encoder_tokenizer.encode(text) == slow.encode(text, add_special_tokens=False), text


def test_audio_code_ids(lm_tokenizer, encoder_tokenizer):
    assert lm_tokenizer.encode(AUDIO_CODE_TEXT)[:3] == [151669, 215668, 217203]
    assert lm_tokenizer.audio_code_id(63999) == 215668
    # The encoder's table has 151669 rows: code text stays plain text there.
    assert max(encoder_tokenizer.encode(AUDIO_CODE_TEXT)) < TEXT_ENCODER_VOCAB_SIZE
    with pytest.raises(ValueError, match="LM flavour"):
        encoder_tokenizer.audio_code_id(0)


def test_old_comfy_folder_gets_qwen3_think_tokens(lm_tokenizer, qwen3_folder):
    old = Qwen2TokenizerFast.from_pretrained(bundled_tokenizer_dir())
    assert old.convert_ids_to_tokens(THINK_ID) == "<|meta|>"  # ComfyUI 0.3.75's file
    assert len(old.encode("<think>", add_special_tokens=False)) > 1  # so ComfyUI 0.3.75 split "<think>"
    assert lm_tokenizer.encode("<think>\n</think>") == [THINK_ID, 198, THINK_END_ID]
    newer = tokenizer_from_vocab_folder(qwen3_folder, audio_codes=True)
    for text in CORPUS:
        assert newer.encode(text) == lm_tokenizer.encode(text)


def test_tokenizer_json_layouts(tmp_path, reference_lm, lm_tokenizer, encoder_tokenizer, qwen3_folder):
    # A 5 Hz LM folder: tokenizer.json with the audio codes.
    lm_dir = tmp_path / "acestep-5Hz-lm-1.7B"
    lm_dir.mkdir()
    reference_lm.backend_tokenizer.save(str(lm_dir / "tokenizer.json"))
    from_json = load_qwen3_tokenizer([tmp_path / "missing", lm_dir], audio_codes=True)
    assert from_json.source == str(lm_dir / "tokenizer.json")
    for text in CORPUS + [AUDIO_CODE_TEXT]:
        assert from_json.encode(text) == lm_tokenizer.encode(text)
    # The same file for the text encoder: the codes are dropped.
    assert load_qwen3_tokenizer([lm_dir], audio_codes=False).encode(AUDIO_CODE_TEXT) == \
        encoder_tokenizer.encode(AUDIO_CODE_TEXT)

    # A Qwen3-Embedding folder: its tokenizer.json appends <|endoftext|> (TemplateProcessing); transformers with
    # add_special_tokens and truncation gives what text_encoder_ids builds explicitly.
    embedding = Qwen2TokenizerFast.from_pretrained(qwen3_folder)
    embedding.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", ENDOFTEXT_ID)])
    path = tmp_path / "tokenizer.json"
    embedding.backend_tokenizer.save(str(path))
    reference = PreTrainedTokenizerFast(tokenizer_file=str(path))
    mine = tokenizer_from_json(path, audio_codes=False)
    assert reference("test")["input_ids"] == text_encoder_ids(mine, "test", 256) == [1944, 151643]
    long_text = " ".join(CORPUS) * 20
    for text in CORPUS + [long_text]:
        expected = reference(text, truncation=True, max_length=256)["input_ids"]
        assert text_encoder_ids(mine, text, 256) == expected
    assert len(text_encoder_ids(mine, long_text, 256)) == 256


def test_missing_and_wrong_tokenizers(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_qwen3_tokenizer([tmp_path / "a", None, tmp_path / "b"], audio_codes=True)
    assert str(tmp_path / "a") in str(error.value) and str(tmp_path / "b") in str(error.value)
    assert "tokenizer.json" in str(error.value)

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (wrong / name).write_bytes((bundled_tokenizer_dir() / name).read_bytes())
    config = json.loads((bundled_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"]["151645"]["content"] = "<|eot|>"
    (wrong / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match="not a Qwen tokenizer folder"):
        load_qwen3_tokenizer([wrong], audio_codes=False)
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        load_qwen3_tokenizer([wrong / "vocab.json"], audio_codes=False)


def test_host_comfy_tokenizer_dir(monkeypatch):
    monkeypatch.syspath_prepend(str(bundled_tokenizer_dir().parents[2]))
    assert host_comfy_tokenizer_dir() == bundled_tokenizer_dir()


# ---------------------------------------------------------------------------------------------- prompts

def test_valid_values():
    assert len(VALID_LANGUAGES) == 51 and VALID_LANGUAGES[-1] == "unknown"
    assert len(VALID_KEYSCALES) == len(set(VALID_KEYSCALES)) == 70
    # ComfyUI's combos (comfy_extras/nodes_ace.py) are subsets.
    comfy_keys = [f"{root} {q}" for q in ("major", "minor")
                  for root in ("C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#",
                               "Bb", "B")]
    assert set(comfy_keys) <= set(VALID_KEYSCALES)
    comfy_languages = ["en", "ja", "zh", "es", "de", "fr", "pt", "ru", "it", "nl", "pl", "tr", "vi", "cs", "fa", "id",
                       "ko", "uk", "hu", "ar", "sv", "ro", "el"]
    assert set(comfy_languages) <= set(VALID_LANGUAGES)
    assert audio_code_count(30) == 150 and audio_code_count(12.5) == 62


@pytest.mark.parametrize("bad, message", [
    (dict(bpm=20), "bpm"), (dict(bpm=120.0), "bpm"), (dict(duration=5), "duration"),
    (dict(keyscale="H major"), "keyscale"), (dict(timesignature=5), "timesignature"), (dict(language="xx"), "language"),
])
def test_metadata_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        SongMetadata(**bad)


def test_lm_cot_prompts():
    user = "<|im_start|>user\n# Caption\nA calm piano ballad\n\n# Lyric\n[verse]\nHello\n<|im_end|>\n"
    assert lm_cot_prompt("A calm piano ballad", "[verse]\nHello") == SYSTEM + user + "<|im_start|>assistant\n"
    assert lm_cot_unconditional_prompt("[verse]\nHello") == (
        SYSTEM + "<|im_start|>user\n# Lyric\n[verse]\nHello\n<|im_end|>\n<|im_start|>assistant\n")
    assert lm_cot_unconditional_prompt("[verse]\nHello", "NO USER INPUT") == \
        lm_cot_unconditional_prompt("[verse]\nHello")
    assert lm_cot_unconditional_prompt("la", "harsh noise") == (
        SYSTEM + "<|im_start|>user\n# Caption\nharsh noise\n\n# Lyric\nla\n<|im_end|>\n<|im_start|>assistant\n")


def test_lm_codes_prompts_and_ids(lm_tokenizer):
    meta = SongMetadata(bpm=120, duration=30.7, keyscale="C# major", timesignature=4)
    cond = lm_codes_prompt("Funky disco", "[chorus]\nDance", meta)
    assert cond == (SYSTEM + "<|im_start|>user\n# Caption\nFunky disco\n\n# Lyric\n[chorus]\nDance\n<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\nbpm: 120\nduration: 30\nkeyscale: C# major\ntimesignature: 4\n"
                    "</think>\n\n<|im_end|>\n")
    uncond = lm_codes_unconditional_prompt("Funky disco", "[chorus]\nDance")
    assert uncond.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<|im_end|>\n")
    assert "# Caption\nFunky disco\n" in uncond
    # ComfyUI's lm_template with its CoT and empty negative CoT: the same text for these inputs.
    comfy = ("<|im_start|>system\n# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n"
             "<|im_end|>\n<|im_start|>user\n# Caption\n{}\n\n# Lyric\n{}\n<|im_end|>\n<|im_start|>assistant\n{}\n\n"
             "<|im_end|>\n")
    meta_whole = SongMetadata(bpm=120, duration=30, keyscale="C# major", timesignature=4)
    comfy_cot = "<think>\nbpm: 120\nduration: 30\nkeyscale: C# major\ntimesignature: 4\n</think>"
    assert lm_codes_prompt("Funky disco", "[chorus]\nDance", meta_whole) == \
        comfy.format("Funky disco", "[chorus]\nDance", comfy_cot)
    assert uncond == comfy.format("Funky disco", "[chorus]\nDance", "<think>\n\n</think>")

    ids = lm_tokenizer.encode(cond)
    assert ids[:18] == SYSTEM_IDS
    think = ids.index(THINK_ID)
    # "<|im_start|>assistant\n<think>\nbpm: 120\n" ... "</think>\n\n<|im_end|>\n"
    assert ids[think - 3:think + 10] == [151644, 77091, 198, THINK_ID, 198, 65, 5187, 25, 220, 16, 17, 15, 198]
    assert ids[-4:] == [THINK_END_ID, 271, 151645, 198]


def test_cot_yaml():
    meta = SongMetadata(bpm=120, duration=30, keyscale="F# minor", timesignature=4, language="no",
                        caption="An emotional ballad with soft piano, warm strings and a breathy female vocal that "
                                "builds into a soaring chorus.")
    # yaml.dump(sort_keys=True): 80-column folding with a two-space continuation, "no" quoted (a YAML 1.1 bool).
    assert cot_yaml(meta) == (
        "bpm: 120\ncaption: An emotional ballad with soft piano, warm strings and a breathy female vocal\n"
        "  that builds into a soaring chorus.\nduration: 30\nkeyscale: F# minor\nlanguage: 'no'\ntimesignature: 4")
    assert format_cot(SongMetadata(caption="Rock: loud", keyscale="B♭ major", language="zh")) == (
        "<think>\ncaption: 'Rock: loud'\nkeyscale: B♭ major\nlanguage: zh\n</think>")
    assert cot_yaml(SongMetadata(caption="2024")) == "caption: 2024"  # the original turns digit strings into numbers
    assert format_cot(SongMetadata()) == "<think>\n\n</think>"


def test_text_encoder_prompts(encoder_tokenizer):
    meta = SongMetadata(bpm=90, duration=45.9, keyscale="A minor", timesignature=3)
    assert dit_caption_prompt("A calm piano ballad", meta, dit_instruction(has_audio_codes=False)) == (
        "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
        "# Caption\nA calm piano ballad\n\n# Metas\n- bpm: 90\n- timesignature: 3\n- keyscale: A minor\n"
        "- duration: 45 seconds\n<|endoftext|>\n")
    assert dit_caption_prompt("x", SongMetadata(), "Repaint the mask area based on the given conditions") == (
        "# Instruction\nRepaint the mask area based on the given conditions:\n\n# Caption\nx\n\n# Metas\n"
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n<|endoftext|>\n")
    ids = caption_encoder_ids(encoder_tokenizer, "A calm piano ballad", meta, has_audio_codes=True)
    assert ids[-3:] == [ENDOFTEXT_ID, 198, ENDOFTEXT_ID]
    # ComfyUI's qwen3_06b_template (ceil for the duration there: equal for whole seconds) and lyrics_template.
    meta_whole = SongMetadata(bpm=90, duration=45, keyscale="A minor", timesignature=3)
    comfy_caption = ("# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n# Caption\n"
                     "A calm piano ballad\n\n# Metas\n- bpm: 90\n- timesignature: 3\n- keyscale: A minor\n"
                     "- duration: 45 seconds\n<|endoftext|>\n<|endoftext|>")
    assert caption_encoder_ids(encoder_tokenizer, "A calm piano ballad", meta_whole, True) == \
        encoder_tokenizer.encode(comfy_caption)
    lyrics = "[verse]\n春风吹过\nHello"
    assert lyric_encoder_ids(encoder_tokenizer, lyrics, "zh") == encoder_tokenizer.encode(
        f"# Languages\nzh\n\n# Lyric\n{lyrics}<|endoftext|><|endoftext|>")
    long_lyrics = "la " * 3000
    assert len(lyric_encoder_ids(encoder_tokenizer, long_lyrics, "en")) == 2048


def test_parse_lm_output():
    # The format documented in llm_inference.py `parse_lm_output`.
    text = ("<think>\nbpm: 73\ncaption: A calm piano melody\nduration: 273\ngenres: Chinese folk\nkeyscale: G major\n"
            "language: en\ntimesignature: 4\n</think>\n\n<|audio_code_56535|><|audio_code_62918|>")
    meta, codes = parse_lm_output(text)
    assert meta == SongMetadata(bpm=73, duration=273, keyscale="G major", timesignature=4, language="en",
                                caption="A calm piano melody")
    assert codes == [56535, 62918]
    # Phase 1 ends before "</think>" (the original forces EOS there); YAML continuation lines join the caption.
    text = ("<think>\nbpm: 128\ncaption: Driving synthwave with gated drums\n  and a neon lead.\nduration: 200\n"
            "keyscale: D minor\nlanguage: unknown\ntimesignature: 4\n")
    meta, codes = parse_lm_output(text)
    assert meta.caption == "Driving synthwave with gated drums and a neon lead." and codes == []
    assert (meta.bpm, meta.duration, meta.language) == (128, 200, "unknown")
    # Out-of-range or unknown values stay unknown.
    meta, _ = parse_lm_output("bpm: 999\nkeyscale: H minor\ntimesignature: 4/4\nlanguage: xx\n")
    assert meta == SongMetadata(timesignature=4)
