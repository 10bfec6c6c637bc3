"""The local Lambda runtime: template.yaml's functions (`template`), a handler imported and
called as Lambda calls it (`handler`), API Gateway's events and routing (`apigw`), the
local gateway and its worker processes (`gateway`, `worker`), `make run` (`serve`),
`make invoke` (`invoke`), and a function under awslambdaric against a Runtime API
stand-in (`ric`, `runtime_api`)."""
