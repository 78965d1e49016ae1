"""Where the shared reference material lives: ../shared/reference beside the checkout (as in CI), or
$ACE_REFERENCE_DIR."""
import os
from pathlib import Path

REFERENCE_DIR = Path(os.environ.get("ACE_REFERENCE_DIR")
                     or Path(__file__).resolve().parent.parent.parent / "shared" / "reference")
DATA_DIR = REFERENCE_DIR / "data"
