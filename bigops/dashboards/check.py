"""Offline checks of a Grafana dashboard (no Grafana server exists here): the pinned schema version, a
well-formed grid, unique ids, every variable defined, every query on the Prometheus datasource, and a
round trip through grafana-foundation-sdk's model of the same Grafana release that drops nothing but the
Prometheus-specific fields the SDK leaves to the datasource plugin."""

from __future__ import annotations

import json
import re

from bigops.dashboards.grafana import SCHEMA_VERSION

PANEL_TYPES = {"row", "timeseries", "stat", "bargauge", "table", "gauge", "text"}
# Fields Grafana reads from a Prometheus annotation or query variable, which the SDK's core model omits.
DATASOURCE_FIELDS = {"definition", "titleFormat", "textFormat", "step", "useValueForTime"}


def problems(board: dict) -> list[str]:
    out = []
    if board.get("schemaVersion") != SCHEMA_VERSION:
        out.append(f"schemaVersion {board.get('schemaVersion')} != {SCHEMA_VERSION}")
    for key in ("uid", "title", "panels", "templating", "time"):
        if key not in board:
            out.append(f"missing {key}")
    variables = {v["name"] for v in board.get("templating", {}).get("list", [])}
    ids, cells = set(), set()
    for panel in board.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("type") not in PANEL_TYPES:
            out.append(f"{title}: unknown panel type {panel.get('type')!r}")
        if panel.get("id") in ids:
            out.append(f"{title}: duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        pos = panel.get("gridPos", {})
        if not (0 <= pos.get("x", -1) and pos.get("x", 0) + pos.get("w", 0) <= 24 and pos.get("h", 0) > 0):
            out.append(f"{title}: gridPos {pos} outside the 24-column grid")
        for x in range(pos.get("x", 0), pos.get("x", 0) + pos.get("w", 0)):
            for y in range(pos.get("y", 0), pos.get("y", 0) + pos.get("h", 0)):
                if (x, y) in cells:
                    out.append(f"{title}: overlaps another panel at ({x}, {y})")
                    break
                cells.add((x, y))
        if panel.get("type") == "row":
            continue
        if not panel.get("description"):
            out.append(f"{title}: no description")
        targets = panel.get("targets") or []
        if not targets:
            out.append(f"{title}: no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            out.append(f"{title}: duplicate refId")
        for t in targets:
            if t.get("datasource", {}).get("type") != "prometheus":
                out.append(f"{title}: query not on the Prometheus datasource")
    for name in set(re.findall(r"\$\{?(\w+)", json.dumps(board))) - variables - {"__interval", "__rate_interval"}:
        out.append(f"variable ${name} used but not defined")
    return out + sdk_problems(board)


def sdk_problems(board: dict) -> list[str]:
    """What grafana-foundation-sdk (pinned to our Grafana release) does not understand. The SDK is the optional
    extra ``bigops[dashboards]``: without it, one line says how to install it."""
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError:
        from bigops.errors import BigopsError
        raise BigopsError("dashboards check needs grafana-foundation-sdk: pip install 'bigops[dashboards]'") from None

    try:
        back = json.loads(json.dumps(Dashboard.from_json(json.loads(json.dumps(board))), cls=JSONEncoder))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
        return [f"grafana-foundation-sdk cannot parse it: {type(exc).__name__}: {exc}"]
    out = []

    def walk(ours, theirs, path: str) -> None:
        if isinstance(ours, dict):
            for key, value in ours.items():
                if key not in (theirs or {}):
                    if key not in DATASOURCE_FIELDS:
                        out.append(f"{path}/{key}: not in Grafana's dashboard schema")
                else:
                    walk(value, theirs[key], f"{path}/{key}")
        elif isinstance(ours, list):
            if not isinstance(theirs, list) or len(theirs) != len(ours):
                out.append(f"{path}: list changed in the round trip")
                return
            for i, (a, b) in enumerate(zip(ours, theirs)):
                walk(a, b, f"{path}[{i}]")
        elif ours != theirs:
            out.append(f"{path}: {ours!r} became {theirs!r}")

    walk(board, back, "")
    return out
