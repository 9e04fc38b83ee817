"""Routing's outcomes as the API answers them: status and the sentence the client sees."""

from __future__ import annotations

from contextlib import AbstractContextManager

import pytest

from edge.api.accounts import account_errors
from edge.api.handlers import create_errors
from edge.errors import EdgeError
from routing.errors import (
    AlreadyExists,
    ChangedMeanwhile,
    StoreUnavailable,
    UnknownCredential,
    UnknownUser,
)
from routing.placement import PlacementError


def _answer(errors: AbstractContextManager[None], raised: Exception) -> tuple[int, str]:
    with pytest.raises(EdgeError) as info, errors:
        raise raised
    return info.value.http_status, info.value.public_message


@pytest.mark.parametrize(
    ("raised", "status", "shown"),
    [
        (AlreadyExists("user alice already exists"), 409, "user alice already exists"),
        (ChangedMeanwhile("key changed while being revoked, try again"), 409, "key changed"),
        (UnknownUser("alice"), 404, "no such user"),
        (UnknownCredential("no such token"), 404, "no such token"),
        (StoreUnavailable("create /gitedge/users/x: 10.0.0.5:2379 refused"), 503, "routing store"),
    ],
)
def test_account_outcomes(raised: Exception, status: int, shown: str) -> None:
    got_status, message = _answer(account_errors(), raised)
    assert got_status == status
    assert message.startswith(shown)
    assert "10.0.0.5" not in message  # etcd's address is for the log only


@pytest.mark.parametrize(
    ("raised", "status", "shown"),
    [
        (PlacementError("no live volume in region 'fra'"), 503, "no live volume in region 'fra'"),
        (AlreadyExists("repository alice/x already exists"), 409, "repository already exists"),
        (StoreUnavailable("create /gitedge/repos/alice/x: 10.0.0.5:2379"), 503, "routing store"),
    ],
)
def test_create_outcomes(raised: Exception, status: int, shown: str) -> None:
    got_status, message = _answer(create_errors(), raised)
    assert got_status == status
    assert message.startswith(shown)
    assert "10.0.0.5" not in message


def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError), account_errors():
        raise KeyError("a bug is not a routing outcome")
