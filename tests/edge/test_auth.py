"""edge.auth: who is asking (Basic user:token, admin Bearer) and whether they may
read or push. A private repository must look exactly like a missing one to
anyone who may not read it."""

from __future__ import annotations

import base64
from typing import cast

import pytest

from edge.auth import authorize, check_namespace, http_user, is_admin
from edge.errors import AuthRequired, EdgeError, Forbidden, RepoNotFound, RoutingUnavailable
from edge.proto.basic_auth import NewToken, new_token
from routing.cache import RoutingCache
from routing.etcd import EtcdClient, EtcdUnavailable, KeyValue
from routing.model import Region, RepoName, RepoRecord, TokenRecord, VolumeId
from routing.schema import Keys, encode_repo, encode_token

KEYS = Keys()
PRIVATE = RepoRecord(
    RepoName("alice", "secret"),
    VolumeId("vol-1"),
    Region("iad"),
    1.0,
    owner="alice",
    readers=("rita",),
    writers=("walt",),
)
PUBLIC = RepoRecord(
    RepoName("alice", "open"),
    VolumeId("vol-1"),
    Region("iad"),
    1.0,
    owner="alice",
    public=True,
    readers=("rita",),
    writers=("walt",),
)
LEGACY = RepoRecord(RepoName("carol", "old"), VolumeId("vol-1"), Region("iad"), 1.0)
MISSING = RepoName("alice", "nothing")


class RecordingEtcd:
    """Stands in for EtcdClient on a cache miss: has nothing (or fails), notes what was asked."""

    def __init__(self, error: Exception | None = None) -> None:
        self.gets: list[str] = []
        self.error = error

    async def get(self, key: str) -> KeyValue | None:
        self.gets.append(key)
        if self.error is not None:
            raise self.error
        return None


def kv(key: str, value: bytes) -> KeyValue:
    return KeyValue(key, value, 1, 1, 1, 0)


def make_cache(
    *tokens: TokenRecord, etcd: RecordingEtcd | None = None
) -> tuple[RoutingCache, RecordingEtcd]:
    etcd = etcd or RecordingEtcd()
    cache = RoutingCache(KEYS, cast(EtcdClient, etcd))
    items = [kv(KEYS.repo(r.name), encode_repo(r)) for r in (PRIVATE, PUBLIC, LEGACY)]
    items += [kv(KEYS.token(t.token_id), encode_token(t)) for t in tokens]
    cache.reset(items, revision=1)
    return cache, etcd


def basic(user: str, password: str, scheme: str = "Basic") -> bytes:
    return f"{scheme} ".encode() + base64.b64encode(f"{user}:{password}".encode())


def stored(token: NewToken, user: str) -> TokenRecord:
    return TokenRecord(token.token_id, user, token.secret_sha256, 1.0)


# -- authorize: reading ------------------------------------------------------------------


@pytest.mark.parametrize("user", [None, "mallory", "rita", "walt", "alice"])
@pytest.mark.parametrize("anonymous_401", [True, False])
async def test_public_repo_is_readable_by_anyone(user: str | None, anonymous_401: bool) -> None:
    cache, etcd = make_cache()
    record = await authorize(cache, PUBLIC.name, user, write=False, anonymous_401=anonymous_401)
    assert record == PUBLIC
    assert etcd.gets == []


@pytest.mark.parametrize("user", ["alice", "rita", "walt"])
async def test_private_repo_is_readable_by_owner_readers_writers(user: str) -> None:
    cache, _ = make_cache()
    assert await authorize(cache, PRIVATE.name, user, write=False, anonymous_401=True) == PRIVATE


async def test_private_repo_anonymous_gets_401_when_asked_for() -> None:
    # HTTPS: a 401 makes git ask for credentials.
    cache, _ = make_cache()
    with pytest.raises(AuthRequired):
        await authorize(cache, PRIVATE.name, None, write=False, anonymous_401=True)


async def test_private_repo_anonymous_gets_not_found_otherwise() -> None:
    cache, _ = make_cache()
    with pytest.raises(RepoNotFound):
        await authorize(cache, PRIVATE.name, None, write=False, anonymous_401=False)


@pytest.mark.parametrize("anonymous_401", [True, False])
@pytest.mark.parametrize("write", [True, False])
async def test_private_repo_stranger_gets_not_found(anonymous_401: bool, write: bool) -> None:
    cache, _ = make_cache()
    with pytest.raises(RepoNotFound):
        await authorize(cache, PRIVATE.name, "mallory", write=write, anonymous_401=anonymous_401)


async def test_legacy_repo_belongs_to_the_names_owner() -> None:
    cache, _ = make_cache()
    assert await authorize(cache, LEGACY.name, "carol", write=True, anonymous_401=True) == LEGACY
    with pytest.raises(RepoNotFound):
        await authorize(cache, LEGACY.name, "alice", write=False, anonymous_401=True)


