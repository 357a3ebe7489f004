"""The alert rules and the Grafana dashboards, checked without a server: promtool accepts the
rules, every dashboard is valid provisioned JSON whose panels all have PromQL on the provisioned
datasource, and every metric any expression names is one the services export.

tests/integration/test_observability.py runs the same expressions against a real Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from driftline.commands.dev_stack import COMPOSE_NAMES, SERVICES
from driftline.commands.local_servers import prometheus_config
from driftline.core.features import load_definitions
from driftline.feature_defs import DEFINITIONS_DIR
from tests.observability import (
    DASHBOARDS,
    DATASOURCE_UID,
    DATASOURCES,
    DEPLOY,
    PROMETHEUS_CONFIG,
    RULES,
    alert_queries,
    alert_rules,
    base_name,
    dashboard_queries,
    dashboards,
    exported_metrics,
    metric_names,
    panels,
)

ALL_QUERIES = dashboard_queries() + alert_queries()


# -- the PromQL name parser ---------------------------------------------------------------------
@pytest.mark.parametrize("expr, names", [
    ('sum by (job, topic) (rate(driftline_messages_consumed_total{job="a", x=~"b|c"}[1m]))',
     {"driftline_messages_consumed_total"}),
    ("histogram_quantile(0.99, sum by (stage, le) (rate(driftline_batch_seconds_bucket[5m])))",
     {"driftline_batch_seconds_bucket"}),
    ("max by (model, arm) (a_errors) / (max by (model, arm) (b_outcomes) > 0)",
     {"a_errors", "b_outcomes"}),
    ('up{job=~"driftline-.+"} == 0', {"up"}),
    ("x and on (job, topic) (y or z) unless ignoring (le) w offset 5m", {"x", "y", "z", "w"}),
    ('count(a{s="fairness_x_low"} == 1) or on() vector(0)', {"a"}),
    ("sum(rate(a[1m:10s])) without (instance) * 1e3 + inf", {"a"}),
    ('label_replace(a, "dst", "$1", "src", "(.*)")', {"a"}),
    ("x * on (a) group_left (b) y", {"x", "y"}),
])
def test_metric_names_are_parsed_from_promql(expr, names):
    assert metric_names(expr) == names


# -- alert rules -------------------------------------------------------------------------------
def promtool() -> str:
    """`make test` installs it first (`make prometheus`); missing, the test fails, not skips."""
    found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if found is None:
        pytest.fail("promtool not found: install Debian's prometheus package "
                    "(apt-get install prometheus, or `make prometheus`)")
    return found


def test_promtool_accepts_the_rules():
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout, done.stdout


def test_promtool_accepts_the_compose_config_with_its_rules():
    done = subprocess.run([promtool(), "check", "config", str(PROMETHEUS_CONFIG)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("group, rule", alert_rules(), ids=lambda v: v if isinstance(v, str)
                         else v["alert"])
def test_every_alert_has_for_severity_and_what_to_look_at(group, rule):
    assert "for" in rule, f"{rule['alert']}: say how long the condition must hold (for: 0s too)"
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    annotations = rule["annotations"]
    assert annotations["summary"] and len(annotations["description"]) > 80
    assert "Look at" in annotations["description"] or "look at" in annotations["description"]


def test_the_issue_s_alerts_are_all_there():
    exprs = {rule["alert"]: rule["expr"] for _, rule in alert_rules()}
    assert 'driftline_drift_alarming{detector="psi"}' in exprs["DriftAlarmOpen"]
    assert 'driftline_drift_alarming{detector="fairness"}' in exprs["FairnessAlarmOpen"]
    assert "_difference_low" in exprs["FairnessGapPastThreshold"]
    assert "driftline_consumer_lag_messages" in exprs["ConsumerLagHigh"]
    assert "rate(driftline_dead_letters_total" in exprs["DeadLetterSpike"]
    assert "up{" in exprs["ServiceDown"]
    assert "driftline_messages_consumed_total" in exprs["ConsumerStalled"]
    assert 'status="failed"' in exprs["RetrainJobFailed"]
    assert 'status="rejected"' in exprs["RetrainCandidateRejected"]


# -- dashboards --------------------------------------------------------------------------------
def test_the_four_dashboards_exist_with_distinct_uids():
    boards = dashboards()
    assert set(boards) == {"pipeline-health.json", "drift.json", "fairness.json", "models.json"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)


def test_the_datasource_has_the_fixed_uid_the_panels_use():
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [s["uid"] for s in sources] == [DATASOURCE_UID]
    assert sources[0]["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_has_promql_on_the_provisioned_datasource(name):
    board = dashboards()[name]
    assert board["title"].startswith("Driftline / ") and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]] + [
        c["id"] for p in board["panels"] if p["type"] == "row" for c in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be distinct"
    found = panels(board)
    assert found
    for panel in found:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"]["uid"] == DATASOURCE_UID


def test_the_issue_s_panels_are_there():
    exprs = {(q.source, q.name): q.expr for q in dashboard_queries()}
    text = "\n".join(exprs.values())
    drift = {name: expr for (source, name), expr in exprs.items() if source.endswith("Drift")}
    for metric in ("driftline_consumer_lag_messages", "driftline_dead_letters_total",
                   "driftline_late_events_total", "driftline_dependency_errors_total",
                   "driftline_batch_failures_total", "driftline_event_to_store_seconds_bucket",
                   "driftline_feature_to_prediction_seconds_bucket", "driftline_model_info",
                   "driftline_predictions_total", "driftline_model_swaps_total",
                   "driftline_retrain_jobs_total", "driftline_gate_value",
                   "driftline_rollout_share", "driftline_rollout_outcomes",
                   "driftline_label_coverage_ratio", 'statistic="error_rate"',
                   "fairness_.+_difference_low", "fairness_.+_difference_high"):
        assert metric in text, metric
    assert 'subject="score"' in drift["Score PSI"]
    # The PSI panels show the 0.1 (warn) and 0.25 (drift) thresholds.
    board = dashboards()["drift.json"]
    psi = next(p for p in panels(board) if p["title"] == "PSI per feature")
    steps = [s["value"] for s in psi["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.1, 0.25]
    assert psi["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    # Drift events are annotations.
    assert any("driftline_drift_events_total" in a.get("expr", "")
               for a in board["annotations"]["list"])


def test_the_psi_panels_split_features_from_slices_by_the_views_slice_attributes():
    """The drift statistic's subject does not say whether it is a feature or a slice attribute;
    the panels tell them apart by the attributes the feature definitions declare."""
    slices = set()
    for view in load_definitions(DEFINITIONS_DIR).views.values():
        slices |= set(view.slices)
    board = dashboards()["drift.json"]
    for title in ("PSI per feature", "PSI per slice attribute"):
        expr = next(p for p in panels(board) if p["title"] == title)["targets"][0]["expr"]
        alternatives = re.search(r'subject[!=]~"([^"]*)"', expr).group(1).split("|")
        assert slices <= set(alternatives), (title, slices)


# -- every name is exported ----------------------------------------------------------------------
@pytest.mark.parametrize("query", ALL_QUERIES, ids=lambda q: q.label)
def test_every_metric_an_expression_names_is_exported_by_the_services(query):
    exported = exported_metrics()
    names = {base_name(n, exported) for n in metric_names(query.expr)}
    assert names, f"{query.label}: no metric found in {query.expr!r}"
    unknown = names - set(exported) - {"up"}
    assert not unknown, f"{query.label}: {sorted(unknown)} not declared in " \
                        f"driftline/adapters/metrics.py"


def test_histogram_series_are_only_used_on_histograms():
    exported = exported_metrics()
    for query in ALL_QUERIES:
        for name in metric_names(query.expr):
            if name.endswith("_bucket"):
                assert exported.get(name.removesuffix("_bucket")) == "histogram", query.label


# -- the local Prometheus of `driftline dev --prometheus` ----------------------------------------
def test_dev_prometheus_config_is_compose_s_with_local_targets(tmp_path):
    compose = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {COMPOSE_NAMES[name]: f"127.0.0.1:{9000 + i}" for i, name in enumerate(SERVICES)}
    local = prometheus_config(PROMETHEUS_CONFIG, targets, interval="1s")
    assert [j["job_name"] for j in local["scrape_configs"]] == \
        [j["job_name"] for j in compose["scrape_configs"]]
    assert sorted(t for j in local["scrape_configs"] for c in j["static_configs"]
                  for t in c["targets"]) == sorted(targets.values())
    assert local["rule_files"] == [str(RULES)]
    assert local["global"]["scrape_interval"] == local["global"]["evaluation_interval"] == "1s"
    # A service that is not started is not scraped.
    partial = prometheus_config(PROMETHEUS_CONFIG, {"worker": "127.0.0.1:1"})
    assert [j["job_name"] for j in partial["scrape_configs"]] == ["driftline-worker"]


def test_every_compose_scrape_target_is_a_dev_service():
    compose = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    hosts = {t.split(":")[0] for j in compose["scrape_configs"] for c in j["static_configs"]
             for t in c["targets"]}
    assert hosts == set(COMPOSE_NAMES.values())
    assert set(COMPOSE_NAMES) == set(SERVICES)
    assert (DEPLOY / "prometheus" / compose["rule_files"][0]).resolve() == RULES
    assert DASHBOARDS.is_dir()


def test_dev_prometheus_without_the_binary_names_the_package_and_starts_nothing(monkeypatch,
                                                                               capsys):
    from driftline.commands import cli, dev_stack, local_servers

    monkeypatch.setattr(local_servers.shutil, "which", lambda *args, **kwargs: None)
    monkeypatch.setattr(dev_stack, "start_servers", lambda settings: pytest.fail("started"))
    with pytest.raises(local_servers.ServerStartError, match=r"apt-get install prometheus"):
        local_servers.prometheus_binary()
    assert cli.main(["dev", "--prometheus"]) == 2
    assert "apt-get install prometheus" in capsys.readouterr().err


def test_dev_prometheus_on_a_taken_port_says_how_to_pick_another(tmp_path):
    import socket

    from driftline.commands import local_servers

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(local_servers.ServerStartError, match="--prometheus-port 0"):
            local_servers.start_prometheus(tmp_path / "logs", tmp_path / "prometheus", {},
                                           port=port)
