"""The node's HTTP side against the real git CLI: internal API, push, clone, errors."""

from __future__ import annotations

import gzip
import os
import resource
import zlib
from pathlib import Path

import httpx
import pytest
import trio

from node.app import NodeRuntime, run_node
from tests.node.conftest import ADMIN_SECRET, EDGE_AUTH, ConfigFactory, RunningNode
from tests.node.gitutil import (
    create_repo,
    git,
    git_descendants,
    git_env,
    pkt,
    wait_no_git_children,
)

UPLOAD_REQUEST = {"content-type": "application/x-git-upload-pack-request"}


# --- internal API -------------------------------------------------------------------


async def test_create_repo_is_idempotent(node: RunningNode) -> None:
    with trio.fail_after(10):
        first = await create_repo(node.url, "alice/proj")
        again = await create_repo(node.url, "alice/proj")
    assert (first.status_code, first.json()) == (201, {"created": True})
    assert (again.status_code, again.json()) == (200, {"created": False})
    bare = node.config.volume_dir / "alice" / "proj.git"
    assert (bare / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert not list((node.config.volume_dir / ".gitedge-tmp").iterdir())  # no temp dir left


async def test_create_repo_needs_the_admin_secret(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as client:
        with trio.fail_after(10):
            missing = await client.post("/_gitedge/repos", json={"name": "a/b"})
            wrong = await client.post(
                "/_gitedge/repos", json={"name": "a/b"}, headers={"authorization": "Bearer no"}
            )
    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert not (node.config.volume_dir / "a").exists()


@pytest.mark.parametrize(
    "name", ["../x", "-x/y", "x/-y", "a/b/c", "a/..", ".a/b", "a/b.git.git", ""]
)
async def test_create_repo_refuses_bad_names(node: RunningNode, name: str) -> None:
    with trio.fail_after(10):
        response = await create_repo(node.url, name)
    assert response.status_code == 400
    assert "repository" in response.text or "empty" in response.text


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"name": 5}', b"{}"])
async def test_create_repo_refuses_malformed_bodies(node: RunningNode, body: bytes) -> None:
    async with httpx.AsyncClient(base_url=node.url, headers=EDGE_AUTH) as client:
        with trio.fail_after(10):
            response = await client.post(
                "/_gitedge/repos", content=body, headers={"authorization": f"Bearer {ADMIN_SECRET}"}
            )
    assert response.status_code == 400


async def test_delete_repo_rolls_a_create_back(node: RunningNode) -> None:
    auth = {"authorization": f"Bearer {ADMIN_SECRET}"}
    async with httpx.AsyncClient(base_url=node.url) as client:
        with trio.fail_after(10):
            await create_repo(node.url, "bob/tmp")
            unauthorized = await client.delete("/_gitedge/repos/bob/tmp")
            gone = await client.delete("/_gitedge/repos/bob/tmp", headers=auth)
            again = await client.delete("/_gitedge/repos/bob/tmp", headers=auth)
    assert (gone.status_code, again.status_code, unauthorized.status_code) == (204, 404, 401)
    assert not (node.config.volume_dir / "bob" / "tmp.git").exists()


# --- git over HTTP ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0", "2"])
async def test_push_then_clone_round_trips(node: RunningNode, tmp_path: Path, version: str) -> None:
    home = tmp_path / "home"
    with trio.fail_after(30):
        assert (await create_repo(node.url, "alice/proj")).status_code == 201
        work = tmp_path / "work"
        await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
        (work / "README").write_text("hello from the node test\n")
        (work / "data.bin").write_bytes(os.urandom(300_000))
        await git("add", ".", cwd=work, home=home)
        await git("commit", "-q", "-m", "first", cwd=work, home=home)
        await git("tag", "-a", "-m", "v1", "v1", cwd=work, home=home)
        url = node.repo_url("alice/proj")
        await git(
            "-c",
            f"protocol.version={version}",
            "push",
            "-q",
            url,
            "main",
            "v1",
            cwd=work,
            home=home,
        )

        clone = tmp_path / "clone"
        await git(
            "-c",
            f"protocol.version={version}",
            "clone",
            "-q",
            url,
            str(clone),
            cwd=tmp_path,
            home=home,
        )
        pushed = await git("rev-parse", "main", "v1", cwd=work, home=home)
        cloned = await git("rev-parse", "HEAD", "v1", cwd=clone, home=home)
        await git("fsck", "--strict", cwd=clone, home=home)
    assert cloned == pushed
    assert (clone / "README").read_text() == "hello from the node test\n"
    assert (clone / "data.bin").read_bytes() == (work / "data.bin").read_bytes()


async def test_fetch_after_push_and_ls_remote(node: RunningNode, tmp_path: Path) -> None:
    """Incremental fetch (haves) and a second push on a kept-alive node."""
    home = tmp_path / "home"
    url = node.repo_url("alice/inc")
    with trio.fail_after(30):
        await create_repo(node.url, "alice/inc")
        a, b = tmp_path / "a", tmp_path / "b"
        await git("init", "-q", "-b", "main", str(a), cwd=tmp_path, home=home)
        await git("commit", "-q", "--allow-empty", "-m", "one", cwd=a, home=home)
        await git("push", "-q", url, "main", cwd=a, home=home)
        await git("clone", "-q", url, str(b), cwd=tmp_path, home=home)
        for i in range(3):
            await git("commit", "-q", "--allow-empty", "-m", f"more {i}", cwd=a, home=home)
        await git("push", "-q", url, "main", cwd=a, home=home)
        await git("pull", "-q", "--ff-only", cwd=b, home=home)
        remote = await git("ls-remote", url, "refs/heads/main", cwd=tmp_path, home=home)
        head_a = await git("rev-parse", "main", cwd=a, home=home)
        head_b = await git("rev-parse", "main", cwd=b, home=home)
    assert head_a == head_b == remote.split()[0]


async def test_unknown_repo_is_404(node: RunningNode, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=node.url, headers=EDGE_AUTH) as client:
        with trio.fail_after(10):
            refs = await client.get("/no/such.git/info/refs?service=git-upload-pack")
            rpc = await client.post("/no/such.git/git-upload-pack", headers=UPLOAD_REQUEST)
    assert (refs.status_code, refs.text) == (404, "repository not found\n")
    assert rpc.status_code == 404
    with pytest.raises(AssertionError, match="not found"):
        await git("ls-remote", node.repo_url("no/such"), cwd=tmp_path, home=tmp_path / "h")


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/", 404),
        ("GET", "/_gitedge/other", 404),
        ("GET", "/api/repos/a/b", 404),  # the edge's API, not the node's
        ("GET", "/a/b.git/info/refs", 404),  # dumb HTTP
        ("GET", "/a/b.git/HEAD", 404),
        ("GET", "/a/-b.git/info/refs?service=git-upload-pack", 400),
        ("GET", "/a/b.git/info/refs?service=git-upload-archive", 403),
        ("POST", "/a/b.git/info/refs?service=git-upload-pack", 405),
        ("GET", "/a/b.git/git-upload-pack", 405),
    ],
)
async def test_routes_answer_like_the_edge_parser(
    node: RunningNode, method: str, target: str, status: int
) -> None:
    async with httpx.AsyncClient(base_url=node.url, headers=EDGE_AUTH) as client:
        with trio.fail_after(10):
            response = await client.request(method, target)
    assert response.status_code == status


