"""Retention policies, run identity and settings: everything decided before a row is touched."""

from __future__ import annotations

import json

import pytest

from ops.config import settings
from ops.retention_policies import DEFAULT_POLICIES, Policy, PolicyError, load_policies
from retention import inputs
from retention.model import EventError
from retention.pruning import next_batch_size
from tests.support.retention import event


# -- ops.retention_policies ---------------------------------------------------------------
def test_defaults_without_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETENTION_POLICIES", raising=False)
    assert load_policies() == [
        Policy("inbound_events", "received_at", 30, 25_000),
        Policy("chat_sessions", "updated_at", 90, 25_000),
    ]
    assert list(DEFAULT_POLICIES) == load_policies()


def test_policies_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "RETENTION_POLICIES",
        json.dumps(
            [
                {"table": "inbound_events", "column": "received_at", "maxAgeDays": 7},
                {
                    "table": "archive.chat_sessions",
                    "column": "updated_at",
                    "maxAgeDays": 365,
                    "batchSize": 200,
                },
            ]
        ),
    )
    assert load_policies() == [
        Policy("inbound_events", "received_at", 7, 25_000),
        Policy("archive.chat_sessions", "updated_at", 365, 200),
    ]


def _one(**overrides: object) -> str:
    return json.dumps(
        [{"table": "inbound_events", "column": "received_at", "maxAgeDays": 30, **overrides}]
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not valid JSON"),
        ("{}", "non-empty JSON array"),
        ("[]", "non-empty JSON array"),
        ("[1]", "expected an object"),
        (_one(maxAge=3), "unknown keys"),
        (_one(table="inbound_events; DROP TABLE audit_logs"), "lower-case identifier"),
        (_one(table='inbound_events" CASCADE --'), "lower-case identifier"),
        (_one(table="Inbound_Events"), "lower-case identifier"),
        (_one(table="a.b.c"), "lower-case identifier"),
        (_one(column="received_at) OR (1=1"), "column must be"),
        (_one(column=""), "column must be"),
        (_one(table="audit_logs"), "audit log"),
        (_one(table="public.audit_logs"), "audit log"),
        (_one(table="pg_catalog.pg_class"), "system table"),
        (_one(maxAgeDays=0), "maxAgeDays must be an integer from 1"),
        (_one(maxAgeDays=-30), "maxAgeDays must be an integer from 1"),
        (_one(maxAgeDays=1.5), "maxAgeDays must be an integer"),
        (_one(maxAgeDays="30"), "maxAgeDays must be an integer"),
        (_one(maxAgeDays=True), "maxAgeDays must be an integer"),
        (_one(batchSize=0), "batchSize must be an integer from 1"),
        (_one(batchSize=10**9), "batchSize must be an integer"),
        (
            json.dumps([json.loads(_one())[0], json.loads(_one(maxAgeDays=9))[0]]),
            "more than one policy",
        ),
    ],
)
def test_invalid_policies_are_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, raw: str, message: str
) -> None:
    monkeypatch.setenv("RETENTION_POLICIES", raw)
    with pytest.raises(PolicyError, match=message):
        load_policies()


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


# -- run identity ---------------------------------------------------------------------------
def test_scheduler_run_is_keyed_by_schedule_and_time_not_execution() -> None:
    first = inputs.identify(event("retention-scheduler.json"), "req-1")
    retry = inputs.identify(
        event(
            "retention-scheduler.json",
            executionId="another-execution",
            attemptNumber="2",
            scheduledTime="2026-11-22T03:00:00+00:00",
        ),
        "req-2",
    )
    assert first.key == retry.key
    assert first.key.startswith("scheduler:arn:aws:scheduler:")
    assert first.key.endswith("@2026-11-22T03:00:00Z")
    assert (first.trigger, retry.attempt_number, retry.execution_id) == (
        "scheduler",
        "2",
        "another-execution",
    )
    next_day = inputs.identify(
        event("retention-scheduler.json", scheduledTime="2026-11-23T03:00:00Z"), "req-1"
    )
    assert next_day.key != first.key


def test_classic_scheduled_event_is_keyed_by_its_id() -> None:
    identity = inputs.identify(event("retention-scheduled-event.json"), "req-1")
    assert identity.key == "event:cdc73f9d-aea9-11e3-9d5a-835b769c0d9c"
    assert identity.trigger == "eventbridge"
    assert inputs.identify(event("retention-scheduled-event.json"), "req-2") == identity


def test_a_dead_lettered_run_redriven_is_the_same_run() -> None:
    original = event("retention-scheduler.json")
    record = {  # the shape Lambda's on-failure destination puts in the dead-letter queue
        "version": "1.0",
        "timestamp": "2026-11-22T03:16:00.000Z",
        "requestContext": {"requestId": "req-1", "condition": "RetriesExhausted"},
        "requestPayload": original,
        "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "boom"},
    }
    assert inputs.identify(record, "req-9") == inputs.identify(original, "req-1")