# -- authorize: pushing ------------------------------------------------------------------


@pytest.mark.parametrize("record", [PRIVATE, PUBLIC])
@pytest.mark.parametrize("user", ["alice", "walt"])
async def test_owner_and_writers_may_push(record: RepoRecord, user: str) -> None:
    cache, _ = make_cache()
    assert await authorize(cache, record.name, user, write=True, anonymous_401=True) == record


@pytest.mark.parametrize("record", [PRIVATE, PUBLIC])
@pytest.mark.parametrize("anonymous_401", [True, False])
async def test_reader_push_is_forbidden(record: RepoRecord, anonymous_401: bool) -> None:
    cache, _ = make_cache()
    with pytest.raises(Forbidden) as info:
        await authorize(cache, record.name, "rita", write=True, anonymous_401=anonymous_401)
    assert info.value.http_status == 403
    assert info.value.public_message == "you are not allowed to push to this repository"


async def test_stranger_push_to_public_repo_is_forbidden() -> None:
    # The repository is visible to them, so 403 leaks nothing.
    cache, _ = make_cache()
    with pytest.raises(Forbidden):
        await authorize(cache, PUBLIC.name, "mallory", write=True, anonymous_401=True)


async def test_anonymous_push_to_public_repo() -> None:
    cache, _ = make_cache()
    with pytest.raises(AuthRequired):
        await authorize(cache, PUBLIC.name, None, write=True, anonymous_401=True)
    with pytest.raises(Forbidden):
        await authorize(cache, PUBLIC.name, None, write=True, anonymous_401=False)


# -- authorize: missing repositories --------------------------------------------------------


async def test_missing_repo_asks_etcd_then_is_not_found() -> None:
    cache, etcd = make_cache()
    with pytest.raises(RepoNotFound):
        await authorize(cache, MISSING, "alice", write=False, anonymous_401=True)
    assert etcd.gets == [KEYS.repo(MISSING)]


async def test_missing_repo_anonymous() -> None:
    cache, _ = make_cache()
    with pytest.raises(AuthRequired):
        await authorize(cache, MISSING, None, write=False, anonymous_401=True)
    with pytest.raises(RepoNotFound):
        await authorize(cache, MISSING, None, write=True, anonymous_401=False)


@pytest.mark.parametrize("user", [None, "mallory"])
@pytest.mark.parametrize("anonymous_401", [True, False])
@pytest.mark.parametrize("write", [True, False])
async def test_private_is_indistinguishable_from_missing(
    user: str | None, anonymous_401: bool, write: bool
) -> None:
    cache, _ = make_cache()
    errors: list[EdgeError] = []
    for name in (PRIVATE.name, MISSING):
        with pytest.raises(EdgeError) as info:
            await authorize(cache, name, user, write=write, anonymous_401=anonymous_401)
        errors.append(info.value)
    hidden, missing = errors
    assert type(hidden) is type(missing)
    assert hidden.http_status == missing.http_status
    assert hidden.public_message == missing.public_message
    assert hidden.headers == missing.headers
    assert hidden.ssh_message == missing.ssh_message


async def test_store_down_on_a_miss_is_unavailable_not_missing() -> None:
    cache, _ = make_cache(etcd=RecordingEtcd(EtcdUnavailable("no endpoint answered")))
    with pytest.raises(RoutingUnavailable):
        await authorize(cache, MISSING, "alice", write=False, anonymous_401=True)
    # Known repositories still authorize from memory.
    assert await authorize(cache, PRIVATE.name, "alice", write=True, anonymous_401=True)


# -- check_namespace -----------------------------------------------------------------------


def test_user_creates_in_own_namespace() -> None:
    assert check_namespace(RepoName("alice", "new"), "alice", admin=False) == "alice"


def test_user_may_not_create_in_another_namespace() -> None:
    with pytest.raises(Forbidden) as info:
        check_namespace(RepoName("bob", "new"), "alice", admin=False)
    assert info.value.public_message == "you may only create repositories under alice/"


def test_namespace_match_is_exact() -> None:
    for owner in ("Alice", "alice2", "alic"):
        with pytest.raises(Forbidden):
            check_namespace(RepoName(owner, "new"), "alice", admin=False)


def test_anonymous_may_not_create() -> None:
    with pytest.raises(AuthRequired):
        check_namespace(RepoName("alice", "new"), None, admin=False)


@pytest.mark.parametrize("user", [None, "alice", "bob"])
def test_admin_creates_for_the_names_owner(user: str | None) -> None:
    assert check_namespace(RepoName("bob", "new"), user, admin=True) == "bob"


# -- is_admin ------------------------------------------------------------------------------


