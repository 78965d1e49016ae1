"""Reading the files users have: safetensors access, key layouts, configs from tensor shapes, clear errors."""
