"""The create request's replica fields, and the refusal while replication is not built."""

from __future__ import annotations

import pytest

from edge.api import handlers
from edge.api.handlers import parse_create_request, replication_factor
from edge.errors import BadRequest


def test_replicas_and_sync_replicas_are_parsed_and_checked() -> None:
    request = parse_create_request({"name": "alice/x", "replicas": 3, "sync_replicas": 2})
    assert (request.replicas, request.sync_replicas) == (3, 2)
    for bad in ({"replicas": 0}, {"replicas": "3"}, {"replicas": True}, {"sync_replicas": 2}):
        with pytest.raises(BadRequest):
            parse_create_request({"name": "alice/x", **bad})


def test_factor_defaults_from_config_and_one_is_always_allowed() -> None:
    assert replication_factor(parse_create_request({"name": "alice/x"}), 1) == 1


def test_factor_above_one_is_refused_while_replication_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "REPLICATION_AVAILABLE", False)
    with pytest.raises(BadRequest, match="not available yet"):
        replication_factor(parse_create_request({"name": "alice/x", "replicas": 3}), 1)
    with pytest.raises(BadRequest, match="not available yet"):
        replication_factor(parse_create_request({"name": "alice/x"}), 2)


def test_replica_regions_are_parsed_and_checked() -> None:
    request = parse_create_request({"name": "alice/x", "replicas": 3, "replica_regions": ["lax"]})
    assert request.replica_regions == ("lax",)
    assert parse_create_request({"name": "alice/x"}).replica_regions == ()
    for bad, says in (
        ({"replicas": 2, "replica_regions": "lax"}, "must be a list"),
        ({"replicas": 2, "replica_regions": [7]}, "must be a list"),
        ({"replicas": 2, "replica_regions": ["LAX!"]}, "bad region name"),
        ({"replicas": 2, "replica_regions": ["lax", "syd"]}, "fewer than replicas"),
        ({"replica_regions": ["lax"]}, "fewer than replicas"),
    ):
        with pytest.raises(BadRequest, match=says):
            parse_create_request({"name": "alice/x", **bad})
