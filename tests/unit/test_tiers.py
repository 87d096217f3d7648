"""The test tiers: every test carries its folder's marker, and pyproject.toml registers every tier."""

import tomllib

from tests.conftest import ROOT, TIERS


def test_a_unit_test_is_marked_unit(request):
    assert request.node.get_closest_marker("unit") is not None
    assert all(request.node.get_closest_marker(tier) is None for tier in TIERS if tier != "unit")


def test_every_tier_is_a_folder_and_a_registered_marker():
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert {m.split(":")[0] for m in markers} == set(TIERS)
    assert all((ROOT / "tests" / tier).is_dir() for tier in TIERS)
