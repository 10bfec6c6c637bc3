"""Developer and operator tooling, by job: the local Lambda runtime and gateway (`runtime`),
the local database (`localdb`), stand-ins for outside services (`standins`), generated
docs (`docs`); how a tool ends (`cli`) and where local data lives (`local_data`).

Imports the layer (`ops`) and the functions' packages (`health`, `metrics`, `retention`)
from the paths Python is given: `make` exports PYTHONPATH, pytest reads `pythonpath`
from pyproject.toml, and child processes get `PYTHONPATH` below (Lambda's layout: the
functions as /var/task, the layer as /opt/python).
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER_DIR = ROOT / "layers" / "ops"
FUNCTIONS_DIR = ROOT / "functions"
# The same three as the Makefile's PYTHONPATH and pytest's `pythonpath` (a test checks).
PYTHONPATH = os.pathsep.join(str(p) for p in (ROOT, LAYER_DIR, FUNCTIONS_DIR))
