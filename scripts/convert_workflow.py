"""Converts a workflow built from ComfyUI's native ACE-Step nodes (UI or API format, detected) to this pack's nodes,
and prints what changed. Needs no ComfyUI.

    python scripts/convert_workflow.py IN.json [OUT.json]   # OUT defaults to IN_acestudio.json beside IN

Exit status: 0 converted and written; 1 nothing to convert (no native ACE-Step nodes); 2 not a workflow (or not
readable); 3 ACE-Step nodes that cannot be converted (a native ACE-Step node the pack has no equivalent for, v1 and
1.5 nodes in one workflow, an ACE-Step 1.5 loader whose file the pack cannot load or whose text encoder and LM cannot
be told apart), each reason printed. Only 0 writes a file.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also under `python -I`
import workflow_converter  # noqa: E402 (beside this script; needs no ComfyUI)


NOT_A_WORKFLOW = ("not a ComfyUI workflow: {why}. Convert a workflow file: in ComfyUI, Workflow > Export (or Export "
                  "(API)) saves one as .json")


def read_workflow(path: Path):
    """The JSON in `path`, or a ValueError saying that the file is not a workflow and which file to give instead."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        why = "the file is not text (an image, audio or other binary file)"
        raise ValueError(NOT_A_WORKFLOW.format(why=why)) from None
    except json.JSONDecodeError as e:
        raise ValueError(NOT_A_WORKFLOW.format(why=f"the file is not JSON ({e.msg} at line {e.lineno} column "
                                                   f"{e.colno})")) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path, nargs="?")
    opts = parser.parse_args()
    try:
        result = workflow_converter.convert_workflow(read_workflow(opts.input))
    except (OSError, ValueError) as e:
        print(f"{opts.input}: {e}", file=sys.stderr)
        return 2
    except workflow_converter.ConversionError as e:
        print(f"{opts.input}: cannot convert, nothing written:", file=sys.stderr)
        for reason in e.reasons:
            print(f"  {reason}", file=sys.stderr)
        return 3
    print(f"{opts.input}: {result.format.upper()} format, {len(result.changes)} change(s)")
    for line in result.changes:
        print(f"  {line}")
    for line in result.warnings:
        print(f"  warning: {line}")
    if not result.changes:
        return 1
    output = opts.output or opts.input.with_name(f"{opts.input.stem}_acestudio.json")
    output.write_text(json.dumps(result.workflow, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
