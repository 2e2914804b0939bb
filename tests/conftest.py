"""Test-wide setup: every Ray cluster a test starts stays on loopback.

Ray reads its single-node switch when it is imported, so it is set here,
before any test module imports Ray.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.pop("RAY_ADDRESS", None)
