"""Test-only custom node: a GPU of a chosen size, standing in on the CPU, so that ComfyUI's partial ("low-VRAM")
loading runs in CI for the pack's diffusion model.

With ACESTUDIO_FAKE_VRAM_SPARE_MIB set, ComfyUI's `load_models_gpu` treats the load device of a MODEL holding the
pack's diffusion model as a GPU whose memory is ComfyUI's default inference reserve (0.8 GiB + 400 MiB) plus that many
MiB, of which the pack's loaded diffusion models use their loaded size. ComfyUI's own arithmetic then decides the
budget, so `--reserve-vram` acts as it does on a real GPU, and so do the VRAM states `--lowvram` and `--novram` set,
given in ACESTUDIO_FAKE_VRAM_STATE ("LOW_VRAM", "NO_VRAM"; default "NORMAL_VRAM") because ComfyUI refuses those two
flags together with the `--cpu` a machine without a GPU needs. The model loads partially and the rest is cast at call
time. Each such load is appended to ACESTUDIO_FAKE_VRAM_REPORT as a JSON line. Without the variables nothing changes.
No nodes are added.
"""
import json
import os

NODE_CLASS_MAPPINGS = {}

SPARE = os.environ.get("ACESTUDIO_FAKE_VRAM_SPARE_MIB")

if SPARE is not None:
    import comfy.model_management as mm

    DEFAULT_RESERVE = 0.8 * 1024**3 + 400 * 1024**2
    TOTAL = DEFAULT_RESERVE + float(SPARE) * 1024**2
    STATE = mm.VRAMState[os.environ.get("ACESTUDIO_FAKE_VRAM_STATE", "NORMAL_VRAM")]
    original_load_models_gpu = mm.load_models_gpu

    def _is_pack_model(patcher) -> bool:
        return type(getattr(getattr(patcher, "model", None), "diffusion_model", None)).__name__ == \
            "ComfyCallableTransformer"

    def _pack_loaded() -> int:
        return sum(m.model_loaded_memory() for m in mm.current_loaded_models if _is_pack_model(m.model))

    def load_models_gpu(models, *a, **kw):
        if not any(_is_pack_model(m) for m in models):
            return original_load_models_gpu(models, *a, **kw)
        saved = mm.is_device_cpu, mm.vram_state, mm.get_free_memory

        def get_free_memory(dev=None, torch_free_too=False):
            free = max(0.0, TOTAL - _pack_loaded())
            return (free, free) if torch_free_too else free

        mm.is_device_cpu, mm.vram_state, mm.get_free_memory = (lambda device: False), STATE, get_free_memory
        try:
            result = original_load_models_gpu(models, *a, **kw)
        finally:
            mm.is_device_cpu, mm.vram_state, mm.get_free_memory = saved
        with open(os.environ["ACESTUDIO_FAKE_VRAM_REPORT"], "a") as f:
            for m in models:
                if _is_pack_model(m):
                    f.write(json.dumps({"loaded": m.loaded_size(), "size": m.model_size(),
                                        "lowvram": bool(m.model.model_lowvram)}) + "\n")
        return result

    mm.load_models_gpu = load_models_gpu
