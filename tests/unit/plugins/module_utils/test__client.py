# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils import _client as client
from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import WireError


def _executor(namespace, instances, host="h1"):
    return {"id": "X", "namespace": namespace, "instances": instances, "hostname": host, "version": "0.1.0"}


def test_no_responders_message_is_the_seed_incident_explained():
    text = client.no_responders_message("natsops.exec.管理网", "管理网", "natsops",
                                        [_executor("natsops", ["default"]), _executor("other", ["x"], "h2")],
                                        "nats://10.0.0.1:4222")
    assert "'管理网'" in text and "natsops.exec.管理网" in text and "nats://10.0.0.1:4222" in text
    assert "Instance ids online in namespace 'natsops': 'default'" in text
    assert "other namespaces: 'other': x" in text
    assert "Fix:" in text and "--instance '管理网'" in text


def test_no_responders_message_without_any_executor():
    text = client.no_responders_message("natsops.exec.a", "a", "natsops", [], "nats://x:1")
    assert "No executor is online in namespace 'natsops'" in text


def test_client_validates_names_before_connecting():
    with pytest.raises(WireError):
        client.ExecutorClient({}, "a.b")
    with pytest.raises(WireError):
        client.ExecutorClient({}, "ok", namespace="bad ns")


def test_serving_filters_namespace_and_instance():
    c = client.ExecutorClient({}, "zone")
    found = c.serving([_executor("natsops", ["zone"]), _executor("natsops", ["*"]), _executor("natsops", ["z2"]),
                       _executor("other", ["zone"])])
    assert [e["instances"] for e in found] == [["zone"], ["*"]]


def test_wire_errors_map_to_unreachable_or_failed():
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorError, ExecutorTaskError, ExecutorUnreachable
    from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import WireError
    auth = ExecutorError.from_wire(WireError("target_auth_failed", "refused", {"stage": "auth"}))
    assert isinstance(auth, ExecutorUnreachable) and auth.details == {"stage": "auth"}
    assert isinstance(ExecutorError.from_wire(WireError("timeout", "slow")), ExecutorTaskError)


def _core():
    return client.AsyncExecutorClient(None, "host-1", "natsops", 1.0, 5.0, "nats://127.0.0.1:4222")


def test_an_opt_out_of_warm_runs_is_sent_only_when_asked_and_dropped_for_an_older_executor(monkeypatch):
    import asyncio
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
    sent = []

    async def older_executor(fields, stdin, on_output):  # pylint: disable=unused-argument
        sent.append(fields["warm"])
        if fields["warm"] is not None:
            raise ExecutorTaskError("bad_request", "exec: unknown field 'warm'", {"problems": ["exec: unknown field 'warm'"]})
        return 0, b"ok", b""

    core = _core()
    monkeypatch.setattr(core, "_exec", older_executor)
    assert asyncio.run(core.exec_command(command="true")) == (0, b"ok", b"")
    assert sent == [None]
    assert asyncio.run(core.exec_command(command="true", warm=False)) == (0, b"ok", b"")
    assert sent == [None, False, None]


def test_other_refusals_of_an_opt_out_are_not_retried(monkeypatch):
    import asyncio
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
    sent = []

    async def refusing(fields, stdin, on_output):  # pylint: disable=unused-argument
        sent.append(fields["warm"])
        raise ExecutorTaskError("bad_request", "two problems", {"problems": ["exec: unknown field 'warm'", "exec: 'timeout' must be >= 0"]})

    core = _core()
    monkeypatch.setattr(core, "_exec", refusing)
    with pytest.raises(ExecutorTaskError):
        asyncio.run(core.exec_command(command="true", warm=False))
    assert sent == [False]
