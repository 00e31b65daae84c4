# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role variable is documented: the keys of defaults/main.yml are exactly the options of
meta/argument_specs.yml (main entry point), so the two never drift apart."""

from __future__ import annotations

import os

import pytest
import yaml

ROLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "roles")


@pytest.mark.parametrize("role", sorted(r for r in os.listdir(ROLES) if os.path.exists(os.path.join(ROLES, r, "defaults", "main.yml"))))
def test_defaults_match_argument_specs(role):
    with open(os.path.join(ROLES, role, "defaults", "main.yml"), encoding="utf-8") as handle:
        defaults = yaml.safe_load(handle) or {}
    with open(os.path.join(ROLES, role, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        options = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert spec.get("description") and spec.get("type"), "%s: %s lacks a description or type" % (role, name)
        if not isinstance(defaults[name], str) or "{{" not in defaults[name]:
            assert spec.get("default") == defaults[name], "%s: the documented default of %s differs" % (role, name)


def test_internal_variables_are_not_public():
    for role in os.listdir(ROLES):
        path = os.path.join(ROLES, role, "vars", "main.yml")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                assert all(name.startswith("_%s_" % role) for name in yaml.safe_load(handle)), role
