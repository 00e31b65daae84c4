#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: server_info
short_description: Read nats-server monitoring endpoints (varz, jsz, connz, healthz, ...) as data
description:
  - Returns what the nats-server monitoring endpoints report (C(/varz), C(/jsz), C(/connz), C(/healthz) and the
    others listed in O(endpoints)), parsed, and whether the servers are healthy.
  - With O(monitor_url) it reads the HTTP monitoring port of one server (the C(http) or C(https) setting of
    nats-server), with an HTTP C(GET <monitor_url>/<endpoint>).
  - Without O(monitor_url) it asks through the NATS connection (the NATS options below) with the system account's
    services, C($SYS.REQ.SERVER.PING.<ENDPOINT>), and gathers the replies of every server of the cluster (and of
    the super-cluster through gateways) for O(wait) seconds. Only users of the system account (the account named by
    the server's C(system_account)) are answered, and they need the permission to publish to
    C($SYS.REQ.SERVER.PING.>) (C($SYS.REQ.ACCOUNT.PING.STATZ) for V(accstatz)) and to subscribe to their inbox.
    A user of another account gets C(no responders), except for V(connz), which every account may ask and which
    then lists only that account's connections.
  - Read-only; it never changes anything.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.attributes.info_module
options:
  endpoints:
    description:
      - The monitoring endpoints to read, by their HTTP names (V(expvarz) is C(/debug/vars)).
    type: list
    elements: str
    choices: [accountz, accstatz, connz, expvarz, gatewayz, healthz, ipqueuesz, jsz, leafz, raftz, routez, subsz, varz]
    default: [varz, healthz]
  arguments:
    description:
      - >-
        For each endpoint, its options by the names of the HTTP monitoring query parameters, for example
        C({connz: {subs: true, auth: true}, jsz: {streams: true}}).
      - With O(monitor_url) they become the URL's query. Through NATS they are translated into the JSON request of
        the C($SYS) service (C(subs) becomes C(subscriptions), C(acc) becomes C(account), C(state=closed)
        becomes C(1), ...); a name this module does not know is passed unchanged, so that the server filters of the
        C($SYS) services work too, for example C(server_name) with C(exact_match) (only that server answers),
        C(cluster), C(host), C(tags) or C(domain).
      - Booleans and numbers of the known options are checked before anything is sent.
    type: dict
  monitor_url:
    description:
      - Base URL of one server's HTTP monitoring port, for example C(http://127.0.0.1:8222); the endpoints are read
        from there and the NATS connection options are not used.
      - O(connect_timeout) is the HTTP timeout.
    type: str
  validate_certs:
    description: With an C(https://) O(monitor_url), verify the server's certificate.
    type: bool
    default: true
  ca_path:
    description:
      - CA certificate(s) that verify an C(https://) O(monitor_url).
      - nats-server serves C(https) monitoring with the certificate of its C(tls) block, so this defaults to the
        NATS option O(ca).
    type: path
  client_cert:
    description: Client certificate for an C(https://) O(monitor_url) whose server verifies clients; defaults to O(cert).
    type: path
  client_key:
    description: Private key of O(client_cert); defaults to O(key).
    type: path
  wait:
    description:
      - Through NATS, the seconds to gather replies (all endpoints are asked at once). Every server that answers
        within that time is in the result.
      - Gathering ends earlier once O(expected_servers) servers answered every endpoint.
    type: float
    default: 1
  expected_servers:
    description:
      - Through NATS, the number of servers that must answer each endpoint within O(wait) seconds; the task fails,
        naming those that answered, when fewer did. Gathering ends as soon as that many answered.
    type: int
  fail_unhealthy:
    description:
      - Fail the task when a V(healthz) answer is not C(ok) (the result is still returned). Otherwise an unhealthy
        server is data, RV(healthy=false).
    type: bool
    default: false
  query:
    description: A JMESPath expression applied to RV(server_info); its outcome is RV(query_result).
    type: str
notes:
  - Through NATS the connection options are those of the other modules, so C(module_defaults) for
    C(group/natsops.fleet.nats) applies; give a system-account user (O(user), O(creds), ...) there or in the task.
  - With O(monitor_url) the module needs neither nats-py nor the NATS options.
requirements:
  - jmespath (for O(query))
seealso:
  - name: NATS server monitoring
    description: The endpoints and their options.
    link: https://docs.nats.io/running-a-nats-service/nats_admin/monitoring
"""

EXAMPLES = r"""
- name: Every server of the cluster, through NATS as a system-account user
  natsops.fleet.server_info:
    servers: tls://nats.example.com:4222
    creds: /etc/natsops/sys.creds
    endpoints: [varz, healthz, jsz]
    arguments:
      jsz: {streams: true}
    expected_servers: 3
  delegate_to: localhost
  register: nats

- name: Versions and health
  ansible.builtin.debug:
    msg: "{{ item.key }}: {{ item.value.varz.version }} {{ item.value.healthz.status }}"
  loop: "{{ nats.server_info | dict2items }}"

- name: Fail unless every server is healthy
  natsops.fleet.server_info:
    endpoints: [healthz]
    fail_unhealthy: true
  delegate_to: localhost

- name: One server's monitoring port, connections with their subscriptions
  natsops.fleet.server_info:
    monitor_url: http://127.0.0.1:8222
    endpoints: [connz]
    arguments:
      connz: {subs: true, auth: true}
    query: "connz.connections[].{name: name, subjects: subscriptions_list}"
  register: conns

- name: Streams of an account over https, checked with the NATS CA
  natsops.fleet.server_info:
    monitor_url: https://nats1.example.com:8222
    ca_path: /etc/natsops/ca.pem
    endpoints: [jsz]
    arguments:
      jsz: {acc: APP, streams: true}
    query: "jsz.account_details[].stream_detail[].name"
  delegate_to: localhost
"""

RETURN = r"""
server_info:
  description:
    - With O(monitor_url), the answer of each endpoint, by endpoint name, as nats-server returns it
      (for V(healthz) with C(status_code) added from the HTTP status).
    - Through NATS, by server name (the C(server_name) of nats-server, its id when it has none), the answer of
      each endpoint that server gave, by endpoint name, and under C(server) what the server said about itself
      (C(name), C(id), C(cluster), C(ver), C(jetstream), C(domain), C(tags), ...). A server missing from an
      endpoint's answers (filtered out by O(arguments)) has no key for it.
  returned: always
  type: dict
  sample:
    n1:
      server: {name: n1, id: NDJWE4..., cluster: c1, ver: 2.11.4, jetstream: true}
      varz: {server_name: n1, version: 2.11.4, connections: 4, mem: 21360640}
      healthz: {status: ok, status_code: 200}
    n2:
      server: {name: n2, id: NCSKO7..., cluster: c1, ver: 2.11.4, jetstream: true}
      varz: {server_name: n2, version: 2.11.4, connections: 1, mem: 19206144}
      healthz: {status: unavailable, status_code: 503, error: JetStream has not established contact with a meta leader}
servers:
  description:
    - Names of the servers that answered, sorted. With O(monitor_url), the one server's C(server_name) when an
      answer names it, else the host and port of O(monitor_url).
  returned: always
  type: list
  elements: str
  sample: [n1, n2, n3]
healthy:
  description: Whether every V(healthz) answer has C(status=ok).
  returned: when V(healthz) is among O(endpoints)
  type: bool
  sample: true
unhealthy:
  description: For each V(healthz) answer that is not C(ok), the server (or O(monitor_url)) and its error.
  returned: when V(healthz) is among O(endpoints)
  type: dict
  sample: {n2: "unavailable: JetStream has not established contact with a meta leader"}
query_result:
  description: The outcome of O(query) applied to RV(server_info).
  returned: when O(query) is given
  type: raw
  sample: [n1, n2, n3]
"""

import asyncio
import json
import re
import time
from http.client import HTTPException
from typing import Any, Dict, List, Optional, Tuple
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.module_utils.urls import open_url

from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec, compile_query
from ansible_collections.natsops.fleet.plugins.module_utils._resources import ResourceError, run


# endpoint -> (HTTP path, NATS subject of the system account's service asking every server)
ENDPOINTS = {
    "accountz": ("/accountz", "$SYS.REQ.SERVER.PING.ACCOUNTZ"),
    "accstatz": ("/accstatz", "$SYS.REQ.ACCOUNT.PING.STATZ"),
    "connz": ("/connz", "$SYS.REQ.SERVER.PING.CONNZ"),
    "expvarz": ("/debug/vars", "$SYS.REQ.SERVER.PING.EXPVARZ"),
    "gatewayz": ("/gatewayz", "$SYS.REQ.SERVER.PING.GATEWAYZ"),
    "healthz": ("/healthz", "$SYS.REQ.SERVER.PING.HEALTHZ"),
    "ipqueuesz": ("/ipqueuesz", "$SYS.REQ.SERVER.PING.IPQUEUESZ"),
    "jsz": ("/jsz", "$SYS.REQ.SERVER.PING.JSZ"),
    "leafz": ("/leafz", "$SYS.REQ.SERVER.PING.LEAFZ"),
    "raftz": ("/raftz", "$SYS.REQ.SERVER.PING.RAFTZ"),
    "routez": ("/routez", "$SYS.REQ.SERVER.PING.ROUTEZ"),
    "subsz": ("/subsz", "$SYS.REQ.SERVER.PING.SUBSZ"),
    "varz": ("/varz", "$SYS.REQ.SERVER.PING.VARZ"),
}

# endpoint -> HTTP query parameter -> (its name in the JSON request of the $SYS service, kind), from nats-server's
# monitor.go (Handle*z and the *Options structs)
_SUBS = ("subscriptions", "subs")  # true/false, or "detail" (subscriptions_detail)
ARGUMENTS = {
    "accountz": {"acc": ("account", "str")},
    "accstatz": {"unused": ("include_unused", "bool")},
    "connz": {"sort": ("sort", "str"), "auth": ("auth", "bool"), "subs": _SUBS, "offset": ("offset", "int"),
              "limit": ("limit", "int"), "cid": ("cid", "int"), "state": ("state", "state"), "user": ("user", "str"),
              "acc": ("acc", "str"), "mqtt_client": ("mqtt_client", "str")},
    "gatewayz": {"subs": _SUBS, "accs": ("accounts", "bool"), "gw_name": ("name", "str"),
                 "acc_name": ("account_name", "str")},
    "healthz": {**{name: (name, "bool") for name in ("js-enabled", "js-enabled-only", "js-server-only", "js-meta-only", "details")},
                **{name: (name, "str") for name in ("account", "stream", "consumer")}},
    "ipqueuesz": {"all": ("all", "bool"), "queues": ("filter", "str")},
    "jsz": {"acc": ("account", "str"), "accounts": ("accounts", "bool"), "streams": ("streams", "bool"),
            "consumers": ("consumer", "bool"), "direct-consumers": ("direct_consumer", "bool"), "config": ("config", "bool"),
            "offset": ("offset", "int"), "limit": ("limit", "int"), "leader-only": ("leader_only", "bool"),
            "raft": ("raft", "bool"), "stream-leader-only": ("stream_leader_only", "bool")},
    "leafz": {"subs": ("subscriptions", "bool"), "acc": ("account", "str")},
    "raftz": {"acc": ("account", "str"), "group": ("group", "str")},
    "routez": {"subs": _SUBS},
    "subsz": {"subs": ("subscriptions", "bool"), "offset": ("offset", "int"), "limit": ("limit", "int"),
              "test": ("test", "str"), "acc": ("account", "str")},
    "varz": {},
    "expvarz": {},
}
_STATES = {"open": 0, "closed": 1, "all": 2, "any": 2}
SYSTEM_ACCOUNT_HINT = ("the user is not in the system account: $SYS.REQ.SERVER.PING is answered only for system-account "
                       "users (connect as a user of the account named by the server's system_account), or read the HTTP "
                       "monitoring port with monitor_url")


def _value(endpoint: str, name: str, kind: Optional[str], value: Any) -> Any:
    """An argument's value as its kind (None: passed as given), or ResourceError naming it."""
    if kind is None:
        return value
    where = "arguments.%s.%s" % (endpoint, name)
    if isinstance(value, (dict, list)):
        raise ResourceError("%s: %r is not a single value" % (where, value))
    text = to_text(value).strip()
    if kind == "subs" and text.lower() == "detail":
        return "detail"
    if kind in ("bool", "subs"):
        try:
            return boolean(value, strict=True)
        except TypeError as exc:
            raise ResourceError("%s: %r is not a boolean%s" % (where, value, " or 'detail'" if kind == "subs" else "")) from exc
    if kind == "int":
        if isinstance(value, bool) or not re.match(r"^-?\d+$", text):
            raise ResourceError("%s: %r is not a whole number" % (where, value))
        return int(text)
    if kind == "state":
        if text.lower() not in _STATES:
            raise ResourceError("%s: %r is not one of open, closed, all" % (where, value))
        return text.lower()
    return text


def check_arguments(endpoints: List[str], arguments: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The arguments by endpoint, with the known options' values checked and converted (ResourceError if not)."""
    checked = {}
    for endpoint, options in (arguments or {}).items():
        if endpoint not in ENDPOINTS:
            raise ResourceError("arguments: %r is not an endpoint; choose from %s" % (endpoint, ", ".join(sorted(ENDPOINTS))))
        if endpoint not in endpoints:
            raise ResourceError("arguments are given for %s, which is not in endpoints (%s)" % (endpoint, ", ".join(endpoints)))
        if options is None:
            continue
        if not isinstance(options, dict):
            raise ResourceError("arguments.%s must be a dictionary of query parameters, got %r" % (endpoint, options))
        known = ARGUMENTS.get(endpoint, {})
        checked[endpoint] = {str(name): _value(endpoint, name, known[name][1] if name in known else None, value)
                             for name, value in options.items() if value is not None}
    return checked


def http_query(options: Optional[Dict[str, Any]]) -> str:
    """The URL query string of an endpoint's (checked) options."""
    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, tuple)):
            return ",".join(text(v) for v in value)
        return to_text(value)
    return urlencode(sorted((name, text(value)) for name, value in (options or {}).items()))


def endpoint_url(monitor_url: str, endpoint: str, options: Optional[Dict[str, Any]] = None) -> str:
    """The URL that reads an endpoint from the monitoring port at monitor_url."""
    query = http_query(options)
    return monitor_url.rstrip("/") + ENDPOINTS[endpoint][0] + ("?" + query if query else "")


def sys_request(endpoint: str, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The JSON request of the $SYS service for an endpoint's (checked) options: known names translated, others as given."""
    known = ARGUMENTS.get(endpoint, {})
    body = {}
    for name, value in (options or {}).items():
        if name not in known:
            body[name] = value
            continue
        field, kind = known[name]
        if kind == "subs" and value == "detail":
            body["subscriptions_detail"] = True
        elif kind == "state":
            body[field] = _STATES[value]
        else:
            body[field] = value
    return body


def _status(answer: Any) -> Tuple[bool, Optional[str]]:
    """(healthy, reason) of one healthz answer."""
    if not isinstance(answer, dict):
        return False, "no answer"
    if answer.get("status") == "ok":
        return True, None
    errors = [e.get("error") if isinstance(e, dict) else e for e in answer.get("errors") or []]
    reason = "; ".join(str(e) for e in [answer.get("error")] + errors if e) or "status %s" % answer.get("status_code")
    return False, "%s: %s" % (answer.get("status") or "not ok", reason)


def health(answers: Dict[str, Any]) -> Tuple[bool, Dict[str, str]]:
    """(healthy, unhealthy) from healthz answers by server: all ok, and the reason of those that are not."""
    unhealthy = {}
    for server, answer in answers.items():
        ok, reason = _status(answer)
        if not ok:
            unhealthy[server] = reason
    if not answers:
        return False, {"healthz": "no server answered"}
    return not unhealthy, unhealthy


def merge_replies(replies: Dict[str, List[Dict[str, Any]]]) -> Tuple[Dict[str, Dict[str, Any]], List[str]]:
    """The per-server view from the replies of the $SYS services: {endpoint: [reply, ...]} ->
    ({server name: {"server": info, endpoint: data}}, [errors]) where errors are "endpoint on server: message"."""
    by_server, errors = {}, []
    for endpoint in sorted(replies):
        for reply in replies[endpoint]:
            info = reply.get("server") or {}
            name = info.get("name") or info.get("id") or "?"
            entry = by_server.setdefault(name, {})
            entry["server"] = info
            error = reply.get("error")
            if error:
                if not isinstance(error, dict):
                    error = {"description": error}
                errors.append("%s on %s: %s%s" % (endpoint, name, error.get("description"),
                                                  " (%s)" % error["code"] if error.get("code") else ""))
                continue
            entry[endpoint] = reply.get("data")
    return by_server, errors


def _certificate_hint(reason: str) -> str:
    if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
        return "; give ca_path (or ca) with the CA of the server's certificate, or validate_certs: false"
    return ""


def read_http(params: Dict[str, Any], endpoints: List[str], arguments: Dict[str, Dict[str, Any]]) -> Tuple[Dict[str, Any], List[str]]:
    """Read the endpoints from the monitoring port: (server_info, servers)."""
    base = params["monitor_url"].strip()
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ResourceError("monitor_url %r is not an http:// or https:// URL of a nats-server monitoring port" % base)
    tls = dict(validate_certs=params["validate_certs"], ca_path=params["ca_path"] or params["ca"],
               client_cert=params["client_cert"] or params["cert"], client_key=params["client_key"] or params["key"])
    server_info = {}
    for endpoint in endpoints:
        url = endpoint_url(base, endpoint, arguments.get(endpoint))
        status = 200
        try:
            response = open_url(url, method="GET", timeout=params["connect_timeout"], headers={"Accept": "application/json"},
                                http_agent="natsops.fleet server_info", **tls)
            body = response.read()
        except HTTPError as exc:
            status, body = exc.code, exc.read() if exc.fp is not None else b""
        except URLError as exc:
            reason = to_text(exc.reason)
            raise ResourceError("cannot reach the nats-server monitoring port at %s (%s): %s%s; check monitor_url and the "
                                "server's http/https setting" % (base, url, reason, _certificate_hint(reason))) from exc
        except HTTPException as exc:  # a NATS client port answers with INFO {...}
            raise ResourceError("%s did not answer with HTTP (%s); monitor_url must name the monitoring port (http or https "
                                "in the server's configuration, often 8222), not the NATS client port"
                                % (url, to_text(exc).strip()[:100] or exc.__class__.__name__)) from exc
        except Exception as exc:  # pylint: disable=broad-except  # timeouts, resets, bad certificates, bad URLs
            reason = to_text(exc) or exc.__class__.__name__
            raise ResourceError("cannot read %s: %s%s; check monitor_url and the server's http/https setting"
                                % (url, reason, _certificate_hint(reason))) from exc
        text = to_text(body, errors="surrogate_or_replace")
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        if status >= 400 and not (endpoint == "healthz" and isinstance(data, dict)):
            raise ResourceError("GET %s: HTTP %s: %s" % (url, status, text.strip()[:300] or "(empty)"), status=status)
        if data is None:
            raise ResourceError("GET %s did not return JSON (HTTP %s): %r; is monitor_url a nats-server monitoring port?"
                                % (url, status, text[:200]))
        if endpoint == "healthz":
            data.setdefault("status_code", status)
        server_info[endpoint] = data
    names = [d.get("server_name") for d in server_info.values() if isinstance(d, dict) and d.get("server_name")]
    return server_info, [names[0] if names else parts.netloc]


async def gather(nc: Any, requests: Dict[str, Tuple[str, Dict[str, Any]]], wait: float,
                 expected: Optional[int] = None) -> Tuple[Dict[str, List[Dict[str, Any]]], Dict[str, bool]]:
    """Send each $SYS request with its own inbox and gather the replies of every server for ``wait`` seconds
    (less once ``expected`` servers answered each). ``requests`` is {endpoint: (subject, body)}.
    Returns ({endpoint: [parsed reply, ...]}, {endpoint: True when nobody serves its subject})."""
    replies: Dict[str, List[Dict[str, Any]]] = {endpoint: [] for endpoint in requests}
    no_responders = {}
    complete = asyncio.Event()

    def check_complete() -> None:
        if all(no_responders.get(e) or (expected and len(replies[e]) >= expected) for e in requests):
            complete.set()

    subscriptions = []
    try:
        for endpoint, (subject, body) in requests.items():
            async def on_reply(msg: Any, endpoint: str = endpoint) -> None:
                headers = msg.headers or {}
                if headers.get("Status") == "503" and not msg.data:
                    no_responders[endpoint] = True
                else:
                    try:
                        reply = json.loads(msg.data.decode("utf-8"))
                    except ValueError:
                        reply = {"server": {}, "error": {"description": "not JSON: %r" % msg.data[:200]}}
                    if isinstance(reply, dict):
                        replies[endpoint].append(reply)
                check_complete()

            inbox = nc.new_inbox()
            subscriptions.append(await nc.subscribe(inbox, cb=on_reply))
            await nc.publish(subject, json.dumps(body).encode("utf-8") if body else b"", reply=inbox)
        await nc.flush()
        try:
            await asyncio.wait_for(complete.wait(), wait)
        except asyncio.TimeoutError:
            pass
    finally:
        for sub in subscriptions:
            try:
                await sub.unsubscribe()
            except Exception:  # pylint: disable=broad-except  # the connection is closing anyway
                pass
    return replies, no_responders


def read_nats(module: AnsibleModule, endpoints: List[str], arguments: Dict[str, Dict[str, Any]]) -> Tuple[Dict[str, Any], List[str]]:
    """Ask the $SYS services through NATS: (server_info, servers)."""
    params = module.params
    requests = {e: (ENDPOINTS[e][1], sys_request(e, arguments.get(e))) for e in endpoints}

    async def work(nc: Any) -> Tuple[Dict[str, List[Dict[str, Any]]], float]:
        started = time.monotonic()
        replies, no_responders = await gather(nc, requests, params["wait"], params["expected_servers"])
        refused = nc.last_error if "permissions violation" in str(nc.last_error or "").lower() else None
        if refused:
            raise ResourceError("NATS refused the request: %s; the user needs to publish to %s and to subscribe to its "
                                "inbox (%s.>)" % (refused, ", ".join(sorted({requests[e][0] for e in endpoints})),
                                                  params["inbox_prefix"] or "_INBOX"))
        if no_responders:
            subjects = ", ".join(requests[e][0] for e in sorted(no_responders))
            raise ResourceError("no responders on %s: %s" % (subjects, SYSTEM_ACCOUNT_HINT))
        silent = [e for e in endpoints if not replies[e]]
        if silent and len(silent) == len(endpoints):
            raise ResourceError("no server answered %s within %s s; %s" % (
                ", ".join(requests[e][0] for e in silent), params["wait"], SYSTEM_ACCOUNT_HINT))
        return replies, time.monotonic() - started

    replies, elapsed = run(module, work)
    server_info, errors = merge_replies(replies)
    if errors:
        raise ResourceError("the servers answered with errors: %s" % "; ".join(errors), server_info=server_info,
                            servers=sorted(server_info))
    expected = params["expected_servers"]
    if expected:
        short = {e: sorted((r.get("server") or {}).get("name") or "?" for r in replies[e])
                 for e in endpoints if len(replies[e]) < expected}
        if short:
            raise ResourceError("fewer servers than the %d expected answered within %.1f s: %s" % (
                expected, elapsed, "; ".join("%s %d (%s)" % (e, len(names), ", ".join(names) or "none") for e, names in sorted(short.items()))),
                server_info=server_info, servers=sorted(server_info))
    return server_info, sorted(server_info)


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            endpoints=dict(type="list", elements="str", choices=sorted(ENDPOINTS), default=["varz", "healthz"]),
            arguments=dict(type="dict"),
            monitor_url=dict(type="str"),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            client_cert=dict(type="path"),
            client_key=dict(type="path"),
            wait=dict(type="float", default=1.0),
            expected_servers=dict(type="int"),
            fail_unhealthy=dict(type="bool", default=False),
            query=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    endpoints = list(dict.fromkeys(params["endpoints"]))  # in order, once each
    if not endpoints:
        module.fail_json(msg="endpoints is empty; name at least one of %s" % ", ".join(sorted(ENDPOINTS)))
    if not 0 < params["wait"] <= 300:
        module.fail_json(msg="wait must be more than 0 and at most 300 seconds, got %s" % params["wait"])
    if params["fail_unhealthy"] and "healthz" not in endpoints:
        module.fail_json(msg="fail_unhealthy needs healthz in endpoints")
    if params["expected_servers"] is not None and params["expected_servers"] < 1:
        module.fail_json(msg="expected_servers must be 1 or more, got %s" % params["expected_servers"])
    compiled = compile_query(module)
    try:
        arguments = check_arguments(endpoints, params["arguments"])
        if params["monitor_url"]:
            server_info, servers = read_http(params, endpoints, arguments)
        else:
            server_info, servers = read_nats(module, endpoints, arguments)
    except ResourceError as exc:
        module.fail_json(msg=exc.message, **exc.details)

    result = {"changed": False, "server_info": server_info, "servers": servers}
    if "healthz" in endpoints:
        if params["monitor_url"]:
            answers = {params["monitor_url"]: server_info.get("healthz")}
        else:
            answers = {name: entry.get("healthz") for name, entry in server_info.items() if "healthz" in entry}
        result["healthy"], result["unhealthy"] = health(answers)
    if compiled is not None:
        result["query_result"] = compiled.search(server_info)
    if params["fail_unhealthy"] and result.get("healthy") is False:
        module.fail_json(msg="not healthy: %s" % "; ".join("%s: %s" % item for item in sorted(result["unhealthy"].items())), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
