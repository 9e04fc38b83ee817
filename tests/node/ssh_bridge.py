"""A stand-in for `ssh` that carries one git session to a node over HTTP, as the edge does.

    GITEDGE_NODE_URL=http://127.0.0.1:PORT GITEDGE_NODE_SECRET=... \\
    GIT_SSH_VARIANT=ssh GIT_SSH_COMMAND="python tests/node/ssh_bridge.py" git clone ssh://x/a/b.git

git runs it as it runs OpenSSH (`[-o SendEnv=GIT_PROTOCOL] [-p PORT] HOST COMMAND`);
it parses COMMAND with the edge's own parser, POSTs the session to the node,
pumps its stdin up as the chunked body and writes the response's frames to its
stdout and stderr, then exits with the session's exit status (255 if the node
broke off, as OpenSSH does). Tests of the node use it both under git and by
hand; it is a plain blocking program (two threads), so that killing it is a
client vanishing.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from urllib.parse import urlsplit

import h11

from gitproto.protocol import CHUNK, accept_git_protocol
from gitproto.routes import ssh_session_target
from gitproto.ssh_command import parse_command
from gitproto.ssh_frame import FrameDecoder, FrameError, Stderr, Stdout

BROKEN = 255


def command_of(args: list[str]) -> str:
    """The remote command in OpenSSH's argv: the last argument after the host."""
    rest = [a for a in args if a not in ("-4", "-6", "-T")]
    while rest and rest[0] in ("-o", "-p"):
        rest = rest[2:]
    return rest[1]  # rest[0] is the host


def main(args: list[str]) -> int:
    if "-G" in args:
        return 0  # git's probe for the OpenSSH variant
    command = parse_command(command_of(args))
    url = urlsplit(os.environ["GITEDGE_NODE_URL"])
    assert url.hostname and url.port
    headers = [
        ("host", f"{url.hostname}:{url.port}"),
        ("authorization", f"Bearer {os.environ['GITEDGE_NODE_SECRET']}"),
        ("transfer-encoding", "chunked"),
    ]
    if git_protocol := accept_git_protocol(os.environb.get(b"GIT_PROTOCOL")):
        headers.append(("git-protocol", git_protocol))
    if user := os.environ.get("GITEDGE_USER"):
        headers.append(("gitedge-user", user))
    sock = socket.create_connection((url.hostname, url.port))
    http = h11.Connection(h11.CLIENT)
    lock = threading.Lock()  # h11 is not thread-safe; the socket's two directions are
    target = ssh_session_target(command.repo, command.service)
    with lock:
        sock.sendall(http.send(h11.Request(method="POST", target=target, headers=headers)))

    def upload() -> None:
        try:
            while data := os.read(0, CHUNK):
                with lock:
                    out = http.send(h11.Data(data=data))
                sock.sendall(out or b"")
            with lock:
                out = http.send(h11.EndOfMessage())
            sock.sendall(out or b"")
        except (OSError, h11.LocalProtocolError):
            pass  # the session ended first

    threading.Thread(target=upload, daemon=True).start()
    return download(sock, http, lock)


def download(sock: socket.socket, http: h11.Connection, lock: threading.Lock) -> int:
    decoder = FrameDecoder()
    while True:
        with lock:
            event = http.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(CHUNK)
            with lock:
                http.receive_data(data)
            if not data and http.their_state is not h11.DONE:
                print("ssh_bridge: the node closed the connection", file=sys.stderr)
                return BROKEN
            continue
        if isinstance(event, h11.Response) and event.status_code != 200:
            print(f"ssh_bridge: the node answered {event.status_code}", file=sys.stderr)
            return BROKEN
        if isinstance(event, h11.Data):
            try:
                frames = decoder.feed(event.data)
            except FrameError as exc:
                print(f"ssh_bridge: {exc}", file=sys.stderr)
                return BROKEN
            for frame in frames:
                if isinstance(frame, Stdout | Stderr):
                    fd = 1 if isinstance(frame, Stdout) else 2
                    view = memoryview(frame.data)
                    while view:
                        view = view[os.write(fd, view) :]
        if isinstance(event, h11.EndOfMessage):
            return decoder.status if decoder.status is not None else BROKEN


if __name__ == "__main__":
    status = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(status)  # the upload thread may still wait on stdin
