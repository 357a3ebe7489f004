"""The PromQL of the Grafana dashboards and the Prometheus alert rules, for the tests that check
them: statically (tests/unit/test_observability_config.py) and against a real Prometheus
scraping the running services (tests/integration/test_observability.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DATASOURCE_UID = "driftline-prometheus"


@dataclass(frozen=True)
class Query:
    """One PromQL expression: a panel target or annotation of a dashboard, or an alert rule."""

    source: str  # dashboard title, or "rules.yml <group>"
    name: str  # panel title (with the target's refId when it has several), or alert name
    expr: str
    kind: str  # panel | annotation | alert

    @property
    def label(self) -> str:
        return f"{self.source} / {self.name}"


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict) -> list[dict]:
    """Every panel, rows' collapsed children included, rows themselves not."""
    found = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_queries() -> list[Query]:
    queries = []
    for board in dashboards().values():
        title = board["title"]
        for panel in panels(board):
            targets = panel.get("targets", [])
            for target in targets:
                name = panel["title"] + (f" [{target['refId']}]" if len(targets) > 1 else "")
                queries.append(Query(title, name, target["expr"], "panel"))
        for annotation in board.get("annotations", {}).get("list", []):
            if "expr" in annotation:
                queries.append(Query(title, f"annotation: {annotation['name']}",
                                     annotation["expr"], "annotation"))
    return queries


def alert_rules() -> list[tuple[str, dict]]:
    """(group name, rule) for every alerting rule of rules.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(g["name"], rule) for g in groups for rule in g["rules"] if "alert" in rule]


def alert_queries() -> list[Query]:
    return [Query(f"rules.yml {group}", rule["alert"], rule["expr"], "alert")
            for group, rule in alert_rules()]


# -- metric names in PromQL -------------------------------------------------------------------
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")  # label matchers (after strings are gone: no braces left)
_RANGES = re.compile(r"\[[^\]]*\]")  # range and subquery durations
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects: identifiers that are neither functions or aggregations
    (followed by a parenthesis), keywords, label names (inside braces or grouping clauses),
    durations nor numbers. Histogram series keep their suffix (see `base_name`)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m.group(1) for m in _NAME.finditer(text)
            if m.group(2) is None and m.group(1).lower() not in _KEYWORDS}


def exported_metrics() -> dict[str, str]:
    """Every metric name the services expose -> its type, from prometheus_client's default
    registry once driftline.adapters.metrics has declared them (counters: with ``_total``)."""
    from prometheus_client import REGISTRY

    import driftline.adapters.metrics  # noqa: F401 - declares every metric

    names = {}
    for family in REGISTRY.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        names[name] = family.type
    return names


def base_name(name: str, exported: dict[str, str]) -> str:
    """A histogram's ``_bucket``/``_sum``/``_count`` series name -> the histogram's name."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and exported.get(base) == "histogram":
            return base
    return name
