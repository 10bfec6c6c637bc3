"""Shared runtime of the bundle's Lambda functions (deployed as the `ops` layer).

Modules are imported on demand so that each function pays only for what it uses.
"""

__version__ = "0.1.0"
