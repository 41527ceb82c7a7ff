"""Redaction: every kind, no false positives on ordinary log lines, config validation, metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError
from receiver.logs.redact import BUILTIN_KINDS, RedactConfig, Redactor

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
       "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\nZ1BjP5CE/Wm/Rr500P\n"
       "-----END RSA PRIVATE KEY-----")

# (kind, input, secret that must disappear, text that must survive)
CASES = [
    ("email", "user alice.smith+ops@example.co.uk logged in", "alice.smith+ops@example.co.uk", "logged in"),
    ("bearer_token", "GET /x Authorization=Bearer abcDEF123456.ghi-jkl_mno", "abcDEF123456", "GET /x"),
    ("bearer_token", "sent header with Bearer s3cr3tT0kenValue99 ok", "s3cr3tT0kenValue99", "ok"),
    ("bearer_token", "auth Basic dXNlcjpwYXNzd29yZA== accepted", "dXNlcjpwYXNzd29yZA==", "accepted"),
    ("jwt", f"session {JWT} refreshed", JWT, "refreshed"),
    ("private_key", f"loaded key {PEM} from disk", "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi", "from disk"),
    ("private_key",
     '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----\\n"}',
     "MIIEvQIBADANBg", "private_key"),
    ("aws_access_key", "using key AKIAIOSFODNN7EXAMPLE for s3", "AKIAIOSFODNN7EXAMPLE", "for s3"),
    ("aws_secret_key", "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY region=eu",
     "wJalrXUtnFEMI/K7MDENG", "region=eu"),
    ("gcp_api_key", "maps key AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI used", "AIzaSyDdI0hCZtE6vySjMm",
     "used"),
    ("azure_key",
     "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==;",
     "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==", "AccountName=acct"),
    ("github_token", "clone with ghp_1234567890abcdefghijklmnopqrstuvwxyzAB done", "ghp_1234567890abcdef",
     "done"),
    ("slack_token", "notify xoxb-2402311-1232342-AbCdEfGhIjKlMnOp failed", "xoxb-2402311", "failed"),
    ("api_key", "openai key sk-proj-Abcdefghijklmnopqrstuvwx12345 rejected", "sk-proj-Abcdefgh", "rejected"),
    ("api_key", "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc charge", "sk_live_4eC39Hq", "charge"),
    ("url_password", "connecting to postgres://app:Pa55w0rd!@db.internal:5432/orders", "Pa55w0rd!",
     "postgres://app:"),
    ("password", "login failed password=hunter2 user=bob", "hunter2", "user=bob"),
    ("password", 'payload {"user": "bob", "password": "correct horse battery"}', "correct horse",
     '"user": "bob"'),
    ("password", "DB_PASSWORD: s3cret! host=db", "s3cret!", "host=db"),
    ("secret", "client_secret=abc123xyz&grant_type=client_credentials", "abc123xyz", "grant_type"),
    ("secret", "request api_key=0123456789abcdef ok", "0123456789abcdef", "ok"),
    ("secret", '{"token":"tkn-998877", "n": 1}', "tkn-998877", '"n": 1'),
    ("card_number", "charged card 4111 1111 1111 1111 amount 10", "4111 1111 1111 1111", "amount 10"),
    ("card_number", "pan=5555555555554444;", "5555555555554444", "pan="),
    ("card_number", "amex 378282246310005 ok", "378282246310005", "ok"),
]


@pytest.mark.parametrize("kind,text,secret,keep", CASES)
def test_each_kind_is_redacted(kind: str, text: str, secret: str, keep: str) -> None:
    r = Redactor(RedactConfig())
    out, counts = r.redact(text)
    assert secret not in out, out
    assert f"<REDACTED:{kind}>" in out, out
    assert keep in out, out
    assert counts.get(kind, 0) >= 1


def test_every_builtin_kind_is_covered_by_a_case() -> None:
    covered = {c[0] for c in CASES} | {"ipv4", "ipv6"}
    assert covered == set(BUILTIN_KINDS)


NORMAL_LINES = [
    "081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 src: "
    "/10.250.19.102:54106 dest: /10.250.19.102:50010",
    "081109 204005 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: "
    "10.251.73.220:50010 is added to blk_7128370237687728475 size 67108864",
    "2026-11-25T12:30:45.123456Z request 550e8400-e29b-41d4-a716-446655440000 took 12ms status=200",
    "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 RAS KERNEL "
    "INFO instruction cache parity error corrected",
    "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 ts=1732537845123456789",
    "token validation failed for user 42; basic allocation of 4096 bytes; tokens=5 pass: 3",
    "Nov 25 12:00:01 host sshd[1234]: Accepted publickey for root from 192.168.0.7 port 51234 ssh2",
    "version 1.2.3.4-beta build 20261125120000 "
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "jvm: time 12:30:45 mac aa:bb:cc:dd:ee:ff id 4111111111111112 order 1234567890123",
]


@pytest.mark.parametrize("line", NORMAL_LINES)
def test_no_false_positives_on_ordinary_lines(line: str) -> None:
    out, counts = Redactor(RedactConfig()).redact(line)
    assert out == line
    assert counts == {}


def test_ip_addresses_only_when_enabled() -> None:
    line = "from 10.250.19.102:54106 to fe80::1ff:fe23:4567:890a and 2001:db8::8a2e:370:7334 at 12:30:45"
    assert Redactor(RedactConfig()).redact(line) == (line, {})
    out, counts = Redactor(RedactConfig(ip_addresses=True)).redact(line)
    assert "10.250.19.102" not in out and "fe80::" not in out and "2001:db8" not in out
    assert counts == {"ipv4": 1, "ipv6": 2}
    assert "12:30:45" in out and ":54106" in out


def test_kinds_can_be_disabled_and_custom_patterns_added() -> None:
    cfg = RedactConfig(kinds=["email"], custom=[{"name": "employee_id", "regex": r"\bEMP-\d{6}\b"}])
    r = Redactor(cfg)
    out, counts = r.redact("EMP-123456 mailed bob@example.com password=x")
    assert out == "<REDACTED:employee_id> mailed <REDACTED:email> password=x"
    assert counts == {"employee_id": 1, "email": 1}


def test_disabled_redactor_passes_text_through() -> None:
    assert Redactor(RedactConfig(enabled=False)).redact("password=x") == ("password=x", {})


def test_counts_are_prometheus_counters() -> None:
    reg = CollectorRegistry()
    r = Redactor(RedactConfig(), reg)
    r.redact("a@b.io c@d.io password=1")
    r.redact("e@f.io")
    assert reg.get_sample_value("log_redactions_total", {"kind": "email"}) == 3
    assert reg.get_sample_value("log_redactions_total", {"kind": "password"}) == 1


def test_redact_attributes() -> None:
    r = Redactor(RedactConfig())
    attrs = {"http.request.header.authorization": "Bearer abc", "user.email": "x@y.org", "count": 3,
             "db.password": "hunter2", "tags": ["ok", "mail z@q.io"], "nested": {"api_key": "k"}}
    out, counts = r.redact_attributes(attrs)
    assert out["http.request.header.authorization"] == "<REDACTED:secret>"
    assert out["db.password"] == "<REDACTED:secret>"
    assert out["user.email"] == "<REDACTED:email>"
    assert out["tags"] == ["ok", "mail <REDACTED:email>"]
    assert out["nested"] == {"api_key": "<REDACTED:secret>"}
    assert out["count"] == 3
    assert counts == {"secret": 3, "email": 2}
    assert attrs["db.password"] == "hunter2"  # input untouched


def test_long_input_is_truncated_not_crashing() -> None:
    r = Redactor(RedactConfig(max_chars=100))
    out, _ = r.redact("x" * 10_000 + " password=y")
    assert len(out) < 200 and out.endswith("<TRUNCATED>")


@pytest.mark.parametrize("cfg,key", [
    (RedactConfig(kinds=["nope"]), "redact.kinds"),
    (RedactConfig(custom=[{"name": "x"}]), "redact.custom[0]"),
    (RedactConfig(custom=[{"name": "Bad Name", "regex": "a"}]), "redact.custom[0].name"),
    (RedactConfig(custom=[{"name": "ok", "regex": "("}]), "redact.custom[0].regex"),
    (RedactConfig(custom=[{"name": "email", "regex": "a"}]), "redact.custom[0].name"),
])
def test_config_errors_name_the_key(cfg: RedactConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        cfg.validate()


def test_several_kinds_in_one_line() -> None:
    r = Redactor(RedactConfig())
    out, counts = r.redact("AccountKey=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==;token=abc123 x-api-key: s3cr3t; "
                           "sk-abcdefghijklmnopqrstuvwxyz123 to ops@corp.io via https://u:p4ss@h.io/x")
    assert out == ("AccountKey=<REDACTED:azure_key>;token=<REDACTED:secret> x-api-key: <REDACTED:secret>; "
                   "<REDACTED:api_key> to <REDACTED:email> via https://u:<REDACTED:url_password>@h.io/x")
    assert counts == {"azure_key": 1, "secret": 2, "api_key": 1, "email": 1, "url_password": 1}
