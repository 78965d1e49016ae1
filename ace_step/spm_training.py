"""A tiny SentencePiece model trained on the spot, for demo checkpoints and tests.

The real checkpoint embeds google/umt5's SentencePiece model (256k pieces) as `text_encoders.spiece_model`. A tiny
demo checkpoint embeds this one instead: a unigram model with the (U)MT5 special ids pad=0, eos=1, unk=2 and no BOS,
trained in well under a second from a built-in corpus (music tags, a few lyric lines, some non-Latin text),
deterministically, so every run writes the same bytes.

`spm_to_tokenizer_json` turns a unigram SentencePiece model into a HF `tokenizer.json` the way HF's T5 converter
does, using only the `tokenizers` package, so the original `umt5-base/tokenizer.json` layout can be built too.
"""
from __future__ import annotations

import io
import random
import struct
from functools import lru_cache
from typing import Iterable

TINY_SPM_VOCAB_SIZE = 512

_TAGS = """pop rock jazz funk soul blues metal punk folk country hiphop rap trap techno house trance ambient classical
orchestral cinematic electronic dance disco reggae latin acoustic guitar piano drums bass synthesizer violin cello
strings vocals female male choir melodic energetic upbeat slow fast dark happy sad romantic chill lofi dreamy epic
powerful bpm major minor key tempo beat groove rhythm harmony melody verse chorus bridge intro outro saxophone trumpet
trombone flute clarinet harp organ accordion banjo mandolin ukulele harmonica tambourine percussion cymbals snare kick
hihat distorted clean reverb delay echo vintage modern retro futuristic atmospheric ethereal aggressive gentle soft
loud heavy light warm bright mellow smooth rough raw polished lush sparse minimal dense layered catchy hypnotic driving
bouncy swinging syncopated shuffle waltz march ballad anthem lullaby serenade hymn gospel spiritual opera symphony
sonata concerto nocturne prelude fugue etude rhapsody dubstep drumandbass breakbeat garage grime drill afrobeat kpop
jpop cpop bossa nova samba salsa tango flamenco celtic nordic arabic indian chinese japanese korean african whisper
falsetto vibrato belting rasping crooning harmonies adlibs spoken word instrumental nostalgic melancholic euphoric
triumphant mysterious playful sensual tense peaceful hopeful angry lonely joyful bittersweet""".split()

_LYRICS = """I walk alone through the city lights tonight
We were young and the summer never ended
Hold me close until the morning comes
Dancing in the rain with you beside me
My heart is burning like a wildfire
All the stars are falling from the sky
Never let me go, never say goodbye
The river flows into the endless sea
Remember when we used to sing together?
Running through the fields of golden wheat
[verse] [chorus] [bridge] [intro] [outro] [inst]""".splitlines()

_OTHER_SCRIPTS = ["我爱音乐，今晚的月亮很美。", "こんにちは、音楽が大好きです。", "Ça va très bien, merci beaucoup!",
                  "Москва, музыка и песни", "안녕하세요 음악", "Über die Brücke gehen wir zusammen.",
                  "¿Dónde está la música?", "Él canta: «ñandú» — 100% (live)"]

# Made-up words give the unigram trainer enough distinct pieces for a few hundred entries, and real sub-word splits.
_SYLLABLES = "ka lo mi ne ra su to vi an el or us in ta be do fu gi ho ju".split()


def tiny_corpus() -> list[str]:
    """The built-in training sentences (a fixed seed keeps them, and so the model, identical run to run)."""
    rng = random.Random(1234)
    pseudo = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(500)]
    lines = [" ".join(rng.sample(pseudo, 6)) for _ in range(600)]
    for _ in range(3000):
        tags = rng.sample(_TAGS, rng.randint(3, 8))
        tags = [t.capitalize() if rng.random() < 0.2 else t.upper() if rng.random() < 0.05 else t for t in tags]
        lines.append(", ".join(tags) + f", {rng.randint(60, 180)} {rng.choice(['bpm', 'BPM'])}")
    lines += _LYRICS * 30 + _OTHER_SCRIPTS * 30
    return lines


