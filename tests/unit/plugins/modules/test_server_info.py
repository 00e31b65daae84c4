# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""server_info's pure parts: arguments checked and turned into a URL query or a $SYS request, replies merged by
server, health judged."""

from __future__ import annotations

import pytest
import yaml

from ansible_collections.natsops.fleet.plugins.module_utils._resources import ResourceError
from ansible_collections.natsops.fleet.plugins.modules import server_info
from ansible_collections.natsops.fleet.plugins.modules.server_info import (
    ARGUMENTS, ENDPOINTS, check_arguments, endpoint_url, health, merge_replies, sys_request,
)


def test_documented_endpoints_are_the_known_ones():
    doc = yaml.safe_load(server_info.DOCUMENTATION)
    assert doc["options"]["endpoints"]["choices"] == sorted(ENDPOINTS) == sorted(ARGUMENTS)
    assert all(subject.startswith("$SYS.REQ.") for _path, subject in ENDPOINTS.values())


def test_arguments_are_checked_and_converted():
    checked = check_arguments(["connz", "jsz", "varz"], {
        "connz": {"subs": "yes", "limit": "5", "state": "Closed", "sort": "bytes_to", "server_name": "n1"},
        "jsz": {"streams": 1, "acc": "APP", "config": None},
    })
    assert checked == {"connz": {"subs": True, "limit": 5, "state": "closed", "sort": "bytes_to", "server_name": "n1"},
                       "jsz": {"streams": True, "acc": "APP"}}
    assert check_arguments(["connz"], {"connz": {"subs": "DETAIL"}}) == {"connz": {"subs": "detail"}}
    assert check_arguments(["varz"], None) == {}


@pytest.mark.parametrize("endpoints, arguments, message", [
    (["connz"], {"connz": {"subs": "lots"}}, "arguments.connz.subs: 'lots' is not a boolean or 'detail'"),
    (["jsz"], {"jsz": {"streams": "maybe"}}, "arguments.jsz.streams: 'maybe' is not a boolean"),
    (["connz"], {"connz": {"limit": "ten"}}, "arguments.connz.limit: 'ten' is not a whole number"),
    (["connz"], {"connz": {"limit": True}}, "is not a whole number"),
    (["connz"], {"connz": {"state": "sleeping"}}, "is not one of open, closed, all"),
    (["healthz"], {"healthz": {"stream": ["A", "B"]}}, "arguments.healthz.stream: ['A', 'B'] is not a single value"),
    (["varz"], {"nopez": {}}, "'nopez' is not an endpoint"),
    (["varz"], {"jsz": {"streams": True}}, "arguments are given for jsz, which is not in endpoints (varz)"),
    (["jsz"], {"jsz": "streams"}, "arguments.jsz must be a dictionary"),
])
def test_bad_arguments_name_what_is_wrong(endpoints, arguments, message):
    with pytest.raises(ResourceError) as caught:
        check_arguments(endpoints, arguments)
    assert message in caught.value.message


def test_http_urls():
    assert endpoint_url("http://127.0.0.1:8222/", "varz") == "http://127.0.0.1:8222/varz"
    assert endpoint_url("https://nats1:8222/monitor", "expvarz") == "https://nats1:8222/monitor/debug/vars"
    url = endpoint_url("http://h:8222", "connz", {"subs": True, "limit": 5, "acc": "A B", "state": "all", "auth": False})
    assert url == "http://h:8222/connz?acc=A+B&auth=false&limit=5&state=all&subs=true"
    assert endpoint_url("http://h:8222", "connz", {"subs": "detail"}) == "http://h:8222/connz?subs=detail"


def test_sys_requests_use_the_json_names():
    assert sys_request("varz", None) == {}
    assert sys_request("connz", {"subs": True, "auth": True, "state": "closed", "acc": "APP", "limit": 2}) == {
        "subscriptions": True, "auth": True, "state": 1, "acc": "APP", "limit": 2}
    assert sys_request("connz", {"subs": "detail"}) == {"subscriptions_detail": True}
    assert sys_request("jsz", {"acc": "APP", "consumers": True, "leader-only": True, "streams": False}) == {
        "account": "APP", "consumer": True, "leader_only": True, "streams": False}
    assert sys_request("gatewayz", {"accs": True, "gw_name": "east", "acc_name": "APP"}) == {
        "accounts": True, "name": "east", "account_name": "APP"}
    assert sys_request("healthz", {"js-enabled-only": True, "details": True}) == {"js-enabled-only": True, "details": True}
    assert sys_request("ipqueuesz", {"queues": "route"}) == {"filter": "route"}
    assert sys_request("accstatz", {"unused": True, "accounts": ["APP"]}) == {"include_unused": True, "accounts": ["APP"]}
    # unknown names (the servers' own filters) pass unchanged
    assert sys_request("varz", {"server_name": "n1", "exact_match": True, "tags": ["az:1"]}) == {
        "server_name": "n1", "exact_match": True, "tags": ["az:1"]}


def test_replies_merge_by_server():
    n1, n2 = {"name": "n1", "id": "NID1", "ver": "2.11.0"}, {"name": "", "id": "NID2"}
    merged, errors = merge_replies({
        "varz": [{"server": n1, "data": {"server_name": "n1"}}, {"server": n2, "data": {"server_name": "NID2"}}],
        "healthz": [{"server": n1, "data": {"status": "ok", "status_code": 200}}],
        "raftz": [{"server": n1}],
        "connz": [{"server": n2, "error": {"code": 500, "description": "invalid sorting option: x"}}],
    })
    assert merged == {"n1": {"server": n1, "varz": {"server_name": "n1"}, "healthz": {"status": "ok", "status_code": 200},
                             "raftz": None},
                      "NID2": {"server": n2, "varz": {"server_name": "NID2"}}}
    assert errors == ["connz on NID2: invalid sorting option: x (500)"]


def test_health():
    assert health({"n1": {"status": "ok", "status_code": 200}}) == (True, {})
    healthy, unhealthy = health({
        "n1": {"status": "ok"},
        "n2": {"status": "unavailable", "status_code": 503, "error": "JetStream has not established contact with a meta leader"},
        "n3": {"status": "error", "status_code": 503, "errors": [{"type": "STREAM", "error": "stream S could not be recovered"}]},
        "n4": None,
    })
    assert healthy is False
    assert unhealthy == {"n2": "unavailable: JetStream has not established contact with a meta leader",
                         "n3": "error: stream S could not be recovered", "n4": "no answer"}
    assert health({}) == (False, {"healthz": "no server answered"})
