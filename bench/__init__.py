"""Benchmarks: every performance claim measured as a ratio against a baseline in the same run."""

import os

# The bench borrows the tests' helpers; its waits are caps on a failed run (celery-batches
# not finishing, say), not margins for a slow machine, so they are not stretched as the tests' are.
os.environ.setdefault("VOICEPIPE_TEST_WAIT_SCALE", "1")
