"""Hypothesis profiles for the property tests of the sans-IO parsers.

- `ci` (when CI=true): 400 examples per property, derandomized, so a CI run is
  reproducible and a failure is one a developer can replay.
- `dev` (default): 100 examples, for the edit-test loop.
- `long`: 5,000 examples per property, for a soak before a release or after a
  parser change: `GITEDGE_HYPOTHESIS=long .venv/bin/pytest tests -k properties`.

`GITEDGE_HYPOTHESIS=<profile>` picks one explicitly. No deadline in any of
them: the machine is shared, and a slow example is not a wrong one.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("GITEDGE_HYPOTHESIS") or ("ci" if os.environ.get("CI") == "true" else "dev")
)
