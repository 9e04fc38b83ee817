"""The SSH-session route: what the edge asks a node for, and what the node accepts."""

from __future__ import annotations

import pytest

from edge.proto.http_route import Unrouted, parse_route
from gitproto.protocol import Service
from gitproto.routes import (
    RouteError,
    Rpc,
    SshSession,
    parse_git_route,
    ssh_session_target,
)
from routing.model import RepoName

AB = RepoName("alice", "project")


@pytest.mark.parametrize("service", list(Service))
def test_the_edge_and_the_node_agree_on_every_service(service: Service) -> None:
    target = ssh_session_target(AB, service)
    assert target == f"/alice/project.git/ssh-{service.verb}".encode()
    assert parse_git_route(b"POST", target) == SshSession(AB, service)


def test_smart_http_still_routes_beside_it() -> None:
    target = b"/alice/project.git/git-upload-pack"
    assert parse_git_route(b"POST", target) == Rpc(AB, Service.UPLOAD_PACK)


@pytest.mark.parametrize(
    "target",
    [
        b"/alice/ssh-upload-pack.git/info/refs?service=git-upload-pack",  # a repo's name
        b"/alice/project.git/ssh-upload-pack/x",
        b"/alice/project/ssh-upload-pack",  # targets always say .git
        b"/alice/project.git/ssh-shell",
        b"/alice/project.git/ssh-",
    ],
)
def test_lookalikes_are_not_sessions(target: bytes) -> None:
    try:
        route = parse_git_route(b"GET" if b"info/refs" in target else b"POST", target)
    except RouteError:
        return  # refused as something else: fine, as long as it is not a session
    assert not isinstance(route, SshSession)


def test_only_post() -> None:
    with pytest.raises(RouteError) as info:
        parse_git_route(b"GET", ssh_session_target(AB, Service.UPLOAD_PACK))
    assert (info.value.http_status, info.value.allow) == (405, "POST")


@pytest.mark.parametrize(
    "target",
    [b"/alice/..x.git/ssh-upload-pack", b"/a/b/c.git/ssh-upload-pack", b"/.git/ssh-upload-pack"],
)
def test_bad_repository_paths_are_400(target: bytes) -> None:
    with pytest.raises(RouteError) as info:
        parse_git_route(b"POST", target)
    assert info.value.http_status == 400


@pytest.mark.parametrize("service", list(Service))
def test_clients_of_the_edge_cannot_ask_for_a_session(service: Service) -> None:
    """The edge's own grammar does not know the route: it is not a git URL there."""
    assert parse_route(b"POST", ssh_session_target(AB, service)) == Unrouted(web=True)
