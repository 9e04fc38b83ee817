"""`[web]`: the upstream per region with a default, its timeouts, and bad URLs refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, WebConfig, load_edge_config
from routing.model import Region

BASE = (
    '[edge]\nregion = "fra"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
    '[http]\nlisten = "127.0.0.1:0"\n[nodes]\nadmin_secret = "s"\n'
)


def _load(tmp_path: Path, web: str) -> WebConfig | None:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + web + "\n")
    return load_edge_config(path).web


def test_no_table_no_frontend(tmp_path: Path) -> None:
    assert _load(tmp_path, "") is None


def test_defaults_and_the_region_table(tmp_path: Path) -> None:
    web = _load(
        tmp_path,
        '[web]\nupstream = "http://10.0.0.1:4000/"\n[web.upstreams]\nlax = "http://10.1.0.1:4000"',
    )
    assert web == WebConfig(
        upstream="http://10.0.0.1:4000", regions=((Region("lax"), "http://10.1.0.1:4000"),)
    )
    assert web.upstream_for("lax") == "http://10.1.0.1:4000"
    assert web.upstream_for("fra") == "http://10.0.0.1:4000"
    assert web.connect_timeout == 3.0 and web.response_timeout == 120.0 and web.secret == ""
    assert web.upgrade_idle_timeout == 300.0
    # No total for requests (a download may take hours), an hour for tunnels.
    assert web.total_timeout == 0.0 and web.upgrade_total_timeout == 3600.0
    assert web.replay_max_body == 2**20


def test_secret(tmp_path: Path) -> None:
    web = _load(tmp_path, '[web]\nupstream = "http://h:1"\nsecret = "s3"')
    assert web is not None and web.secret == "s3"


@pytest.mark.parametrize(
    "line",
    [
        'upstream = "https://h:443"',  # no TLS to upstreams yet (docs/web.md)
        'upstream = "http://h:1/app"',
        'upstream = "h:1"',
        'upstream = "http://h:1"\nconnect_timeout = 0',
        'upstream = "http://h:1"\nupgrade_idle_timeout = 0.5',
        'upstream = "http://h:1"\nreplay_max_body = -1',
        'upstream = "http://h:1"\ntotal_timeout = -1',
        'upstream = "http://h:1"\nupgrade_total_timeout = 700000',
        'upstream = "http://h:1"\ntimeout = 3',
        'upstream = "http://h:1"\n[web.upstreams]\nLAX = "http://h:2"',
        'upstream = "http://h:1"\n[web.upstreams]\nlax = "ftp://h:2"',
        "connect_timeout = 1.0",
    ],
)
def test_bad_web_tables_are_refused(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError, match=r"\[web\]"):
        _load(tmp_path, "[web]\n" + line)
