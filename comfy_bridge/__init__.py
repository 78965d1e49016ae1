"""The one bridge between ComfyUI and `ace_step`: model wrappers (MODEL/CLIP/VAE), the original-sampling runtime,
memory checks, model-folder paths and audio files."""