def test_admin_bearer_token() -> None:
    assert is_admin(b"Bearer s3cret-admin", "s3cret-admin")
    assert is_admin(b"bearer s3cret-admin", "s3cret-admin")


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        b"Bearer wrong",
        b"Bearer s3cret-admin2",
        b"Bearer s3cret-admi",
        b"Bearer S3CRET-ADMIN",
        b"Basic " + base64.b64encode(b"admin:s3cret-admin"),
        b"s3cret-admin",
    ],
)
def test_not_admin(header: bytes | None) -> None:
    assert not is_admin(header, "s3cret-admin")


@pytest.mark.parametrize("header", [None, b"", b"Bearer", b"Bearer ", b"Bearer x", b"Bearer ''"])
def test_empty_admin_token_never_matches(header: bytes | None) -> None:
    # An unset admin_token disables the admin API; it is not a password of "".
    assert not is_admin(header, "")


@pytest.mark.parametrize("header", [b"Bearer \xff", "Bearer j\u00f6rg".encode()])
def test_non_ascii_bearer_is_not_admin(header: bytes) -> None:
    # Header bytes come from the client as they are: a non-ASCII token is just wrong.
    assert not is_admin(header, "s3cret-admin")


# -- http_user -----------------------------------------------------------------------------


async def test_no_credentials_is_anonymous() -> None:
    cache, etcd = make_cache()
    assert await http_user(cache, None) is None
    assert etcd.gets == []


async def test_valid_token_names_its_user() -> None:
    token = new_token()
    cache, etcd = make_cache(stored(token, "alice"))
    assert await http_user(cache, basic("alice", token.token)) == "alice"
    assert await http_user(cache, basic("alice", token.token, scheme="basic")) == "alice"
    assert etcd.gets == []


async def test_each_user_is_named_by_their_own_token() -> None:
    alice, bob = new_token(), new_token()
    cache, _ = make_cache(stored(alice, "alice"), stored(bob, "bob"))
    assert await http_user(cache, basic("alice", alice.token)) == "alice"
    assert await http_user(cache, basic("bob", bob.token)) == "bob"


async def test_token_of_another_user_is_refused() -> None:
    alice, bob = new_token(), new_token()
    cache, _ = make_cache(stored(alice, "alice"), stored(bob, "bob"))
    with pytest.raises(AuthRequired):
        await http_user(cache, basic("bob", alice.token))
    with pytest.raises(AuthRequired):
        await http_user(cache, basic("alice", bob.token))


async def test_wrong_secret_is_refused() -> None:
    token = new_token()
    cache, _ = make_cache(stored(token, "alice"))
    tampered = token.token[:-1] + ("A" if token.token[-1] != "A" else "B")
    for password in (tampered, token.token + "x", token.token[:-1]):
        with pytest.raises(AuthRequired):
            await http_user(cache, basic("alice", password))


async def test_unknown_token_id_asks_etcd_and_is_refused() -> None:
    token = new_token()
    cache, etcd = make_cache()
    with pytest.raises(AuthRequired):
        await http_user(cache, basic("alice", token.token))
    assert etcd.gets == [KEYS.token(token.token_id)]


async def test_revoked_token_is_refused() -> None:
    token = new_token()
    cache, _ = make_cache(stored(token, "alice"))
    cache.reset([], revision=2)
    with pytest.raises(AuthRequired):
        await http_user(cache, basic("alice", token.token))


@pytest.mark.parametrize(
    "password",
    ["", "hunter2", "ge_", "ge_short_secret", "ge_0123456789ab_", "ghp_0123456789ab_secret"],
)
async def test_passwords_that_are_not_tokens_are_refused_without_etcd(password: str) -> None:
    cache, etcd = make_cache()
    with pytest.raises(AuthRequired):
        await http_user(cache, basic("alice", password))
    assert etcd.gets == []


@pytest.mark.parametrize(
    "header",
    [
        b"Basic !!!",
        b"Basic YWxpY2U6cHc",  # unpadded
        b"Basic " + base64.b64encode(b"alice-no-colon"),
        b"Basic " + base64.b64encode(b":ge_0123456789ab_secret"),
        b"Basic " + base64.b64encode(b"alice:\xff"),
        b"Basic",
    ],
)
async def test_malformed_basic_is_401_not_anonymous(header: bytes) -> None:
    cache, _ = make_cache()
    with pytest.raises(AuthRequired) as info:
        await http_user(cache, header)
    assert info.value.http_status == 401
    assert (b"www-authenticate", b'Basic realm="gitedge"') in info.value.headers


async def test_store_down_while_checking_a_token_is_unavailable() -> None:
    token = new_token()
    cache, _ = make_cache(etcd=RecordingEtcd(EtcdUnavailable("no endpoint answered")))
    with pytest.raises(RoutingUnavailable):
        await http_user(cache, basic("alice", token.token))


async def test_non_ascii_user_with_a_real_token_id_is_refused() -> None:
    # The user part is any UTF-8 the client sends; it must be a wrong user, not a crash.
    token = new_token()
    cache, _ = make_cache(stored(token, "alice"))
    with pytest.raises(AuthRequired):
        await http_user(cache, basic("\u00e4lice", token.token))
