# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NATS connection options are documented once (doc_fragments/nats.py) and named once (wire/names.py):
every fragment, the modules' argument spec and the event source's documentation use the same names."""
from __future__ import annotations

import os
import re

import pytest
import yaml

from ansible_collections.natsops.fleet.plugins.doc_fragments import nats
from ansible_collections.natsops.fleet.plugins.module_utils._common import NATS_ARGUMENT_SPEC
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import OPTION_NAMES, OPTION_SOURCES

ENV = {name: OPTION_SOURCES[name][1] for name in OPTION_NAMES}
ENV["connect_timeout"] = "ANSIBLE_NATS_CONNECT_TIMEOUT"  # a plugin setting, not a NATS client option


def _options(variable):
    return yaml.safe_load(getattr(nats.ModuleDocFragment, variable))["options"]


def test_every_connection_option_is_described_once():
    described = _options("DOCUMENTATION")
    assert set(described) == set(OPTION_NAMES) | {"connect_timeout"}
    for name, option in described.items():
        assert option.get("description") and option.get("type"), name
        assert not {"env", "ini", "vars"} & set(option), "sources belong to the small fragments: %s" % name


@pytest.mark.parametrize("variable", ["PLUGIN", "VAR_NAMES"])
def test_source_fragments_add_only_sources_of_the_described_options(variable):
    options = _options(variable)
    assert set(options) == set(_options("DOCUMENTATION"))
    for name, option in options.items():
        assert set(option) <= {"env", "ini", "vars"}, name


def test_plugin_environment_and_ini_names():
    options = _options("PLUGIN")
    assert {name: [e["name"] for e in option["env"]] for name, option in options.items()} == \
        {name: [env] for name, env in ENV.items()}
    assert all(option["ini"] == [{"section": "natsops", "key": name}] for name, option in options.items())


def test_connection_variables_are_ansible_nats_name():
    assert all(option["vars"] == [{"name": "ansible_nats_%s" % name}] for name, option in _options("VAR_NAMES").items())


def test_module_note_names_the_argument_spec_fallbacks():
    notes = " ".join(yaml.safe_load(nats.ModuleDocFragment.MODULE)["notes"])
    documented = dict(re.findall(r"O\((\w+)\) from E\((\w+)\)", notes))
    assert documented == {name: OPTION_SOURCES[name][1] for name in OPTION_NAMES}
    fallbacks = {name: spec["fallback"][1] for name, spec in NATS_ARGUMENT_SPEC.items() if "fallback" in spec}
    assert fallbacks == {name: [env] for name, env in documented.items()}


def test_the_module_fragment_is_the_same_options_and_namespace():
    """Modules extend one fragment; it holds the very option texts of DOCUMENTATION and NAMESPACE."""
    assert _options("MODULE") == dict(_options("DOCUMENTATION"), **_options("NAMESPACE"))
    assert set(NATS_ARGUMENT_SPEC) == set(_options("MODULE"))


def test_namespace_is_documented_with_the_argument_spec_default():
    namespace = _options("NAMESPACE")["namespace"]
    assert namespace["default"] == NATS_ARGUMENT_SPEC["namespace"]["default"]
    assert float(_options("DOCUMENTATION")["connect_timeout"]["default"]) == NATS_ARGUMENT_SPEC["connect_timeout"]["default"]


def test_event_source_documents_every_environment_variable():
    root = os.path.join(os.path.dirname(nats.__file__), os.pardir, os.pardir)
    with open(os.path.join(root, "extensions", "eda", "plugins", "event_source", "nats.py"), encoding="utf-8") as handle:
        text = handle.read()
    arguments = text.split("\nArguments", 1)[1].split("\n\n", 2)[1]  # the connection options' paragraph
    entries = {}
    for entry in re.split(r"\n  (?=\S)", "\n" + arguments):  # one per argument (or pair), continued indented
        names, _gap, described = entry.strip().partition("  ")
        entries.update((name, described) for name in names.split(", "))
    for name in OPTION_NAMES:
        assert OPTION_SOURCES[name][1] in entries[name], name
