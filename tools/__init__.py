"""Developer and operator tooling: local PostgreSQL, migrations, local gateway, invoke.

The `ops` layer is put on sys.path here, as Lambda puts it under /opt/python.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER_DIR = ROOT / "layers" / "ops"
if str(LAYER_DIR) not in sys.path:
    sys.path.insert(0, str(LAYER_DIR))
