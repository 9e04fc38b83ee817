"""The routing model: repositories, volumes, nodes and regions.

Pure data and validation; no I/O. Every repo path a client sends goes through
`RepoName.parse` before it is used for anything (etcd keys, file paths, logs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NewType

VolumeId = NewType("VolumeId", str)
NodeId = NewType("NodeId", str)
Region = NewType("Region", str)

# One path component: ASCII letters, digits and `._-`, not starting with `.`
# or `-` (a leading `-` is argument injection into git; a leading `.` hides
# files and allows `..`).
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
MAX_COMPONENT_LEN = 100


class InvalidRepoName(ValueError):
    """The client sent a repository path that is not `owner/name`."""


class InvalidRegion(ValueError):
    """A region name that is not a short lowercase token."""


@dataclass(frozen=True, order=True)
class RepoName:
    """A validated `owner/name` (without `.git`)."""

    owner: str
    name: str

    @classmethod
    def parse(cls, raw: str) -> RepoName:
        """Validate `owner/name` or `owner/name.git`; raise InvalidRepoName."""
        if not raw.isascii():
            raise InvalidRepoName("repository names are ASCII only")
        path = raw.removesuffix(".git")
        parts = path.split("/")
        if len(parts) != 2:
            raise InvalidRepoName("repository must be owner/name")
        for part in parts:
            if not part:
                raise InvalidRepoName("empty path component")
            if len(part) > MAX_COMPONENT_LEN:
                raise InvalidRepoName(f"path component longer than {MAX_COMPONENT_LEN}")
            if ".." in part or not _COMPONENT.fullmatch(part):
                raise InvalidRepoName(
                    "use ASCII letters, digits and ._- (not leading . or -, no ..)"
                )
        if parts[1].endswith(".git"):
            raise InvalidRepoName("name may not end in .git twice")
        return cls(parts[0], parts[1])

    @property
    def path(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def bare_dir(self) -> str:
        """The bare repository's directory relative to the volume root."""
        return f"{self.owner}/{self.name}.git"

    def __str__(self) -> str:
        return self.path


def parse_region(raw: str) -> Region:
    if not _REGION.fullmatch(raw):
        raise InvalidRegion(f"bad region name {raw!r}: lowercase letters, digits, '-'")
    return Region(raw)


@dataclass(frozen=True)
class VolumeInfo:
    """A volume as its node advertises it (live data, under the node's lease)."""

    volume_id: VolumeId
    free_bytes: int


@dataclass(frozen=True)
class NodeRecord:
    """A live node. Stored under a lease: the key vanishes when the node dies."""

    node_id: NodeId
    region: Region
    http_url: str
    volumes: tuple[VolumeInfo, ...]
    tls_cert_sha256: str | None = None
    """With an https `http_url`: the SHA-256 (lowercase hex) of the DER certificate
    the node serves. Edges pin it: no CA, no host name (edge/http/pool.py)."""


@dataclass(frozen=True)
class VolumeRecord:
    """A volume's durable home: it outlives node restarts."""

    volume_id: VolumeId
    region: Region
    node_id: NodeId


@dataclass(frozen=True)
class DrainRecord:
    """A node the operator is draining: no new repository or replica goes there.
    Durable (not under the node's lease): a drained node stays drained across restarts."""

    node_id: NodeId
    since: float
    by: str = ""


@dataclass(frozen=True)
class RepoRecord:
    """Where a repository lives and who may use it. Written on create."""

    name: RepoName
    volume_id: VolumeId
    region: Region
    created_at: float
    owner: str = ""
    """The user who created it ("" for records from before access control: the
    name's owner part stands in)."""
    public: bool = False
    readers: tuple[str, ...] = ()
    writers: tuple[str, ...] = ()
    replicas: tuple[VolumeId, ...] = ()
    """With a replication factor > 1: every replica's volume, the home
    (`volume_id`) first. Empty for an unreplicated repository."""
    sync_replicas: int = 0
    """W: replicas that hold a push's objects before it is accepted (0 when unreplicated)."""

    @property
    def owner_user(self) -> str:
        return self.owner or self.name.owner

    @property
    def replica_volumes(self) -> tuple[VolumeId, ...]:
        """Every volume that holds the repository, the home first."""
        return self.replicas or (self.volume_id,)

    @property
    def replicated(self) -> bool:
        return len(self.replicas) > 1

    def with_replica(self, volume_id: VolumeId, sync_replicas: int = 0) -> RepoRecord:
        """One more replica, after the others (the home stays first). A factor-1
        record becomes replicated, with W = `sync_replicas`."""
        return replace(
            self,
            replicas=(*self.replica_volumes, volume_id),
            sync_replicas=self.sync_replicas or sync_replicas,
        )

    def without_replica(self, volume_id: VolumeId, home: VolumeRecord) -> RepoRecord:
        """`volume_id` out of the set, homed on `home` (which stays in it); with one
        replica left, a plain factor-1 record (no `replicas`, W 0)."""
        rest = [v for v in self.replica_volumes if v not in (volume_id, home.volume_id)]
        return replace(
            self,
            volume_id=home.volume_id,
            region=home.region,
            replicas=(home.volume_id, *rest) if rest else (),
            sync_replicas=self.sync_replicas if rest else 0,
        )


def parse_user_name(raw: str) -> str:
    """A user name follows the rules of one repo path component."""
    if not isinstance(raw, str) or len(raw) > MAX_COMPONENT_LEN or not raw.isascii():
        raise InvalidRepoName("user names are ASCII, at most 100 characters")
    if ".." in raw or not _COMPONENT.fullmatch(raw):
        raise InvalidRepoName("use ASCII letters, digits and ._- (not leading . or -, no ..)")
    return raw


@dataclass(frozen=True)
class UserRecord:
    name: str
    created_at: float


@dataclass(frozen=True)
class KeyRecord:
    """An SSH public key, stored under its SHA256 fingerprint (unique network-wide)."""

    fingerprint: str
    user: str
    title: str
    public_key: str
    created_at: float


@dataclass(frozen=True)
class TokenRecord:
    """A personal HTTPS token, stored as a SHA-256 of its secret part only."""

    token_id: str
    user: str
    secret_sha256: str
    created_at: float


@dataclass(frozen=True)
class RepoLocation:
    """A repository resolved to the node that serves it right now."""

    repo: RepoName
    region: Region
    volume_id: VolumeId
    node_id: NodeId
    node_url: str
    """None of the fields is optional: a repo whose node is down is not a location."""

    def to_json(self) -> dict[str, str]:
        return {
            "repo": self.repo.path,
            "region": self.region,
            "volume": self.volume_id,
            "node": self.node_id,
        }
