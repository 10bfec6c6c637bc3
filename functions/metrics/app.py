"""GET /metrics: Prometheus exposition of the totals stored in PostgreSQL."""

from __future__ import annotations

from ops.api import Api, Request, Response, error_response

app = Api()


@app.get("/metrics", auth=True)
def metrics(_: Request) -> Response:
    return error_response(503, "not_ready", "metrics store not yet implemented")


lambda_handler = app.lambda_handler
