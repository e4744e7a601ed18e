"""Test-only (see tests/federation/update_recorder.py): on the PYTHONPATH of a test's company processes, so
that their ClientApp saves each clipped delta for the test to compare with the secure aggregate."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
try:
    import update_recorder

    update_recorder.install_from_env()
finally:
    sys.path.pop(0)
