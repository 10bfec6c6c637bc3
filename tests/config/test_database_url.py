"""DATABASE_URL: every query option is honoured or refused by name (never ignored), `sslmode`
is validated as DB_SSL_MODE is, and no error quotes the password."""

from __future__ import annotations

import pytest

from ops.config import SSL_MODES
from ops.db import DatabaseMisconfigured, connect_url, parse_database_url
from tools.localdb.pgcluster import PgCluster

SECRET = "s3cr+et/pw"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://app@db.example/app?password=s3cr%2Bet%2Fpw",
            {"user": "app", "password": SECRET, "host": "db.example", "database": "app"},
        ),
        # '+' is a '+' (libpq URIs are not HTML forms), '%2B' too
        ("postgresql://app@h/app?password=a+b", {"password": "a+b"}),
        ("postgresql://app@h/app?password=", {"password": ""}),
        (
            "postgresql:///ignored?host=db2&port=6543&user=bob&dbname=prod",
            {"host": "db2", "port": 6543, "user": "bob", "database": "prod"},
        ),
        # Options win over the URL's parts, as in libpq
        ("postgresql://app@h:5432/one?port=6000&dbname=two", {"port": 6000, "database": "two"}),
        ("postgresql://app@/app?host=/run/pg", {"unix_sock": "/run/pg/.s.PGSQL.5432"}),
        ("postgresql://app@h/app?sslmode=verify-full", {"ssl_mode": "verify-full"}),
        ("postgresql://app@h/app?SSLMODE=Require", {"ssl_mode": "require"}),
        ("postgresql://app@h/app", {"ssl_mode": "disable", "password": None}),
    ],
)
def test_options_that_are_honoured(url: str, expected: dict[str, object]) -> None:
    params = parse_database_url(url)
    assert {k: getattr(params, k) for k in expected} == expected


@pytest.mark.parametrize("mode", ["bogus", "", "off", "REQUIRED", "verify_full"])
def test_an_sslmode_outside_db_ssl_modes_choices_is_refused(mode: str) -> None:
    with pytest.raises(DatabaseMisconfigured) as err:
        parse_database_url(f"postgresql://app:{SECRET}@h/app?sslmode={mode}")
    assert str(err.value) == f"DATABASE_URL's sslmode must be one of {', '.join(SSL_MODES)}"


@pytest.mark.parametrize(
    ("option", "hint"),
    [
        ("application_name", "set per function"),
        ("connect_timeout", "DB_CONNECT_TIMEOUT_S"),
        ("sslrootcert", "DB_SSL_ROOT_CERT"),
        ("options", "not supported"),
        ("target_session_attrs", "not supported"),
        ("passfile", "not supported"),
    ],
)
def test_an_option_not_honoured_is_refused_by_name(option: str, hint: str) -> None:
    with pytest.raises(DatabaseMisconfigured) as err:
        parse_database_url(f"postgresql://app:{SECRET}@h/app?{option}={SECRET}")
    message = str(err.value)
    assert f"DATABASE_URL option {option!r}" in message and hint in message, message
    assert SECRET not in message and "s3cr" not in message


@pytest.mark.parametrize("query", [SECRET, f"{SECRET}=x", "a b=1", "x" * 200 + "=1", "=1"])
def test_an_option_name_that_is_no_name_is_not_quoted(query: str) -> None:
    """A password pasted in the wrong place must not reach the log through the error."""
    with pytest.raises(DatabaseMisconfigured) as err:
        parse_database_url(f"postgresql://app@h/app?{query}")
    assert "s3cr" not in str(err.value) and "x" * 50 not in str(err.value)
    assert "DATABASE_URL has an option that is not a libpq option name" in str(err.value)


def test_the_password_may_not_be_given_twice() -> None:
    with pytest.raises(DatabaseMisconfigured, match="both") as err:
        parse_database_url(f"postgresql://app:{SECRET}@h/app?password=other")
    assert SECRET not in str(err.value) and "other" not in str(err.value)


def test_a_password_in_the_query_logs_in_to_a_real_server(pg_cluster: PgCluster) -> None:
    """The server asks for a SCRAM password (tools.localdb.pgcluster): the option is really used."""
    from urllib.parse import quote

    base = pg_cluster.url("postgres")
    without = base.replace(f":{pg_cluster.password}@", "@")
    conn = connect_url(f"{without}?password={quote(pg_cluster.password, safe='')}")
    try:
        assert conn.run("SELECT current_user") == [["postgres"]]
    finally:
        conn.close()
