# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes and durations as users write them in the NATS resource modules, and the rules for names and replicas."""

from __future__ import annotations

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils._resources import (
    ResourceError, SettingsView, changes, check_name, duration_ns, duration_text, replicas, size_bytes, size_text,
)


@pytest.mark.parametrize("text, ns", [("0", 0), (90, 90 * 10**9), ("1.5", 1_500_000_000), ("90s", 90 * 10**9),
                                      ("2m30s", 150 * 10**9), ("24h", 86400 * 10**9), ("7d", 7 * 86400 * 10**9),
                                      ("250ms", 250_000_000), (None, None)])
def test_durations(text, ns):
    assert duration_ns(text, "max_age") == ns


@pytest.mark.parametrize("text", ["a week", "5 min", "1h-2m", "h"])
def test_bad_durations_name_the_option(text):
    with pytest.raises(ResourceError) as caught:
        duration_ns(text, "max_age")
    assert "max_age" in caught.value.message and "not a duration" in caught.value.message


@pytest.mark.parametrize("text, size", [("-1", -1), ("1024", 1024), ("64MB", 64 * 1024 * 1024), ("10G", 10 * 1024**3), (None, None)])
def test_sizes(text, size):
    assert size_bytes(text, "max_bytes") == size


def test_bad_size():
    with pytest.raises(ResourceError) as caught:
        size_bytes("lots", "max_bytes")
    assert "max_bytes" in caught.value.message


def test_changes_ignore_unmanaged_settings():
    assert changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": None}) == ["b"]


@pytest.mark.parametrize("count", [None, 1, 3, 5])
def test_replicas_one_to_five(count):
    assert replicas(count) == count


@pytest.mark.parametrize("count", [0, 6, -1])
def test_replicas_outside_one_to_five_name_the_option(count):
    with pytest.raises(ResourceError) as caught:
        replicas(count)
    assert caught.value.message == "option replicas: %d is not between 1 and 5" % count


@pytest.mark.parametrize("name", ["ORDERS", "管理网", "a-b_c"])
def test_stream_and_consumer_names(name):
    assert check_name(name, "stream name") == name


@pytest.mark.parametrize("name", ["a b", "a.b", "a*", "a>", "a/b", "a\\b", ""])
def test_bad_stream_and_consumer_names_say_which(name):
    with pytest.raises(ResourceError) as caught:
        check_name(name, "stream name")
    assert caught.value.message.startswith("stream name %r is invalid" % name)


# Diffs speak the user's words (issue 19): option names, and durations and sizes in the units the user wrote.
@pytest.mark.parametrize("ns, like, shown", [
    (7 * 86400 * 10**9, "7d", "7d"), (7 * 86400 * 10**9, "24h", "168h"), (86400 * 10**9, "7d", "1d"),
    (36 * 3600 * 10**9, "1d", "1.5d"), (604800 * 10**9, "300", 604800), (1_500_000_000, 2, 1.5), (100_000, "1", 0.0001),
    (150 * 10**9, "2m30s", "2m30s"), (90 * 10**9, None, "1m30s"), (7 * 86400 * 10**9, None, "7d"),
    (10**9 // 3, "1s", "333ms333us333ns"), (0, "7d", 0), (None, "7d", None)])
def test_durations_shown_as_written(ns, like, shown):
    assert duration_text(ns, like) == shown


@pytest.mark.parametrize("count, like, shown", [
    (64 * 1024**2, "64MB", "64MB"), (1024**3, "64MB", "1024MB"), (10 * 1024**3, "10G", "10G"),
    (1000, "64MB", 1000), (-1, "1G", -1), (2048, "1024", 2048), (2048, None, 2048), (None, "1G", None)])
def test_sizes_shown_as_written(count, like, shown):
    assert size_text(count, like) == shown


def test_settings_view_speaks_option_names_and_units():
    fields = {"max_age": "max_age", "history": "max_msgs_per_subject", "replicas": "num_replicas", "max_bytes": "max_bytes",
              "storage": "storage", "filters": ("filter_subject", "filter_subjects")}
    params = {"max_age": "24h", "history": 5, "replicas": None, "max_bytes": "1G", "storage": "file", "filters": ["a"]}
    view = SettingsView(fields, params, durations=["max_age"], sizes=["max_bytes"])
    config = {"max_age": 7 * 86400 * 10**9, "max_msgs_per_subject": 1, "num_replicas": 3, "max_bytes": 512 * 1024**2,
              "storage": _Enum("file"), "filter_subject": "a"}
    assert view.show(config) == {"max_age": "168h", "history": 1, "max_bytes": "0.5G", "storage": "file", "filters": "a"}
    assert view.show(config, managed_only=False)["replicas"] == 3
    assert view.options(["max_msgs_per_subject", "max_age", "filter_subjects", "name"]) == ["filters", "history", "max_age"]


class _Enum:  # pylint: disable=too-few-public-methods
    def __init__(self, value):
        self.value = value
