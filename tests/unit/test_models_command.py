"""`--view` defaults: the deployment's only feature view, or an error naming the choices."""

from __future__ import annotations

import argparse

import pytest

from driftline.commands import demo, models
from driftline.core.features import load_definitions
from driftline.feature_defs import DEFINITIONS_DIR
from driftline.settings import Settings

VIEW = load_definitions(DEFINITIONS_DIR).view("transactions_v1")


@pytest.fixture
def two_views(monkeypatch):
    views = {"b_view": VIEW, "a_view": VIEW}
    monkeypatch.setattr(models, "views_for", lambda settings: views)
    return views


def test_no_view_named_means_the_deployments_only_view():
    assert models.resolve_view(Settings(), None).name == "transactions_v1"


def test_a_named_view_is_looked_up_and_an_unknown_one_refused():
    assert models.resolve_view(Settings(), "transactions_v1") is not None
    with pytest.raises(ValueError, match="unknown view 'nope'"):
        models.resolve_view(Settings(), "nope")


def test_several_views_and_none_named_is_an_error_naming_them(two_views):
    with pytest.raises(ValueError, match=r"2 feature views .*: a_view, b_view; choose one with "
                                         r"--view"):
        models.resolve_view(Settings(), None)


def test_the_view_options_default_to_none():
    parser = argparse.ArgumentParser()
    models.add_parser(parser.add_subparsers(dest="command"))
    for argv in (["models", "register", "fraud", "--onnx", "m.onnx"],
                 ["models", "train-initial"]):
        assert parser.parse_args(argv).view is None


def test_the_demo_refuses_an_ambiguous_view_before_starting_anything(two_views, monkeypatch):
    def must_not_start(settings):
        raise AssertionError("servers started")

    monkeypatch.setattr(demo, "start_servers", must_not_start)
    with pytest.raises(ValueError, match="a_view, b_view; choose one with run_demo"):
        demo.run_demo(Settings(), n_events=10, out=lambda line: None)