def train_spm(sentences: Iterable[str], vocab_size: int = TINY_SPM_VOCAB_SIZE) -> bytes:
    """Trains a unigram SentencePiece model with (U)MT5's special ids in memory; returns the serialized model."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)), model_writer=out, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # (U)MT5: <pad>=0, </s>=1, <unk>=2, no <s>
        character_coverage=1.0,  # keep every character of the small corpus (CJK included)
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,  # determinism
        minloglevel=2)
    return out.getvalue()


@lru_cache(maxsize=4)
def train_tiny_spm(vocab_size: int = TINY_SPM_VOCAB_SIZE) -> bytes:
    """The tiny demo SentencePiece model (512 pieces by default), as the bytes a checkpoint embeds."""
    return train_spm(tiny_corpus(), vocab_size)


# ---- reading the model proto (no protobuf dependency: a few fields of the wire format are enough) ----

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: bytes) -> Iterable[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values stay bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def read_spm_model(model_bytes: bytes) -> dict:
    """The parts of a SentencePiece ModelProto a tokenizer.json needs (field numbers from sentencepiece_model.proto)."""
    pieces, trainer, normalizer = [], {}, {}
    for number, _, value in _fields(model_bytes):
        if number == 1:  # SentencePiece {piece=1, score=2, type=3 (NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 ...)}
            piece = {"piece": "", "score": 0.0, "type": 1}
            for n, _, v in _fields(value):
                if n == 1:
                    piece["piece"] = v.decode("utf-8")
                elif n == 2:
                    piece["score"] = struct.unpack("<f", v)[0]
                elif n == 3:
                    piece["type"] = v
            pieces.append(piece)
        elif number == 2:  # TrainerSpec {model_type=3, byte_fallback=35, unk_id=40}
            trainer = {n: v for n, _, v in _fields(value)}
        elif number == 3:  # NormalizerSpec {precompiled_charsmap=2, add_dummy_prefix=3}
            normalizer = {n: v for n, _, v in _fields(value)}
    return {
        "pieces": pieces,
        "model_type": trainer.get(3, 1),
        "unk_id": trainer.get(40, 0),
        "byte_fallback": bool(trainer.get(35, 0)),
        "precompiled_charsmap": normalizer.get(2, b""),
        "add_dummy_prefix": bool(normalizer.get(3, 1)),
    }


def spm_to_tokenizer_json(model_bytes: bytes, eos_token: str = "</s>") -> str:
    """A HF tokenizer.json equivalent to a unigram SentencePiece model, as HF's T5 converter builds it.

    Unigram over the same pieces and scores; the model's own normalisation (precompiled charsmap), then trailing
    whitespace stripped and space runs folded (SentencePiece's remove_extra_whitespaces); Metaspace pre-tokenizer
    that prepends "▁" (add_dummy_prefix); control pieces as special added tokens; "$A </s>" post-processing.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    spec = read_spm_model(model_bytes)
    if spec["model_type"] != 1:
        raise ValueError("only unigram SentencePiece models are supported")
    pieces = spec["pieces"]
    tok = Tokenizer(Unigram([(p["piece"], p["score"]) for p in pieces], unk_id=spec["unk_id"], byte_fallback=False))
    # Control (3) pieces match as special tokens, user-defined (4) ones as plain added tokens.
    tok.add_tokens([AddedToken(p["piece"], normalized=False, special=p["type"] == 3)
                    for p in pieces if p["type"] in (3, 4)])
    steps = [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
    if spec["precompiled_charsmap"]:
        steps.insert(0, normalizers.Precompiled(spec["precompiled_charsmap"]))
    tok.normalizer = normalizers.Sequence(steps)
    prepend = "always" if spec["add_dummy_prefix"] else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend)
    eos_id = next(i for i, p in enumerate(pieces) if p["piece"] == eos_token)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", eos_token], pair=["$A", eos_token, "$B", eos_token], special_tokens=[(eos_token, eos_id)])
    return tok.to_str()
