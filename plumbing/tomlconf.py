"""Typed access to TOML config tables, with errors that name the key.

Shared by the edge's and the node's config loaders: `ConfigError` reads like
`edge.toml: [https] port: must be an integer from 0 to 65535, got 'x'`.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, TypeAlias

# Table has methods named str, int, float and bool; annotations inside it use these.
_Str: TypeAlias = str
_Int: TypeAlias = int
_Float: TypeAlias = float
_Bool: TypeAlias = bool


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, key and problem."""


class Table:
    """One TOML table; every getter checks the type and names the key on error."""

    def __init__(self, data: dict[_Str, Any], where: _Str) -> None:
        self._data = data
        self._where = where
        self._seen: set[str] = set()

    @classmethod
    def load(cls, path: Path) -> Table:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        return cls(data, path.name)

    def error(self, key: _Str, problem: _Str) -> ConfigError:
        return ConfigError(f"{self._where}: {key}: {problem}")

    def _get(self, key: _Str) -> Any:
        self._seen.add(key)
        return self._data.get(key)

    def table(self, key: _Str) -> Table:
        value = self._get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return Table(value, f"{self._where}: [{key}]")

    def entries(self) -> dict[_Str, Any]:
        """Every key and its raw value, all counted as read: for tables whose keys are data."""
        self._seen.update(self._data)
        return dict(self._data)

    def has(self, key: _Str) -> _Bool:
        return key in self._data

    def str(self, key: _Str, default: _Str | None = None) -> _Str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, _Str) or not value:
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def optional_str(self, key: _Str) -> _Str | None:
        return None if self._get(key) is None else self.str(key)

    def int(self, key: _Str, default: _Int, lo: _Int = 0, hi: _Int = 2**31) -> _Int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, _Bool) or not isinstance(value, _Int) or not lo <= value <= hi:
            raise self.error(key, f"must be an integer from {lo} to {hi}, got {value!r}")
        return value

    def float(self, key: _Str, default: _Float, lo: _Float = 0.0, hi: _Float = 1e9) -> _Float:
        value = self._get(key)
        if value is None:
            return default
        if (
            isinstance(value, _Bool)
            or not isinstance(value, _Int | _Float)
            or not lo <= value <= hi
        ):
            raise self.error(key, f"must be a number from {lo} to {hi}, got {value!r}")
        return float(value)

    def bool(self, key: _Str, default: _Bool) -> _Bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, _Bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def str_list(self, key: _Str, default: list[_Str] | None = None) -> list[_Str]:
        value = self._get(key)
        if value is None:
            if default is None:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, list) or not all(isinstance(v, _Str) and v for v in value):
            raise self.error(key, f"must be a list of strings, got {value!r}")
        return list(value)

    def networks(
        self, key: _Str, default: list[_Str]
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        raw = self.str_list(key, default)
        try:
            return tuple(ipaddress.ip_network(v, strict=False) for v in raw)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def host_port(self, key: _Str, default: _Str | None = None) -> tuple[_Str, _Int]:
        """`"host:port"` or `"[v6]:port"`; port 0 means any free port."""
        return self._host_port(key, self.str(key, default))

    def host_ports(self, key: _Str) -> list[tuple[_Str, _Int]]:
        """One `"host:port"` or a list of them (a listener on several addresses)."""
        value = self._get(key)
        if not isinstance(value, list):
            return [self.host_port(key)]
        if not value:
            raise self.error(key, "needs at least one 'host:port'")
        addresses = []
        for raw in value:
            if not isinstance(raw, _Str):
                raise self.error(key, f"must be 'host:port' or a list of them, got {raw!r}")
            addresses.append(self._host_port(key, raw))
        if len(set(addresses)) != len(addresses):
            raise self.error(key, "names an address twice")
        return addresses

    def _host_port(self, key: _Str, raw: _Str) -> tuple[_Str, _Int]:
        host, sep, port = raw.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise self.error(key, f"must be 'host:port', got {raw!r}")
        return host, int(port)

    def secret(self, key: _Str) -> _Str:
        """`key` inline or `key_file` naming a file that holds it (preferred)."""
        file_key = f"{key}_file"
        if self.has(file_key) and self.has(key):
            raise self.error(key, f"set either {key} or {file_key}, not both")
        if self.has(file_key):
            path = Path(self.str(file_key))
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise self.error(file_key, f"cannot read {path}: {exc.strerror}") from None
            if not value:
                raise self.error(file_key, f"{path} is empty")
            return value
        if not self.has(key):
            raise self.error(key, f"is required (or {file_key})")
        return self.str(key)

    def check_unknown(self) -> None:
        """Refuse keys nobody read: a typo must not silently fall back to a default."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")