async def test_rpc_checks_content_type_and_encoding(node: RunningNode) -> None:
    await create_repo(node.url, "alice/ct")
    url = node.repo_url("alice/ct") + "/git-upload-pack"
    async with httpx.AsyncClient(headers=EDGE_AUTH) as client:
        with trio.fail_after(10):
            no_type = await client.post(url, content=b"0000")
            deflate = await client.post(
                url, content=b"0000", headers={**UPLOAD_REQUEST, "content-encoding": "br"}
            )
    assert (no_type.status_code, deflate.status_code) == (415, 415)


async def _repo_with_commit(node: RunningNode, tmp_path: Path, name: str) -> str:
    home = tmp_path / "home"
    await create_repo(node.url, name)
    work = tmp_path / "seed"
    await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
    (work / "f").write_text("gzip me\n")
    await git("add", "f", cwd=work, home=home)
    await git("commit", "-q", "-m", "seed", cwd=work, home=home)
    await git("push", "-q", node.repo_url(name), "main", cwd=work, home=home)
    return await git("rev-parse", "main", cwd=work, home=home)


async def test_v0_advertisement_has_service_line_and_v2_does_not(
    node: RunningNode, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        oid = await _repo_with_commit(node, tmp_path, "alice/adv")
        url = node.repo_url("alice/adv") + "/info/refs?service=git-upload-pack"
        async with httpx.AsyncClient(headers=EDGE_AUTH) as client:
            v0 = await client.get(url)
            v2 = await client.get(url, headers={"git-protocol": "version=2"})
            junk = await client.get(url, headers={"git-protocol": "version=2;$(reboot)"})
    assert v0.headers["content-type"] == "application/x-git-upload-pack-advertisement"
    assert "no-cache" in v0.headers["cache-control"]
    assert v0.content.startswith(b"001e# service=git-upload-pack\n0000")
    assert f"{oid} refs/heads/main".encode() in v0.content
    assert v2.content.startswith(b"000eversion 2\n")
    assert junk.content.startswith(b"001e# service=")  # bad header ignored: v0


async def test_gzip_request_body_is_inflated(node: RunningNode, tmp_path: Path) -> None:
    with trio.fail_after(20):
        oid = await _repo_with_commit(node, tmp_path, "alice/gz")
        url = node.repo_url("alice/gz") + "/git-upload-pack"
        # v0 negotiation with padding haves, as git sends when it gzips (> 1 KiB).
        haves = b"".join(pkt(f"have {i:040x}\n") for i in range(200))
        request = pkt(f"want {oid}\n") + b"0000" + haves + pkt("done\n")
        headers = {**UPLOAD_REQUEST, "content-encoding": "gzip"}
        async with httpx.AsyncClient(headers=EDGE_AUTH) as client:
            good = await client.post(url, content=gzip.compress(request), headers=headers)
            cut = await client.post(url, content=gzip.compress(request)[:-20], headers=headers)
            plain = await client.post(url, content=request, headers=UPLOAD_REQUEST)
    assert good.status_code == 200
    assert good.headers["content-type"] == "application/x-git-upload-pack-result"
    assert good.content.startswith(pkt("NAK\n")) and b"PACK" in good.content
    assert plain.content == good.content
    assert cut.status_code == 400 and "gzip" in cut.text


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped, made without holding them in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join([*parts, compressor.flush()])


async def test_gzip_bomb_does_not_take_the_node_down(node: RunningNode) -> None:
    await create_repo(node.url, "alice/bomb")
    size = 256 * 1024 * 1024
    bomb = gzip_bomb(size)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    headers = {**UPLOAD_REQUEST, "content-encoding": "gzip"}
    async with httpx.AsyncClient(base_url=node.url, headers=EDGE_AUTH) as client:
        with trio.fail_after(20):
            response = await client.post(
                "/alice/bomb.git/git-upload-pack", content=bomb, headers=headers
            )
            health = await client.get("/healthz")
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    # git refuses the nonsense input; the node answers, stays up, and never
    # held the inflated body (the test process is the node: its peak RSS shows it).
    assert response.status_code in (200, 500)
    assert health.status_code == 200
    assert peak_growth < size // 4
    assert await wait_no_git_children(5) == []


async def test_keep_alive_serves_many_requests_on_one_connection(node: RunningNode) -> None:
    host, port = node.url.removeprefix("http://").split(":")
    request = b"GET /healthz HTTP/1.1\r\nhost: n\r\n\r\n"
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        with trio.fail_after(10):
            await stream.send_all(request * 3)  # pipelined
            received = b""
            while received.count(b"\r\n\r\nok\n") < 3:
                received += await stream.receive_some(4096)
            await stream.send_all(request)
            again = b""
            while not again.endswith(b"\r\n\r\nok\n"):
                again += await stream.receive_some(4096)
    assert received.count(b"HTTP/1.1 200 ") == 3
    assert again.startswith(b"HTTP/1.1 200 ")


async def exchange_raw(node: RunningNode, request: bytes) -> bytes:
    """Send raw bytes; return everything the node answers until it closes."""
    host, port = node.url.removeprefix("http://").split(":")
    received = b""
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        with trio.fail_after(10):
            await stream.send_all(request)
            while data := await stream.receive_some(4096):
                received += data
    return received


async def test_malformed_request_gets_400_and_close(node: RunningNode) -> None:
    answer = await exchange_raw(node, b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_http_1_0_client_gets_an_answer_and_a_close(node: RunningNode) -> None:
    answer = await exchange_raw(node, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok\n")


async def start_stalled_clone(url: str, tmp_path: Path) -> trio.SocketStream:
    """Push a 16 MiB repo, then begin fetching it without reading: git blocks writing."""
    home = tmp_path / "home"
    await create_repo(url, "alice/big")
    work = tmp_path / "big"
    await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
    (work / "blob").write_bytes(os.urandom(16 * 1024 * 1024))
    await git("add", "blob", cwd=work, home=home)
    await git("commit", "-q", "-m", "big", cwd=work, home=home)
    await git(
        "-c",
        "pack.compression=0",
        "push",
        "-q",
        f"{url}/alice/big.git",
        "main",
        cwd=work,
        home=home,
    )
    oid = await git("rev-parse", "main", cwd=work, home=home)
    assert git_descendants() == []

    host, port = url.removeprefix("http://").split(":")
    body = pkt(f"want {oid}\n") + b"0000" + pkt("done\n")
    head = (
        "POST /alice/big.git/git-upload-pack HTTP/1.1\r\nhost: n\r\n"
        f"authorization: Bearer {ADMIN_SECRET}\r\n"
        "content-type: application/x-git-upload-pack-request\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(head + body)
    first = await stream.receive_some(4096)
    assert first.startswith(b"HTTP/1.1 200")
    # 16 MiB cannot fit in the socket buffers: git is blocked writing to us now.
    assert git_descendants() != []
    return stream


async def test_client_that_disconnects_mid_response_leaves_no_git(
    node: RunningNode, tmp_path: Path
) -> None:
    """Regression guard: an aborted clone must not leave upload-pack/pack-objects running."""
    with trio.fail_after(40):
        stream = await start_stalled_clone(node.url, tmp_path)
        await trio.aclose_forcefully(stream)
        assert await wait_no_git_children(10) == []
        async with httpx.AsyncClient(headers=EDGE_AUTH) as client:
            assert (await client.get(node.url + "/healthz")).status_code == 200


async def test_shutdown_mid_clone_kills_git(make_config: ConfigFactory, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            runtime: NodeRuntime = await nursery.start(run_node, make_config())
            stream = await start_stalled_clone(runtime.http_url, tmp_path)
            nursery.cancel_scope.cancel()
        assert await wait_no_git_children(10) == []
        await trio.aclose_forcefully(stream)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/alice/private.git/info/refs?service=git-upload-pack"),
        ("GET", "/alice/private.git/info/refs?service=git-receive-pack"),
        ("POST", "/alice/private.git/git-upload-pack"),
        ("POST", "/alice/private.git/git-receive-pack"),
        ("GET", "/alice/private.git/HEAD"),
        ("GET", "/alice/missing.git/info/refs?service=git-upload-pack"),
        ("GET", "/anything/else"),
        ("POST", "/_gitedge/repos"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {ADMIN_SECRET}", "Bearer"])
async def test_node_serves_nothing_but_health_without_the_edge_credential(
    node: RunningNode, method: str, path: str, authorization: str | None
) -> None:
    """Regression: `git ls-remote http://NODE/alice/private.git` listed a private
    repo's refs with no credential. Refusals say nothing either (no 404 vs 400)."""
    with trio.fail_after(10):
        await create_repo(node.url, "alice/private")
        headers = {"authorization": authorization} if authorization else {}
        async with httpx.AsyncClient(base_url=node.url, headers=headers) as client:
            refused = await client.request(method, path, content=b"0000")
            health = await client.get("/healthz")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert health.status_code == 200


async def test_stock_git_without_the_credential_gets_nothing(
    node: RunningNode, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        await create_repo(node.url, "alice/private")
        env = git_env(tmp_path / "home")
        del env["GIT_CONFIG_COUNT"]  # no http.extraHeader: a stranger's git
        result = await trio.run_process(
            ["git", "ls-remote", f"{node.url}/alice/private.git"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        authorized = await git(
            "ls-remote", f"{node.url}/alice/private.git", cwd=tmp_path, home=tmp_path / "home"
        )
    assert result.returncode != 0
    # 401: git asks for a user name, and with prompts off it gives up.
    assert b"could not read Username" in result.stderr
    assert result.stdout == b""
    assert authorized == ""  # empty repo, but served
