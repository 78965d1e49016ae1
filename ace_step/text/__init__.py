"""Text processing for the models: lyric and prompt tokenization."""
