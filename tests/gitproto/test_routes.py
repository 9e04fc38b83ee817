"""parse_route: what a request line means to the edge, or the status that refuses it."""

from __future__ import annotations

import pytest

from edge.proto.http_route import (
    AddKey,
    CreateRepo,
    CreateToken,
    CreateUser,
    GetRepo,
    ListCredentials,
    RevokeCredential,
    Unrouted,
    parse_route,
)
from gitproto.protocol import HTTP_SERVICES, Service
from gitproto.routes import MAX_TARGET, Health, InfoRefs, RouteError, Rpc
from routing.model import RepoName

AB = RepoName("alice", "project")


def _refused(method: bytes, target: bytes) -> RouteError:
    with pytest.raises(RouteError) as info:
        parse_route(method, target)
    return info.value


# -- smart HTTP ------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(HTTP_SERVICES))
@pytest.mark.parametrize("repo_path", ["alice/project", "alice/project.git"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_info_refs_for_each_service(service: Service, repo_path: str, method: bytes) -> None:
    target = f"/{repo_path}/info/refs?service={service}".encode()
    assert parse_route(method, target) == InfoRefs(AB, service)


def test_info_refs_service_among_other_query_parameters() -> None:
    target = b"/alice/project.git/info/refs?x=1&service=git-upload-pack&y=2"
    assert parse_route(b"GET", target) == InfoRefs(AB, Service.UPLOAD_PACK)


def test_info_refs_service_value_is_percent_decoded() -> None:
    target = b"/alice/project.git/info/refs?service=git%2Dreceive-pack"
    assert parse_route(b"GET", target) == InfoRefs(AB, Service.RECEIVE_PACK)


@pytest.mark.parametrize("service", sorted(HTTP_SERVICES))
@pytest.mark.parametrize("repo_path", ["alice/project", "alice/project.git"])
def test_rpc_for_each_service(service: Service, repo_path: str) -> None:
    target = f"/{repo_path}/{service}".encode()
    assert parse_route(b"POST", target) == Rpc(AB, service)


def test_rpc_ignores_a_query_string() -> None:
    target = b"/alice/project.git/git-upload-pack?anything"
    assert parse_route(b"POST", target) == Rpc(AB, Service.UPLOAD_PACK)


def test_only_receive_pack_writes() -> None:
    assert Service.RECEIVE_PACK.writes
    assert not Service.UPLOAD_PACK.writes


@pytest.mark.parametrize(
    "target",
    [
        b"/alice/project.git/info/refs",
        b"/alice/project/info/refs",
        b"/alice/project.git/info/refs?",
        b"/alice/project.git/info/refs?services=git-upload-pack",
        b"/alice/project.git/info/refs?x=git-upload-pack",
    ],
)
def test_info_refs_without_service_is_dumb_http_404(target: bytes) -> None:
    error = _refused(b"GET", target)
    assert error.http_status == 404
    assert "smart HTTP" in error.message


@pytest.mark.parametrize(
    "service",
    [b"git-upload-archive", b"", b"GIT-UPLOAD-PACK", b"git-upload-pack%00", b"upload-pack"],
)
def test_unknown_service_is_403(service: bytes) -> None:
    error = _refused(b"GET", b"/alice/project.git/info/refs?service=" + service)
    assert error.http_status == 403


def test_only_the_first_service_parameter_counts() -> None:
    target = b"/alice/project.git/info/refs?service=git-upload-archive&service=git-upload-pack"
    assert _refused(b"GET", target).http_status == 403


@pytest.mark.parametrize(
    "target",
    [
        b"/alice/project.git/HEAD",
        b"/alice/project/HEAD",
        b"/alice/project.git/objects/ab/cdef0123456789",
        b"/alice/project.git/objects/info/packs",
        b"/alice/project.git/objects/pack/pack-1234.pack",
        b"/alice/project.git/objects/info/alternates",
        b"/alice/project.git/objects/info/http-alternates",
    ],
)
def test_dumb_http_paths_are_404(target: bytes) -> None:
    error = _refused(b"GET", target)
    assert error.http_status == 404
    assert "smart HTTP" in error.message


# -- methods ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        (b"POST", b"/alice/project.git/info/refs?service=git-upload-pack", "GET, HEAD"),
        (b"PUT", b"/alice/project.git/info/refs?service=git-upload-pack", "GET, HEAD"),
        (b"GET", b"/alice/project.git/git-upload-pack", "POST"),
        (b"HEAD", b"/alice/project.git/git-receive-pack", "POST"),
        (b"DELETE", b"/alice/project.git/git-receive-pack", "POST"),
        (b"GET", b"/api/repos", "POST"),
        (b"PUT", b"/api/repos", "POST"),
        (b"POST", b"/api/repos/alice/project", "GET, HEAD"),
        (b"DELETE", b"/api/repos/alice/project", "GET, HEAD"),
        (b"POST", b"/healthz", "GET, HEAD"),
        (b"PUT", b"/readyz", "GET, HEAD"),
        # Methods are case-sensitive (RFC 9110 section 9.1).
        (b"get", b"/healthz", "GET, HEAD"),
        (b"post", b"/alice/project.git/git-upload-pack", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(method: bytes, target: bytes, allow: str) -> None:
    error = _refused(method, target)
    assert error.http_status == 405
    assert error.allow == allow


def test_errors_other_than_405_carry_no_allow() -> None:
    assert _refused(b"GET", b"/alice/project.git/HEAD").allow == ""
    assert _refused(b"GET", b"/../etc/info/refs?service=git-upload-pack").allow == ""


# -- bad targets -----------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/../etc/info/refs?service=git-upload-pack",
        b"/alice/../info/refs?service=git-upload-pack",
        b"/alice/x/../y/info/refs?service=git-upload-pack",
        b"/-x/y.git/info/refs?service=git-upload-pack",
        b"/x/-y.git/info/refs?service=git-upload-pack",
        b"/.x/y/info/refs?service=git-upload-pack",
        b"/%2e%2e/etc/info/refs?service=git-upload-pack",
        b"/alice/%2e%2e/info/refs?service=git-upload-pack",
        b"/alice%2fproject/info/refs?service=git-upload-pack",
        b"/info/refs?service=git-upload-pack",
        b"//info/refs?service=git-upload-pack",
        b"/alice//project/info/refs?service=git-upload-pack",
        b"/a/b/c/info/refs?service=git-upload-pack",
        b"/alice/project.git.git/info/refs?service=git-upload-pack",
        b"/alice/project.git/git-upload-pack/git-upload-pack",
        b"/../../git-receive-pack",
        b"/git-upload-pack",
        b"/api/repos/",
        b"/api/repos/../x",
        b"/api/repos/a/b/c",
    ],
)
def test_bad_repo_path_is_400(target: bytes) -> None:
    # The method is right for each route, so only the path can be the problem.
    method = b"POST" if b"git-" in target and b"info/refs" not in target else b"GET"
    error = _refused(method, target)
    assert error.http_status == 400
    assert "bad repository path" in error.message


@pytest.mark.parametrize(
    "target",
    [
        "/ålice/project/info/refs?service=git-upload-pack".encode(),
        "/alice/project/info/refs?service=git-upload-pack\u00e9".encode(),
        b"/alice/project\xff/info/refs?service=git-upload-pack",
        b"/\x80",
    ],
)
def test_non_ascii_target_is_400(target: bytes) -> None:
    error = _refused(b"GET", target)
    assert error.http_status == 400
    assert "ASCII" in error.message


@pytest.mark.parametrize(
    "target",
    [
        b"*",
        b"",
        b"alice/project/info/refs?service=git-upload-pack",
        b"http://edge/alice/project/info/refs?service=git-upload-pack",
        b"?service=git-upload-pack",
    ],
)
def test_target_not_an_absolute_path_is_400(target: bytes) -> None:
    assert _refused(b"GET", target).http_status == 400


def test_target_at_max_length_is_routed() -> None:
    target = b"/" + b"a" * (MAX_TARGET - 1)
    assert len(target) == MAX_TARGET
    assert parse_route(b"GET", target) == Unrouted(web=True)


def test_over_long_target_is_414() -> None:
    target = b"/alice/project.git/info/refs?service=git-upload-pack&pad=" + b"x" * MAX_TARGET
    assert len(target) > MAX_TARGET
    assert _refused(b"GET", target).http_status == 414


def test_over_long_check_comes_before_decoding() -> None:
    # A huge non-ASCII target is refused for its size, without decoding it.
    assert _refused(b"GET", b"\xff" * (MAX_TARGET + 1)).http_status == 414


# -- API and health --------------------------------------------------------------


def test_create_repo() -> None:
    assert parse_route(b"POST", b"/api/repos") == CreateRepo()


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("path", [b"alice/project", b"alice/project.git"])
def test_get_repo(method: bytes, path: bytes) -> None:
    assert parse_route(method, b"/api/repos/" + path) == GetRepo(AB)


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_health_routes(method: bytes) -> None:
    assert parse_route(method, b"/healthz") == Health(ready=False)
    assert parse_route(method, b"/readyz") == Health(ready=True)


def test_health_ignores_a_query_string() -> None:
    assert parse_route(b"GET", b"/readyz?verbose=1") == Health(ready=True)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"GET", b"/"),
        (b"GET", b"/index.html"),
        (b"GET", b"/alice"),
        (b"GET", b"/alice/project"),
        (b"GET", b"/alice/project.git"),
        (b"GET", b"/alice/project.git/info"),
        (b"GET", b"/alice/project.git/info/refs/"),
        (b"GET", b"/healthz/"),
        (b"GET", b"/readyz/x"),
        (b"GET", b"/api"),
        (b"GET", b"/api/repo"),
        (b"POST", b"/api/reposx"),
        (b"DELETE", b"/anything"),
        (b"GET", b"/alice/project.git/git-upload-packx"),
    ],
)
def test_anything_else_is_not_found(method: bytes, target: bytes) -> None:
    route = parse_route(method, target)
    assert isinstance(route, Unrouted)
    # The web frontend's, unless the path is under the edge's own /api or /_gitedge.
    assert route.web == (not target.startswith((b"/api", b"/_gitedge")))


