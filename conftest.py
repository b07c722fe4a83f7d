"""Test-wide settings: notebooks run in the smoke profile, caches go to a fresh temporary folder."""

import os
import tempfile

os.environ.setdefault("TAS_LITE_PROFILE", "smoke")
os.environ.setdefault("TAS_LITE_HOME", tempfile.mkdtemp(prefix="tas_lite_test_home_"))
os.environ.setdefault("MPLBACKEND", "Agg")
