"""Where the pack reads and writes: only inside ComfyUI's folders, whatever names a prompt carries.

Names come from prompts, which anyone who can reach the server can send, so they are checked here rather than
trusted to the frontend's lists: no absolute paths, no `..`, no NUL, and after following links the file must still
lie inside one of ComfyUI's folders (models, input, output, temp, user, and the extra model paths configured in
extra_model_paths.yaml). A link that leads elsewhere is refused with the way to make its target legitimate."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import folder_paths

from ..ace_step.errors import PlainName


MAX_STEM_BYTES = 255 - len("_00001_.opus") - 8  # room for the counter, the extension and a longer counter


class UnsafePathError(PlainName, ValueError):
    """A name that would read or write outside ComfyUI's folders."""


# The fixes plain_relative_name names: (for a missing, non-text or NUL name, for one leading outside), for a name
# chosen from a node's list and for a save node's typed filename_prefix.
LISTED_NAME = ("choose one from the list", "use a name relative to the folder, as the list shows them")
TYPED_PREFIX = ("type a folder and file name start, such as 'audio/my_song'",
                "type a path inside the output folder, such as 'audio/my_song'")


def plain_relative_name(name: str, what: str, fixes: tuple[str, str] = LISTED_NAME) -> str:
    """`name` if it is a plain relative path (sub-folders allowed); otherwise a clear refusal ending in a fix."""
    if not isinstance(name, str):
        raise UnsafePathError(f"the {what} must be a name (text), got {name!r}: {fixes[0]}")
    if not name.strip():
        raise UnsafePathError(f"the {what} is empty: {fixes[0]}")
    if "\0" in name:
        raise UnsafePathError(f"the {what} {name!r} contains a NUL character: {fixes[0]}")
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or os.path.isabs(name) or ".." in parts.parts:
        raise UnsafePathError(f"the {what} {name!r} points outside ComfyUI's folders (an absolute path or '..'): "
                              f"{fixes[1]}")
    return name


def comfyui_root() -> Path:
    """The ComfyUI installation's folder (where its bundled tokenizer files live)."""
    return Path(folder_paths.__file__).resolve().parent


def comfy_folders() -> list[Path]:
    """Every folder ComfyUI reads or writes, links resolved."""
    roots = {folder_paths.models_dir, folder_paths.get_input_directory(), folder_paths.get_output_directory(),
             folder_paths.get_temp_directory(), folder_paths.get_user_directory()}
    for paths, _ in folder_paths.folder_names_and_paths.values():
        roots.update(paths)
    return [Path(os.path.realpath(r)) for r in roots]


def require_inside(path: Path, roots: list[Path], what: str, fix: str) -> Path:
    """The real path of `path` (links followed), refused when that leaves `roots`."""
    real = Path(os.path.realpath(path))
    if not any(os.path.commonpath((str(real), str(root))) == str(root) for root in roots):
        raise UnsafePathError(f"the {what} {str(path)!r} is a link to {str(real)!r}, outside ComfyUI's folders, so "
                              f"it is not read or written: {fix}")
    return real


def model_file(folder_name: str, name: str) -> Path:
    """The file behind a model choice (e.g. "checkpoints", "my/model.safetensors"), links followed, never outside
    ComfyUI's folders."""
    what = f"{folder_name} file"
    plain_relative_name(name, what)
    folders = folder_paths.get_folder_paths(folder_name)
    for base in folders:
        candidate = Path(base) / name
        if candidate.is_file():
            return require_inside(candidate, comfy_folders(), what,
                                  f"move the file into {base}, or add its folder to ComfyUI's extra_model_paths.yaml")
    raise FileNotFoundError(f"no {folder_name} file {name!r} in {', '.join(folders)}: put it there and refresh the "
                            "list (R in the ComfyUI window)")


def model_folder(folder_name: str, name: str, marker: str) -> Path:
    """A model folder (holding the sub-folder `marker`) directly inside one of ComfyUI's folders for `folder_name`;
    it and every file in it must stay inside ComfyUI's folders once links are followed."""
    what = f"{folder_name} folder"
    plain_relative_name(name, what)
    if "/" in name.strip("/"):
        raise UnsafePathError(f"the {what} {name!r} must be a folder directly inside {folder_name}")
    folders = folder_paths.get_folder_paths(folder_name)
    roots = comfy_folders()
    fix = "move the folder into ComfyUI's models folder, or add its location to extra_model_paths.yaml"
    for base in folders:
        candidate = Path(base) / name.strip("/")
        if (candidate / marker).is_dir():
            real = require_inside(candidate, roots, what, fix)
            for folder, _, files in os.walk(real, followlinks=True):
                for file in files:
                    require_inside(Path(folder) / file, roots, f"file in {what}", fix)
            return real
    raise FileNotFoundError(f"no ACE-Step folder {name!r} (with {marker}/ inside) in {', '.join(folders)}")


def input_file(name: str) -> Path:
    """The file a prompt names for loading: in the input folder, or "name [output]" / "name [temp]" in those (as
    ComfyUI's frontend annotates them), links followed only inside ComfyUI's folders."""
    plain_relative_name(name, "input file")
    relative, base = folder_paths.annotated_filepath(name)
    plain_relative_name(relative, "input file")
    base = base or folder_paths.get_input_directory()
    candidate = Path(base) / relative
    if not candidate.is_file():
        raise FileNotFoundError(f"no file {relative!r} in {base}: upload it with the node's upload button, or put it "
                                "there")
    return require_inside(candidate, comfy_folders(), "input file", "copy the file into ComfyUI's input folder")


def save_folder(filename_prefix: str) -> tuple[str, str, int, str]:
    """(folder, file stem, first free counter, subfolder) for a save node's filename_prefix, inside the output
    folder: refuses absolute prefixes, '..', and sub-folders that are links to elsewhere."""
    plain_relative_name(filename_prefix, "filename_prefix", TYPED_PREFIX)
    prefix_dir, prefix_name = os.path.split(os.path.normpath(filename_prefix))
    if prefix_name in ("", "."):
        raise UnsafePathError(f"filename_prefix {filename_prefix!r} has no file name: end it with one, e.g. "
                              "'audio/my_song'")
    out_dir = folder_paths.get_output_directory()
    roots = [Path(os.path.realpath(out_dir))]
    fix = "save into a real folder inside the output folder"
    # The deepest folder of the prefix that exists already must not lead out (the rest is created below it).
    existing = Path(out_dir) / prefix_dir
    while not os.path.lexists(existing) and existing != Path(out_dir):
        existing = existing.parent
    require_inside(existing, roots, "output sub-folder", fix)
    if len(prefix_name.encode()) > MAX_STEM_BYTES:
        raise UnsafePathError(f"filename_prefix ends in a file name of {len(prefix_name.encode())} bytes; file "
                              f"systems allow 255 with the counter and extension, so at most {MAX_STEM_BYTES}: "
                              "shorten it")
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
    require_inside(Path(folder), roots, "output sub-folder", fix)
    return folder, stem, counter, subfolder
