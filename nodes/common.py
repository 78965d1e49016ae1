"""Names and input checks shared by every node of the pack."""
import math

NODE_PREFIX = "AceStudio"
CATEGORY = "audio/ACE-Step"


def node_id(name: str) -> str:
    return f"{NODE_PREFIX}{name}"


def display_name(title: str) -> str:
    return f"{title} (ACE-Step Studio)"


# ComfyUI 0.3.75 checks neither V3 combo values against their lists nor FLOAT values for NaN (NaN passes min/max),
# so values a hand-written prompt sends reach the nodes as they are.
def choice(name: str, value, options):
    """`value` if it is one of `options`, else a clear error."""
    if value not in list(options):
        raise ValueError(f"{name} {value!r} is not one of: {', '.join(map(str, options))}")
    return value


def finite(name: str, value: float) -> float:
    """`value` unless it is NaN or infinite, which would turn a whole song into NaN."""
    if not math.isfinite(value):
        raise ValueError(f"{name} is {value}, not a number a song can use: set it to a finite value")
    return value
