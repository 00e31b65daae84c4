# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.server_info against real nats-servers: a three-server JetStream cluster with a system account
and HTTP monitoring ports, read both from a monitoring port and through NATS ($SYS.REQ.SERVER.PING.*); a lone
clustered server that cannot elect a JetStream leader (healthz 503); https monitoring; bad input."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.error
import urllib.request

import nats
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools"))

import devenv  # noqa: E402  pylint: disable=wrong-import-position
import natsauth  # noqa: E402  pylint: disable=wrong-import-position

ADMIN = {"user": "admin", "password": "adm-Pw-1"}      # in the system account
DENIED = {"user": "denied", "password": "den-Pw-2"}    # in the system account, may not ask the servers
APP = {"user": "app", "password": "app-Pw-3"}          # an ordinary account with JetStream
ACCOUNTS = """
accounts {
  SYS { users: [ { user: admin, password: "adm-Pw-1" },
                 { user: denied, password: "den-Pw-2", permissions: { publish: { deny: ["$SYS.REQ.SERVER.PING.>"] } } } ] }
  APP { jetstream: enabled, users: [ { user: app, password: "app-Pw-3" } ] }
}
system_account: SYS
"""
STREAM = "INFO_E2E"
WATCHED = "info.e2e.watched"


def _clustered(name, http_port, cluster_port, route_ports, extra=""):
    routes = ", ".join("nats://127.0.0.1:%d" % port for port in route_ports)
    return ("server_name: %s\nhttp: 127.0.0.1:%d\ncluster { name: c1, listen: 127.0.0.1:%d, routes: [%s] }\n%s%s"
            % (name, http_port, cluster_port, routes, ACCOUNTS, extra))


