"""ACE-Step 1.5 networks (ace-step/ACE-Step-1.5; ComfyUI comfy/ldm/ace/ace_step15.py): the shared Qwen3-style
layers, the Qwen3 text encoder and 5 Hz language models, and the diffusion transformer with its condition encoder
and audio-code tokenizer/detokenizer."""
