"""What routing's lookups and writes can fail with. Pure; no wire form here.

The edge maps each to its own answer (edge/api, edge/auth.py); a node never
sees them. Messages of the write outcomes are safe to show a client: they
name only what the client itself sent.
"""

from __future__ import annotations


class NotFound(LookupError):
    """No such repository in etcd."""


class Unroutable(Exception):
    """The repository exists but its volume's node is not live."""


class NoReplicaInSync(Unroutable):
    """A replicated repository none of whose live replicas is at the consensus
    generation, after the bounded wait for one to catch up."""


class ConsensusUnavailable(Exception):
    """A push to a replicated repository while this edge cannot reach etcd."""


class StoreUnavailable(Exception):
    """etcd could not be reached to check a miss or to make a write."""


class AlreadyExists(Exception):
    """A create-if-absent transaction found its key taken (repo, user, SSH key, token id)."""


class UnknownUser(LookupError):
    """No such user in etcd."""


class UnknownCredential(LookupError):
    """No such SSH key or token, or not one the caller may see (the same answer)."""


class ChangedMeanwhile(Exception):
    """A compare-and-delete lost a race: the record changed after it was read."""
