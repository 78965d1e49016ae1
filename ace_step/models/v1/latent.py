"""The ACE-Step v1 song latent: [batch, 8, 16, frames], one frame per 4096 samples of 44.1 kHz audio (mel hop 512 ×
the DCAE's time compression 8, about 10.77 frames per second)."""

SAMPLE_RATE = 44100
SAMPLES_PER_FRAME = 4096
CHANNELS, HEIGHT = 8, 16
TRAINED_SECONDS = 240.0  # the longest songs ACE-Step v1 was trained on, and the original's extend window


def frames_for_seconds(seconds: float) -> int:
    """Latent frames for a duration, truncated toward zero as the original and ComfyUI count them."""
    return int(seconds * SAMPLE_RATE / SAMPLES_PER_FRAME)


def seconds_for_frames(frames: int) -> float:
    return frames * SAMPLES_PER_FRAME / SAMPLE_RATE
