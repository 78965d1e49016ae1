"""Names shared by every node of the pack."""

NODE_PREFIX = "AceStudio"
CATEGORY = "audio/ACE-Step"


def node_id(name: str) -> str:
    return f"{NODE_PREFIX}{name}"


def display_name(title: str) -> str:
    return f"{title} (ACE-Step Studio)"
