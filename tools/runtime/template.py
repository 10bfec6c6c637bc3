"""The functions of template.yaml as the local runtime needs them: code, Handler, timeout,
memory, literal environment, API routes and schedules (CloudFormation's short-form
intrinsics read as plain values)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tools import ROOT

TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form intrinsics (!Ref, !Sub, ...) as plain values."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as f:
        template: dict[str, Any] = yaml.load(f, Loader=_CfnLoader)
    return template


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

    @property
    def package(self) -> str:
        """The function's package (`health` of `health.app.lambda_handler`)."""
        return self.handler.split(".", 1)[0]

    @property
    def package_dir(self) -> Path:
        return self.code_dir / self.package


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