def _healthz_status(http_port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % http_port, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


async def _connect(url, **auth):
    return await nats.connect(url, allow_reconnect=False, connect_timeout=5, **auth)


async def _make_stream(url):
    nc = await _connect(url, **APP)
    try:
        for attempt in range(40):
            try:
                await nc.jetstream().add_stream(name=STREAM, subjects=["info.e2e.stream.>"], num_replicas=3)
                return
            except Exception:  # pylint: disable=broad-except  # the JetStream cluster is still forming
                if attempt == 39:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def cluster():
    """Three servers n1..n3 in cluster c1 with JetStream, monitoring ports, the accounts above, a replicated stream
    in APP and a connection of APP on n1 that subscribes to WATCHED while the tests run."""
    names = ["n1", "n2", "n3"]
    http_ports = dict((n, devenv.free_port()) for n in names)
    cluster_ports = dict((n, devenv.free_port()) for n in names)
    servers, loop, watcher = {}, asyncio.new_event_loop(), None
    try:
        for name in names:
            servers[name] = devenv.NatsServer(extra_config=_clustered(
                name, http_ports[name], cluster_ports[name], [cluster_ports[n] for n in names if n != name]))
        deadline = time.monotonic() + 60
        while not all(_healthz_status(http_ports[n]) == 200 for n in names):
            assert time.monotonic() < deadline, "the cluster did not become healthy:\n" + servers["n1"].read_log()
            time.sleep(0.3)
        loop.run_until_complete(_make_stream(servers["n1"].url))
        watcher = loop.run_until_complete(_connect(servers["n1"].url, name="info-watcher", **APP))
        loop.run_until_complete(watcher.subscribe(WATCHED))
        loop.run_until_complete(watcher.flush())
        told = watcher._server_info  # pylint: disable=protected-access  # the INFO n1 sent the watcher
        yield {"servers": servers, "http": http_ports, "names": names, "version": told["version"], "first": told["server_name"]}
    finally:
        if watcher is not None:
            loop.run_until_complete(watcher.close())
        loop.close()
        for server in servers.values():
            server.stop()


def _monitor(cluster, name="n1"):
    return "http://127.0.0.1:%d" % cluster["http"][name]


def _over_nats(cluster, auth=None, **args):
    task = dict(auth or ADMIN, servers=[cluster["servers"]["n1"].url])
    task.update(args)
    return task


def _ok(result):
    assert not result.get("failed"), result
    assert result["changed"] is False
    return result


# --- the HTTP monitoring port ---------------------------------------------------------------------------------

def test_monitor_url_reads_the_endpoints(module_task, cluster):
    result = _ok(module_task("server_info", {
        "monitor_url": _monitor(cluster), "endpoints": ["varz", "healthz", "jsz", "connz"],
        "arguments": {"connz": {"subs": True, "auth": True}, "jsz": {"accounts": True, "streams": True}}}))
    info = result["server_info"]
    assert sorted(info) == ["connz", "healthz", "jsz", "varz"]
    assert info["varz"]["server_name"] == "n1" == cluster["first"]
    assert info["varz"]["version"] == cluster["version"]
    assert info["varz"]["cluster"]["name"] == "c1"
    assert info["healthz"] == {"status": "ok", "status_code": 200}
    assert result["healthy"] is True and result["unhealthy"] == {} and result["servers"] == ["n1"]
    streams = [s["name"] for a in info["jsz"]["account_details"] for s in a.get("stream_detail") or []]
    assert STREAM in streams
    watcher = [c for c in info["connz"]["connections"] if c.get("name") == "info-watcher"]
    assert len(watcher) == 1 and WATCHED in watcher[0]["subscriptions_list"] and watcher[0]["authorized_user"] == "app"


def test_monitor_url_query_and_check_mode(module_task, cluster):
    args = {"monitor_url": _monitor(cluster, "n2") + "/", "endpoints": ["varz"], "query": "varz.server_name"}
    for check in (False, True):
        result = _ok(module_task("server_info", args, check=check))
        assert result["query_result"] == "n2" and result["server_info"]["varz"]["server_name"] == "n2"
        assert "healthy" not in result
    # connz with subscription details, and the state argument in its HTTP form
    result = _ok(module_task("server_info", {
        "monitor_url": _monitor(cluster), "endpoints": ["connz"], "arguments": {"connz": {"subs": "detail", "state": "open"}},
        "query": "connz.connections[?name=='info-watcher'].subscriptions_list_detail[].subject"}))
    assert result["query_result"] == [WATCHED]


def test_monitor_url_unhealthy_is_data(module_task, cluster):
    args = {"monitor_url": _monitor(cluster), "endpoints": ["healthz"],
            "arguments": {"healthz": {"account": "APP", "stream": "NO_SUCH_STREAM"}}}
    result = _ok(module_task("server_info", args))
    healthz = result["server_info"]["healthz"]
    assert healthz["status"] == "unavailable" and healthz["status_code"] == 404 and "NO_SUCH_STREAM" in healthz["error"]
    assert result["healthy"] is False and "NO_SUCH_STREAM" in result["unhealthy"][_monitor(cluster)]
    failed = module_task("server_info", dict(args, fail_unhealthy=True))
    assert failed["failed"] and "not healthy" in failed["msg"] and "NO_SUCH_STREAM" in failed["msg"]
    assert failed["server_info"]["healthz"]["status"] == "unavailable"  # the data comes with the failure


def test_monitor_url_failures_are_clear(module_task, cluster):
    unreachable = "http://127.0.0.1:%d" % devenv.free_port()
    failed = module_task("server_info", {"monitor_url": unreachable})
    assert failed["failed"] and "cannot reach the nats-server monitoring port at %s" % unreachable in failed["msg"], failed
    assert "refused" in failed["msg"].lower() and "monitor_url" in failed["msg"]
    # a NATS client port is no monitoring port
    failed = module_task("server_info", {"monitor_url": cluster["servers"]["n1"].url.replace("nats://", "http://")})
    assert failed["failed"] and "did not answer with HTTP" in failed["msg"] and "not the NATS client port" in failed["msg"], failed
    failed = module_task("server_info", {"monitor_url": "ftp://127.0.0.1:1"})
    assert failed["failed"] and "is not an http:// or https:// URL" in failed["msg"]
    # the server refuses a bad argument
    failed = module_task("server_info", {"monitor_url": _monitor(cluster), "endpoints": ["connz"],
                                         "arguments": {"connz": {"sort": "no-such-order"}}})
    assert failed["failed"] and "HTTP 400" in failed["msg"] and "/connz?sort=no-such-order" in failed["msg"], failed


# --- through NATS, the system account's services ----------------------------------------------------------------

def test_over_nats_every_server_answers(module_task, cluster):
    result = _ok(module_task("server_info", _over_nats(
        cluster, endpoints=["varz", "healthz", "jsz", "connz"], expected_servers=3,
        arguments={"connz": {"subs": True, "auth": True}, "jsz": {"accounts": True, "streams": True}})))
    info = result["server_info"]
    assert result["servers"] == ["n1", "n2", "n3"] == sorted(info)
    for name in cluster["names"]:
        assert sorted(info[name]) == ["connz", "healthz", "jsz", "server", "varz"]
        assert info[name]["server"]["name"] == name and info[name]["server"]["cluster"] == "c1"
        assert info[name]["varz"]["server_name"] == name and info[name]["varz"]["version"] == info[name]["server"]["ver"]
        assert info[name]["healthz"]["status"] == "ok"
        streams = [s["name"] for a in info[name]["jsz"]["account_details"] for s in a.get("stream_detail") or []]
        assert STREAM in streams  # three replicas: on every server
    assert info["n1"]["varz"]["version"] == cluster["version"]
    watchers = [c for c in info["n1"]["connz"]["connections"] if c.get("name") == "info-watcher"]
    assert len(watchers) == 1 and WATCHED in watchers[0]["subscriptions_list"]
    assert not any(c.get("name") == "info-watcher" for n in ("n2", "n3") for c in info[n]["connz"]["connections"])
    assert result["healthy"] is True and result["unhealthy"] == {}


def test_over_nats_query_filters_and_check_mode(module_task, cluster):
    args = _over_nats(cluster, endpoints=["varz"], query="*.varz.server_name | sort(@)", wait=3, expected_servers=3)
    started = time.monotonic()
    result = _ok(module_task("server_info", args, check=True))  # read-only: the same data in check mode
    assert result["query_result"] == ["n1", "n2", "n3"]
    assert time.monotonic() - started < 15  # the three answers end the 3 s wait early (the rest is ansible-playbook)
    # an argument the module does not know goes to the $SYS service unchanged: the servers' own filter
    result = _ok(module_task("server_info", _over_nats(
        cluster, endpoints=["varz", "healthz"], arguments={"varz": {"server_name": "n2", "exact_match": True}})))
    assert sorted(result["server_info"]) == ["n1", "n2", "n3"]
    assert [n for n, entry in sorted(result["server_info"].items()) if "varz" in entry] == ["n2"]
    # connz arguments in their HTTP form, translated: subscription details of open connections
    result = _ok(module_task("server_info", _over_nats(
        cluster, endpoints=["connz"], arguments={"connz": {"subs": "detail", "state": "open", "acc": "APP", "auth": True}},
        query="n1.connz.connections[?name=='info-watcher'].subscriptions_list_detail[].subject", expected_servers=3)))
    assert result["query_result"] == [WATCHED]


def test_over_nats_failures_are_clear(module_task, cluster):
    failed = module_task("server_info", _over_nats(cluster, auth=APP, endpoints=["varz"]))
    assert failed["failed"] and "no responders on $SYS.REQ.SERVER.PING.VARZ" in failed["msg"], failed
    assert "the user is not in the system account" in failed["msg"]
    failed = module_task("server_info", _over_nats(cluster, auth=DENIED, endpoints=["varz"]))
    assert failed["failed"] and "permissions violation" in failed["msg"].lower(), failed
    assert "$SYS.REQ.SERVER.PING.VARZ" in failed["msg"]
    failed = module_task("server_info", _over_nats(cluster, endpoints=["varz"], expected_servers=4, wait=0.5))
    assert failed["failed"] and "fewer servers than the 4 expected answered" in failed["msg"], failed
    assert "varz 3 (n1, n2, n3)" in failed["msg"]
    assert sorted(failed["server_info"]) == ["n1", "n2", "n3"]
    # a wrong type is refused before anything is sent; the server's own refusal names the server
    failed = module_task("server_info", _over_nats(cluster, endpoints=["jsz"], arguments={"jsz": {"streams": "lots"}}))
    assert failed["failed"] and "arguments.jsz.streams: 'lots' is not a boolean" in failed["msg"], failed
    failed = module_task("server_info", _over_nats(cluster, endpoints=["connz"], arguments={"connz": {"sort": "no-such-order"}},
                                                   expected_servers=3))
    assert failed["failed"] and "the servers answered with errors" in failed["msg"] and "connz on n1" in failed["msg"], failed


def test_bad_input_fails_clearly(module_task, cluster):
    failed = module_task("server_info", {"monitor_url": _monitor(cluster), "endpoints": ["varz", "nope"]})
    assert failed["failed"] and "endpoints" in failed["msg"] and "nope" in failed["msg"], failed
    failed = module_task("server_info", {"monitor_url": _monitor(cluster), "query": "varz.[["})
    assert failed["failed"] and "query is not a valid JMESPath expression" in failed["msg"], failed
    failed = module_task("server_info", {"monitor_url": _monitor(cluster), "endpoints": ["varz"],
                                         "arguments": {"jsz": {"streams": True}}})
    assert failed["failed"] and "arguments are given for jsz, which is not in endpoints" in failed["msg"], failed
    failed = module_task("server_info", {"monitor_url": _monitor(cluster), "endpoints": ["varz"], "fail_unhealthy": True})
    assert failed["failed"] and "fail_unhealthy needs healthz" in failed["msg"], failed


# --- a server that cannot be healthy: clustered JetStream without its peers -------------------------------------

@pytest.fixture(scope="module")
def lonely():
    http_port = devenv.free_port()
    server = devenv.NatsServer(extra_config=_clustered("lonely", http_port, devenv.free_port(),
                                                       [devenv.free_port(), devenv.free_port()]))
    try:
        deadline = time.monotonic() + 20
        while _healthz_status(http_port) is None:
            assert time.monotonic() < deadline, server.read_log()
            time.sleep(0.2)
        yield {"server": server, "http": http_port}
    finally:
        server.stop()


def test_unhealthy_server_503(module_task, lonely):
    monitor = "http://127.0.0.1:%d" % lonely["http"]
    result = _ok(module_task("server_info", {"monitor_url": monitor, "endpoints": ["healthz"]}))
    healthz = result["server_info"]["healthz"]
    assert healthz["status_code"] == 503 and healthz["status"] == "unavailable" and healthz["error"], healthz
    assert result["healthy"] is False and result["servers"] == ["127.0.0.1:%d" % lonely["http"]]
    nats_args = {"servers": [lonely["server"].url], "endpoints": ["varz", "healthz"], "expected_servers": 1}
    nats_args.update(ADMIN)
    result = _ok(module_task("server_info", nats_args))
    assert result["servers"] == ["lonely"] and result["server_info"]["lonely"]["healthz"]["status_code"] == 503
    assert result["healthy"] is False and result["unhealthy"]["lonely"].startswith("unavailable: ")
    failed = module_task("server_info", dict(nats_args, fail_unhealthy=True))
    assert failed["failed"] and failed["msg"].startswith("not healthy: lonely: unavailable"), failed
    assert failed["server_info"]["lonely"]["varz"]["server_name"] == "lonely"


# --- https monitoring, verified with the NATS CA ----------------------------------------------------------------

def test_https_monitoring(module_task, tmp_path):
    certs = natsauth.certificates(tmp_path)
    port = devenv.free_port()
    server = devenv.NatsServer(extra_config="server_name: tls1\nhttps: 127.0.0.1:%d\ntls { cert_file: \"%s\", key_file: \"%s\" }\n"
                               % (port, certs["server"][0], certs["server"][1]))
    try:
        monitor = "https://127.0.0.1:%d" % port
        args = {"monitor_url": monitor, "endpoints": ["varz"], "query": "varz.server_name"}
        failed = module_task("server_info", args)
        assert failed["failed"] and "certificate verify failed" in failed["msg"].lower() and "ca_path" in failed["msg"], failed
        for extra in ({"ca_path": certs["ca"]}, {"ca": certs["ca"]}, {"validate_certs": False}):
            assert _ok(module_task("server_info", dict(args, **extra)))["query_result"] == "tls1", extra
    finally:
        server.stop()