def test_route_error_is_an_exception_with_its_message() -> None:
    error = _refused(b"GET", b"/alice/project.git/info/refs?service=nope")
    assert isinstance(error, Exception)
    assert str(error) == error.message
    assert "nope" in error.message


# -- users, tokens, keys ---------------------------------------------------------------

FP = "SHA256:" + "aB3+/" * 8 + "xyz"  # 43 base64 characters, '+' and '/' included


def test_account_routes() -> None:
    assert parse_route(b"POST", b"/api/admin/users") == CreateUser()
    assert parse_route(b"POST", b"/api/admin/users/bob/tokens") == CreateToken("bob")
    assert parse_route(b"GET", b"/api/admin/users/bob/tokens") == ListCredentials("token", "bob")
    assert parse_route(b"GET", b"/api/admin/users/bob/keys") == ListCredentials("key", "bob")
    assert parse_route(b"POST", b"/api/user/keys") == AddKey()
    assert parse_route(b"GET", b"/api/user/keys") == ListCredentials("key")
    assert parse_route(b"GET", b"/api/user/tokens") == ListCredentials("token")
    assert parse_route(b"GET", b"/api/admin/users/bob/other") == Unrouted()


@pytest.mark.parametrize("scope", [b"user", b"admin"])
def test_revocations_percent_encoded_or_not(scope: bytes) -> None:
    admin = scope == b"admin"
    token = parse_route(b"DELETE", b"/api/" + scope + b"/tokens/0123456789ab")
    assert token == RevokeCredential("token", "0123456789ab", admin)
    encoded = FP.replace("+", "%2B").replace("/", "%2F").replace(":", "%3A").encode()
    for target in (FP.encode(), encoded):
        key = parse_route(b"DELETE", b"/api/" + scope + b"/keys/" + target)
        assert key == RevokeCredential("key", FP, admin)


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        (b"DELETE", b"/api/user/tokens/0123456789AB", 400),  # ids are lower-case hex
        (b"DELETE", b"/api/user/tokens/0123456789a", 400),
        (b"DELETE", b"/api/user/tokens/ge_0123456789ab_secret", 400),  # the id, not the token
        (b"DELETE", b"/api/user/keys/SHA256:short", 400),
        (b"DELETE", b"/api/user/keys/MD5:" + b"ab:" * 15 + b"ab", 400),
        (b"DELETE", b"/api/admin/keys/" + FP.encode() + b"x", 400),
        (b"GET", b"/api/user/tokens/0123456789ab", 405),
        (b"POST", b"/api/user/tokens", 405),
        (b"DELETE", b"/api/user/keys", 405),
        (b"PUT", b"/api/admin/users/bob/keys", 405),
        (b"GET", b"/api/admin/users/..%2Fx/tokens", 400),
    ],
)
def test_bad_account_requests(method: bytes, target: bytes, status: int) -> None:
    assert _refused(method, target).http_status == status
