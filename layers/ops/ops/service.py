"""Deprecated: renamed `ops.wiring` (the module wires the layer's hooks into the router).

`from ops.service import service_api` is the line every adopter's function was written
with, so it keeps working, with a DeprecationWarning that names the new import. It goes
in the next major version.
"""

from __future__ import annotations

import warnings

from ops.wiring import service_api

__all__ = ["service_api"]

warnings.warn(
    "ops.service is renamed ops.wiring: write `from ops.wiring import service_api`",
    DeprecationWarning,
    stacklevel=2,
)
