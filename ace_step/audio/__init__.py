"""Audio signal processing: log-mel spectrograms, resampling."""
