"""A copy's delete waits for the requests being served from it (node/repos.py).

Regression: a `repo move` deleted the old home while a push routed there by an
edge's not-yet-updated cache was starting; git then failed in the renamed-away
directory ("not a git repository") instead of the vote refusing it cleanly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from node import repos
from node.repos import RepoStore
from routing.model import RepoName

NAME = RepoName.parse("alice/mover")


@pytest.fixture
def store(tmp_path: Path) -> RepoStore:
    store = RepoStore(tmp_path / "vol")
    store.prepare()
    return store


async def test_a_delete_waits_until_the_copy_is_no_longer_served(store: RepoStore) -> None:
    assert await store.create(NAME)
    deleted: list[bool] = []
    async with trio.open_nursery() as nursery:
        with store.serving(NAME) as path:
            assert path is not None
            nursery.start_soon(lambda: _delete(store, deleted))
            await trio.testing.wait_all_tasks_blocked()
            assert path.is_dir() and not deleted  # still served: still there
        # The block ended: the delete goes ahead.
    assert deleted == [True]
    assert store.existing(NAME) is None


async def test_a_delete_goes_ahead_after_the_wait_even_if_still_served(
    store: RepoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repos, "DELETE_WAIT", 0.2)
    assert await store.create(NAME)
    with store.serving(NAME) as path:
        assert path is not None
        start = trio.current_time()
        with trio.fail_after(10):
            assert await store.delete(NAME)
        assert trio.current_time() - start >= 0.2  # it waited, then went ahead
        assert not path.exists()


async def test_serving_a_missing_repository_gives_none_and_counts_nothing(
    store: RepoStore,
) -> None:
    with store.serving(NAME) as path:
        assert path is None
    assert await store.create(NAME)
    with trio.fail_after(1):
        assert await store.delete(NAME)  # nothing to wait for


async def _delete(store: RepoStore, out: list[bool]) -> None:
    out.append(await store.delete(NAME))
