"""Where the shared public datasets are, for every test that reads them: $MAILCASCADE_DATA_DIR, else ../shared/data
beside the repository (read by path, never copied into it)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MAILCASCADE_DATA_DIR") or ROOT.parent / "shared" / "data")