def test_manual_run_is_keyed_by_request_id_or_run_id() -> None:
    assert inputs.identify({}, "req-1").key == "manual:req-1"
    assert inputs.identify(None, "req-1").key == "manual:req-1"
    assert inputs.identify({"runId": "backfill-2026-11"}, "req-1").key == (
        "manual:backfill-2026-11"
    )


def test_dry_run_has_its_own_key_and_may_name_tables() -> None:
    identity = inputs.identify(event("retention-dry-run.json", tables=["inbound_events"]), "req-1")
    assert identity.dry_run is True
    assert identity.key == "dry-run:manual:req-1"
    assert identity.tables == ("inbound_events",)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "JSON object"),
        ({"dryRun": "yes"}, "dryRun must be true or false"),
        ({"source": "scheduler", "scheduledTime": "2026-11-22T03:00:00Z"}, "scheduleArn"),
        (
            {
                "source": "scheduler",
                "scheduleArn": "arn:aws:scheduler:x",
                "scheduledTime": "<aws.scheduler.scheduled-time>",
            },
            "unsubstituted",
        ),
        (
            {"source": "scheduler", "scheduleArn": "arn:x", "scheduledTime": "tomorrow"},
            "ISO 8601",
        ),
        ({"source": "aws.events", "detail-type": "Scheduled Event"}, "'id'"),
        ({"runId": "x y; drop"}, "runId must be"),
        ({"tables": "inbound_events"}, "tables must be"),
    ],
)
def test_unusable_events_are_refused(bad: object, message: str) -> None:
    with pytest.raises(EventError, match=message):
        inputs.identify(bad, "req-1")


# -- job settings -----------------------------------------------------------------------------
def test_job_settings_defaults_and_consistency(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RETENTION_DEADLINE_MARGIN_MS",
        "RETENTION_STATEMENT_TIMEOUT_MS",
        "RETENTION_LOCK_TIMEOUT_MS",
        "RETENTION_LEASE_TTL_MS",
    ):
        monkeypatch.delenv(name, raising=False)
    cfg = settings()
    assert cfg.retention_deadline_margin_ms == 30_000
    assert cfg.retention_statement_timeout_ms == 10_000
    monkeypatch.setenv("RETENTION_LEASE_TTL_MS", "5000")
    with pytest.raises(ValueError, match="RETENTION_LEASE_TTL_MS must exceed"):
        settings()
    monkeypatch.delenv("RETENTION_LEASE_TTL_MS")
    monkeypatch.setenv("RETENTION_DEADLINE_MARGIN_MS", "-1")
    with pytest.raises(ValueError, match="positive whole number"):
        settings()


# -- template -------------------------------------------------------------------------------
def test_template_wires_policies_schedule_and_dead_letter_alarm() -> None:
    from ops.retention_policies import parse_policies
    from tools.runtime.template import load_template

    template = load_template()
    default = template["Parameters"]["RetentionPolicies"]["Default"]
    assert parse_policies(default) == list(DEFAULT_POLICIES)
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["RETENTION_POLICIES"] == {"Ref": "RetentionPolicies"}

    function = template["Resources"]["RetentionFunction"]["Properties"]
    schedule = function["Events"]["Daily"]
    assert schedule["Type"] == "ScheduleV2"
    props = schedule["Properties"]
    assert props["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert props["ScheduleExpressionTimezone"] == {"Ref": "RetentionScheduleTimezone"}
    assert props["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert props["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": "RetentionDeadLetterQueue.Arn"}
    # The Input Scheduler fills in is exactly what inputs.identify keys a run on.
    filled = (
        props["Input"]
        .replace("<aws.scheduler.scheduled-time>", "2026-03-29T01:00:00Z")
        .replace("<aws.scheduler.schedule-arn>", "arn:aws:scheduler:eu-west-1:1:schedule/x/y")
        .replace("<aws.scheduler.execution-id>", "e-1")
        .replace("<aws.scheduler.attempt-number>", "1")
    )
    identity = inputs.identify(json.loads(filled), "req")
    assert (
        identity.key == "scheduler:arn:aws:scheduler:eu-west-1:1:schedule/x/y@2026-03-29T01:00:00Z"
    )
    # Long enough for the batch loop; one at a time (the lease is the real guard).
    assert function["Timeout"] == 900 and function["ReservedConcurrentExecutions"] == 1

    alarm = template["Resources"]["RetentionDeadLetterAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": "RetentionDeadLetterQueue.QueueName"}}
    ]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_batch_size_steers_toward_the_target_duration() -> None:
    next_size = next_batch_size
    assert next_size(10_000, elapsed_ms=100, target_ms=50, maximum=10_000) == 5_000
    assert next_size(10_000, elapsed_ms=5_000, target_ms=50, maximum=10_000) == 100  # floor
    assert next_size(3, elapsed_ms=500, target_ms=50, maximum=3) == 3  # a tiny policy stays
    assert next_size(2_500, elapsed_ms=10, target_ms=50, maximum=10_000) == 5_000
    assert next_size(8_000, elapsed_ms=10, target_ms=50, maximum=10_000) == 10_000  # the cap
    assert next_size(4_000, elapsed_ms=40, target_ms=50, maximum=10_000) == 4_000
