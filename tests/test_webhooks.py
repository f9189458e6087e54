"""The events settings file and the Standard Webhooks signature (``cloudimg.webhooks``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cloudimg.webhooks import EventsConfigError, load_events_config, parse_secret, sign, verify

# The example of the Standard Webhooks specification (and of Svix's documentation).
_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
_TIMESTAMP = 1614265330
_BODY = b'{"test": 2432232314}'
_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_the_specifications() -> None:
    key = parse_secret(_SECRET, "test")
    headers = sign(key, _ID, _TIMESTAMP, _BODY)
    assert headers == {
        "webhook-id": _ID,
        "webhook-timestamp": str(_TIMESTAMP),
        "webhook-signature": _SIGNATURE,
    }
    assert verify(key, headers, _BODY)
    assert not verify(key, headers, _BODY + b" ")
    assert not verify(key, {**headers, "webhook-id": "other"}, _BODY)
    # A receiver given several signatures (a rotated secret) takes any that is valid.
    assert verify(key, {**headers, "webhook-signature": f"v1,AAAA {_SIGNATURE}"}, _BODY)
    assert not verify(key, {k: v for k, v in headers.items() if k != "webhook-id"}, _BODY)


def _write(tmp_path: Path, document: Any) -> Path:
    (tmp_path / "secret").write_text(_SECRET + "\n")
    path = tmp_path / "events.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_a_config_with_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", _SECRET)
    config = load_events_config(
        _write(
            tmp_path,
            {
                "source": "https://r.example",
                "dead_letter_after_secs": 60,
                "lease_secs": 5,
                "endpoints": [
                    {"name": "a", "url": "http://h/", "secret_file": "secret"},
                    {
                        "name": "b.2",
                        "url": "https://h/b",
                        "secret_env": "HOOK_SECRET",
                        "types": ["io.cloudimg.tag.*"],
                        "subjects": ["vms/*"],
                        "dead_letter_after_secs": 5,
                    },
                ],
            },
        )
    )
    assert config.source == "https://r.example"
    assert (config.dead_letter_after_secs, config.lease_secs) == (60.0, 5.0)
    first, second = config.endpoints
    assert first.key == second.key == parse_secret(_SECRET, "x")
    assert first.takes("io.cloudimg.gc.run", "gc")
    assert second.takes("io.cloudimg.tag.created", "vms/fedora:40")
    assert not second.takes("io.cloudimg.gc.run", "vms/fedora:40")
    assert not second.takes("io.cloudimg.tag.created", "other/fedora:40")
    assert second.dead_letter_after_secs == 5.0


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "not JSON"),
        ([], "must be a JSON object"),
        ({"endpoint": []}, "unknown keys ['endpoint']"),
        ({"lease_secs": 0}, "lease_secs must be a positive number"),
        ({"endpoints": [{"name": "A", "url": "http://h/"}]}, "name must be"),
        ({"endpoints": [{"name": "a", "url": "ftp://h/"}]}, "url must be http(s)"),
        ({"endpoints": [{"name": "a", "url": "http://h/"}]}, "needs secret_file or secret_env"),
        (
            {"endpoints": [{"name": "a", "url": "http://h/", "secret_file": "missing"}]},
            "cannot read secret_file",
        ),
        (
            {"endpoints": [{"name": "a", "url": "http://h/", "secret_env": "NO_SUCH_VAR_X"}]},
            "NO_SUCH_VAR_X is not set",
        ),
        (
            {
                "endpoints": [
                    {"name": "a", "url": "http://h/", "secret_file": "secret", "types": []}
                ]
            },
            "types must be a non-empty list",
        ),
        (
            {
                "endpoints": [
                    {"name": "a", "url": "http://h/", "secret_file": "secret"},
                    {"name": "a", "url": "http://h/", "secret_file": "secret"},
                ]
            },
            "names must differ",
        ),
    ],
)
def test_a_bad_config_is_refused_saying_why(tmp_path: Path, document: Any, message: str) -> None:
    path = _write(tmp_path, document)
    with pytest.raises(EventsConfigError) as raised:
        load_events_config(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("secret", "message"),
    [("abc", "whsec_<base64>"), ("whsec_!!", "not base64"), ("whsec_YWJj", "at least 16 bytes")],
)
def test_a_bad_secret_is_refused(secret: str, message: str) -> None:
    with pytest.raises(EventsConfigError, match=message):
        parse_secret(secret, "here")
