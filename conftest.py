"""Test-wide settings: notebooks run in the smoke profile, caches go to a fresh temporary folder, and torch
(here and in every kernel and subprocess the tests start) uses one thread: the tests' tiny models gain nothing
from more, and several threads on a busy 2-core machine wait on each other (a notebook cell ran 15x slower)."""

import os
import tempfile

os.environ.setdefault("TAS_LITE_PROFILE", "smoke")
os.environ.setdefault("TAS_LITE_HOME", tempfile.mkdtemp(prefix="tas_lite_test_home_"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
