"""The pack's own exception types show as their class name alone ("UnsafePathError: ..."), like Python's built-in ones.

ComfyUI reports a failed node's exception type as `module.QualifiedName` unless the module is `builtins`
(ComfyUI `execution.py`, `full_type_name`), and so do Python's tracebacks in the server log. A custom node's modules
are named after its folder, so without this a user reads
"comfyui-acestep-studio.comfy_bridge.paths.UnsafePathError". The types stay importable where they are defined;
only the module name they report changes (they are never pickled).
"""


class PlainName:
    """Mixin for exception types: every subclass reports `builtins` as its module, hence its bare class name."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = "builtins"
