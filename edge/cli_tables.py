"""The tables `gitedge nodes`, `gitedge volumes` and `gitedge repo ls` print. Pure."""

from __future__ import annotations

from typing import Any


def human_bytes(size: object) -> str:
    if not isinstance(size, int):
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def _state(row: dict[str, Any]) -> str:
    state = "live" if row.get("live") else "DOWN"
    return f"{state},drained" if row.get("drained") else state


def format_table(kind: str, answer: dict[str, Any]) -> list[str]:
    """`kind` is nodes, volumes or ls (the API's answer for it)."""
    if kind == "nodes":
        lines = [f"{'NODE':<16} {'REGION':<8} {'STATE':<13} {'REPOS':>6} {'FREE':>11}  VOLUMES"]
        for r in answer.get("nodes", []):
            lines.append(
                f"{r['node']!s:<16} {r['region']!s:<8} {_state(r):<13} {r['repos']:>6}"
                f" {human_bytes(r.get('free_bytes')):>11}  {','.join(r.get('volumes', []))}"
            )
        return lines
    if kind == "volumes":
        lines = [f"{'VOLUME':<34} {'REGION':<8} {'NODE':<16} {'STATE':<13} {'REPOS':>6} FREE"]
        for r in answer.get("volumes", []):
            lines.append(
                f"{r['volume']!s:<34} {r['region']!s:<8} {r['node']!s:<16} {_state(r):<13}"
                f" {r['repos']:>6} {human_bytes(r.get('free_bytes'))}"
            )
        return lines
    lines = [f"{'REPO':<40} {'REGION':<8} {'NODE':<16} REPLICAS"]
    for r in answer.get("repos", []):
        replicas = r.get("replicas")
        where = ",".join(f"{c['region']}/{c['node']}" for c in replicas) if replicas else "-"
        lines.append(f"{r['repo']!s:<40} {r['region']!s:<8} {r['node'] or '-'!s:<16} {where}")
    return lines
