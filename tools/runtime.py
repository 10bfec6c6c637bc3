"""Run handlers the way Lambda does, without Docker: the function's directory and the
layer on sys.path, a context object with a deadline, and the template's settings."""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tools import LAYER_DIR, ROOT

TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form intrinsics (!Ref, !Sub, ...) as plain values."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as f:
        return yaml.load(f, Loader=_CfnLoader)


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    handler: str
    timeout_s: float
    memory_mb: int
    environment: dict[str, str]
    routes: tuple[ApiRoute, ...]
    schedules: tuple[dict[str, Any], ...] = field(default=())


def _plain_env(variables: dict[str, Any]) -> dict[str, str]:
    """Only literal values: parameters and conditions are resolved by CloudFormation."""
    return {k: str(v) for k, v in variables.items() if isinstance(v, (str, int, float)) and v != ""}


def functions(template: dict[str, Any] | None = None) -> dict[str, FunctionSpec]:
    template = template or load_template()
    glob = template.get("Globals", {}).get("Function", {})
    specs: dict[str, FunctionSpec] = {}
    for logical_id, res in template.get("Resources", {}).items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = res.get("Properties", {})
        env = {
            **_plain_env(glob.get("Environment", {}).get("Variables", {})),
            **_plain_env(props.get("Environment", {}).get("Variables", {})),
        }
        routes, schedules = [], []
        for event in (props.get("Events") or {}).values():
            if event.get("Type") == "Api":
                p = event["Properties"]
                routes.append(ApiRoute(str(p["Method"]).upper(), str(p["Path"])))
            elif event.get("Type") in ("ScheduleV2", "Schedule"):
                schedules.append(event.get("Properties", {}))
        specs[logical_id] = FunctionSpec(
            logical_id=logical_id,
            code_dir=ROOT / str(props["CodeUri"]).rstrip("/"),
            handler=str(props.get("Handler", glob.get("Handler"))),
            timeout_s=float(props.get("Timeout", glob.get("Timeout", 3))),
            memory_mb=int(props.get("MemorySize", glob.get("MemorySize", 128))),
            environment=env,
            routes=tuple(routes),
            schedules=tuple(schedules),
        )
    return specs


def local_emf_default(environ: MutableMapping[str, str]) -> None:
    """Local runs have no CloudWatch and the template's namespace is a parameter (not
    resolved here): EMF is off on purpose (POWERTOOLS_METRICS_DISABLED), rather than
    warned about as a missing namespace, unless the shell sets either variable."""
    if not environ.get("POWERTOOLS_METRICS_NAMESPACE"):
        environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")


class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools use."""

    def __init__(self, function_name: str, timeout_s: float, memory_mb: int = 256) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(code_dir: Path, handler: str = "app.lambda_handler") -> Callable[..., Any]:
    """Import `handler` from `code_dir` as Lambda would (that folder and the layer on sys.path).

    The module gets a name unique to its folder, so several functions' `app.py`
    can be loaded into one process (tests, benchmarks).
    """
    module_name, attr = handler.rsplit(".", 1)
    for entry in (str(LAYER_DIR), str(code_dir)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    unique = f"{code_dir.name}__{module_name}"
    module = sys.modules.get(unique)
    if module is None:
        spec = importlib.util.spec_from_file_location(unique, code_dir / f"{module_name}.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {handler} from {code_dir}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        spec.loader.exec_module(module)
    return getattr(module, attr)
