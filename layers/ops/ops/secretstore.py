"""Secrets Manager access, cached per container.

Powertools Parameters brings boto3, so it is imported only when a secret is
really read: a function configured with DATABASE_URL never loads boto3.
"""

from __future__ import annotations

import json
from typing import Any

SECRET_MAX_AGE_S = 300  # picks up a rotated secret within five minutes


def get_secret(arn: str, *, force_fetch: bool = False) -> str:
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(arn, max_age=SECRET_MAX_AGE_S, force_fetch=force_fetch)
    if isinstance(value, bytes):
        value = value.decode()
    return str(value)


def get_secret_json(arn: str, *, force_fetch: bool = False) -> dict[str, Any]:
    raw = get_secret(arn, force_fetch=force_fetch)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        # `from None`: the decode error carries the secret's text.
        raise ValueError(f"secret {arn} is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"secret {arn} is not a JSON object")
    return data
