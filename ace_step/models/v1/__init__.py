"""ACE-Step v1 networks: diffusion transformer, lyric encoder, UMT5, music DCAE, vocoder."""
