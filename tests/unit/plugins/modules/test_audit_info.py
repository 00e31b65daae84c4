# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""audit_info's pure parts: where reading starts (durations, ISO-8601 times, all), the consumer's filter subjects,
records decoded (malformed ones kept), the field filters and the newest N."""

from __future__ import annotations

import datetime

import pytest
import yaml

from ansible_collections.natsops.fleet.plugins.module_utils._resources import ResourceError
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import WireError
from ansible_collections.natsops.fleet.plugins.modules import audit_info
from ansible_collections.natsops.fleet.plugins.modules.audit_info import (
    RAW_LIMIT, VERDICTS, Newest, consumer_filter, decode_record, format_time, parse_iso_time, record_filter, start_time,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def test_documented_verdicts_are_the_known_ones():
    doc = yaml.safe_load(audit_info.DOCUMENTATION)
    assert doc["options"]["verdicts"]["choices"] == list(VERDICTS)
    assert doc["options"]["since"]["default"] == "24h" and doc["options"]["limit"]["default"] == 100


@pytest.mark.parametrize("since, expected", [
    ("24h", datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)),
    ("30m", datetime.datetime(2026, 11, 29, 11, 30, 0, tzinfo=UTC)),
    ("7d", datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)),
    ("2h30m", datetime.datetime(2026, 11, 29, 9, 30, 0, tzinfo=UTC)),
    ("90", datetime.datetime(2026, 11, 29, 11, 58, 30, tzinfo=UTC)),
    ("0", NOW),
    (" 1h ", datetime.datetime(2026, 11, 29, 11, 0, 0, tzinfo=UTC)),
])
def test_durations_count_back_from_now(since, expected):
    assert start_time(since, NOW) == expected


@pytest.mark.parametrize("since, expected", [
    ("2026-11-29T10:00:00Z", datetime.datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)),
    ("2026-11-29T10:00:00.5Z", datetime.datetime(2026, 11, 29, 10, 0, 0, 500000, tzinfo=UTC)),
    ("2026-11-29T10:00:00.123456789Z", datetime.datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=UTC)),
    ("2026-11-29T18:00:00+08:00", datetime.datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)),
    ("2026-11-29T05:30:00-0430", datetime.datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)),
    ("2026-11-29 10:00", datetime.datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)),   # no offset: UTC
    ("2026-11-29", datetime.datetime(2026, 11, 29, 0, 0, 0, tzinfo=UTC)),
])
def test_iso_times_are_taken_as_they_are(since, expected):
    assert start_time(since, NOW) == expected
    assert parse_iso_time(since) == expected


def test_all_reads_the_whole_stream():
    assert start_time("all", NOW) is None and start_time("ALL", NOW) is None


@pytest.mark.parametrize("since", ["yesterday", "1 hour", "-1h", "2026-13-01", "2026-11-29T25:00:00Z", "", "1h ago",
                                   "2026-11-29T10:00:00+24:00", None])
def test_other_starts_are_refused_with_the_forms_that_work(since):
    with pytest.raises(ResourceError) as caught:
        start_time(since, NOW)
    assert "is neither a duration" in caught.value.message and "ISO-8601" in caught.value.message


def test_times_are_written_as_the_trail_writes_them():
    assert format_time(datetime.datetime(2026, 11, 29, 18, 0, 0, 42, tzinfo=datetime.timezone(datetime.timedelta(hours=8)))) \
        == "2026-11-29T10:00:00.000042Z"
    assert format_time(datetime.datetime(2026, 11, 29, 10, 0, 0)) == "2026-11-29T10:00:00.000000Z"  # naive: UTC
    assert format_time(None) is None


def test_instance_ids_become_filter_subjects():
    assert consumer_filter("natsops", None) == [] and consumer_filter("natsops", []) == []
    assert consumer_filter("natsops", ["web1", "管理网", "web1"]) == ["natsops.audit.web1", "natsops.audit.管理网"]
    assert consumer_filter("fleet.eu", ["default"]) == ["fleet.eu.audit.default"]


@pytest.mark.parametrize("namespace, ids, problem", [
    ("natsops", ["*"], "can only be served"),
    ("natsops", ["a.b"], "contains '.'"),
    ("natsops", ["${ZONE}"], "unrendered"),
    ("natsops", [""], "empty"),
    ("bad ns", ["web1"], "namespace"),
])
def test_bad_instance_ids_and_namespaces_are_refused(namespace, ids, problem):
    with pytest.raises(WireError) as caught:
        consumer_filter(namespace, ids)
    assert problem in caught.value.message


def test_records_are_decoded_and_malformed_ones_kept():
    assert decode_record(b'{"verdict": "ok", "op": "exec"}') == {"verdict": "ok", "op": "exec"}
    assert decode_record('{"instance": "管理网"}'.encode("utf-8")) == {"instance": "管理网"}
    assert decode_record(b"not json") == {"invalid": True, "raw": "not json"}
    assert decode_record(b"[1, 2]") == {"invalid": True, "raw": "[1, 2]"}
    assert decode_record(b"") == {"invalid": True, "raw": ""}
    assert decode_record(b"\xff{") == {"invalid": True, "raw": "\ufffd{"}
    huge = decode_record(b"x" * (RAW_LIMIT + 10))
    assert huge["invalid"] and len(huge["raw"]) == RAW_LIMIT


RECORDS = [
    {"verdict": "ok", "op": "exec", "signer": "UCONTROLLER"},
    {"verdict": "failed", "op": "put", "signer": "UCONTROLLER"},
    {"verdict": "refused", "op": "exec", "code": "unsigned"},
    {"verdict": "refused", "op": "bklite:ssh.execute", "signer": "USTRANGER"},
    {"invalid": True, "raw": "garbage"},
]


@pytest.mark.parametrize("verdicts, ops, signer, kept", [
    (None, None, None, [0, 1, 2, 3, 4]),
    ([], [], "", [0, 1, 2, 3, 4]),
    (["refused"], None, None, [2, 3]),
    (["ok", "failed"], None, None, [0, 1]),
    (None, ["exec"], None, [0, 2]),
    (None, ["bklite:ssh.execute", "put"], None, [1, 3]),
    (None, None, "UCONTROLLER", [0, 1]),
    (["refused"], ["exec"], None, [2]),
    (["refused"], None, "USTRANGER", [3]),
    (["ok"], ["put"], None, []),
])
def test_field_filters(verdicts, ops, signer, kept):
    passes = record_filter(verdicts, ops, signer)
    assert [i for i, record in enumerate(RECORDS) if passes(record)] == kept


def test_newest_keeps_the_last_n_oldest_first():
    newest = Newest(3)
    for seq in range(1, 8):
        newest.offer({"seq": seq})
    assert [r["seq"] for r in newest.records()] == [5, 6, 7] and newest.offered == 7
    everything = Newest(0)
    for seq in range(1, 8):
        everything.offer({"seq": seq})
    assert [r["seq"] for r in everything.records()] == list(range(1, 8))
    assert Newest(5).records() == [] and Newest(5).offered == 0


def test_a_missing_stream_says_how_to_create_it():
    message = audit_info.missing_stream_message("fleet_eu_audit", "fleet.eu")
    assert "fleet_eu_audit does not exist" in message and "natsops.fleet.nats_server role" in message
    assert "natsops.fleet.stream: name=fleet_eu_audit subjects=[fleet.eu.audit.>]" in message
