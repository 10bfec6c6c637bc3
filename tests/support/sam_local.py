"""What `sam local invoke/start-api --env-vars FILE` gives each function, without Docker.

The SAM CLI's own code (in .venv-sam) resolves the template's environment and applies the
file, exactly as it does before starting a container; only the container is left out.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tools import ROOT

SAM_PYTHON = ROOT / ".venv-sam" / "bin" / "python"

_RESOLVE = r"""
import json, sys
from samcli.commands.local.lib.local_lambda import LocalLambdaRunner
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

template, env_file = sys.argv[1:3]
values = json.load(open(env_file)) if env_file else None
stacks, _ = SamLocalStackProvider.get_stacks(template)
provider = SamFunctionProvider(stacks)
runner = LocalLambdaRunner(None, provider, cwd=".", real_path=".", env_vars_values=values)
print(json.dumps({fn.name: runner._make_env_vars(fn).resolve() for fn in provider.get_all()}))
"""


def sam_local_environment(template: Path, env_file: Path | None) -> dict[str, dict[str, str]]:
    """Function logical id -> the environment its sam local container would get."""
    out = subprocess.run(
        [str(SAM_PYTHON), "-c", _RESOLVE, str(template), str(env_file or "")],
        cwd=ROOT,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    environments: dict[str, dict[str, str]] = json.loads(out.stdout)
    return environments
