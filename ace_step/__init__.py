"""Our own ACE-Step v1 model core in plain torch. Nothing in this package imports ComfyUI."""
