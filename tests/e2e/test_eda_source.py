# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.nats, the ansible-rulebook event source, against a real nats-server: core subjects with a queue
group, a JetStream durable consumer acknowledged only after queueing, bad arguments, user/password auth,
reconnection, the file run as a script, and a real ansible-rulebook using it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import runpy
import shutil
import signal
import subprocess
import time

import nats
import nats.js.errors
import pytest

import devenv
import natsauth
from conftest import ROOT

SOURCE = os.path.join(ROOT, "extensions", "eda", "plugins", "event_source", "nats.py")
PLUGIN = runpy.run_path(SOURCE)  # as ansible-rulebook loads it
RULEBOOK = devenv.tool("ansible-rulebook") if os.path.exists(os.path.join(devenv.VENV_BIN, "ansible-rulebook")) \
    else shutil.which("ansible-rulebook")
# on CI (NATSOPS_LAB_REQUIRED, set by .ci/run, which installs both) these tests must run, never skip
NEEDS_RULEBOOK = pytest.mark.skipif(
    (not RULEBOOK or not (shutil.which("java") or os.environ.get("JAVA_HOME"))) and not os.environ.get("NATSOPS_LAB_REQUIRED"),
    reason="ansible-rulebook or Java is missing: pip install ansible-rulebook (into .venv) and apt-get install "
           "openjdk-17-jre-headless")


class Running:
    """The event source's main(queue, args) as a task of this loop."""

    def __init__(self, args, maxsize=0):
        self.queue = asyncio.Queue(maxsize)
        self.task = asyncio.ensure_future(PLUGIN["main"](self.queue, args))

    async def get(self, timeout=10.0):
        getter = asyncio.ensure_future(self.queue.get())
        done, _pending = await asyncio.wait({getter, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.task.done():
            self.task.result()  # the source's own error
            raise AssertionError("the source ended without an error")
        raise AssertionError("no event within %.0f s" % timeout)

    async def nothing_more(self, wait=1.5):
        await asyncio.sleep(wait)
        assert self.queue.empty(), "unexpected event: %r" % self.queue.get_nowait()

    async def stop(self):
        """Cancel it as ansible-rulebook does at shutdown; it must end promptly and cleanly."""
        self.task.cancel()
        done, _pending = await asyncio.wait({self.task}, timeout=15)
        assert done, "the source did not stop within 15 s of being cancelled"
        assert self.task.cancelled(), "the source ended with %r instead of the cancellation" % (self.task.exception(),)


async def wait_log(caplog, text, count=1, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(text in r.getMessage() for r in caplog.records) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("log line %r not seen %d times:\n%s" % (text, count, caplog.text[-3000:]))


async def poll(check, timeout=10.0):
    """await check() until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


@pytest.fixture(name="logs")
def logs_fixture(caplog):
    caplog.set_level(logging.DEBUG, logger="natsops.fleet.nats")
    return caplog


async def test_core_subjects_with_a_queue_group(nats_server, logs):
    args = {"servers": nats_server.url, "subjects": ["e2e.eda.core.>", "e2e.eda.other"], "queue_group": "eda-e2e"}
    runs = [Running(args), Running(dict(args, subjects="e2e.eda.core.>, e2e.eda.other"))]
    nc = await nats.connect(nats_server.url)
    try:
        await wait_log(logs, "listening on e2e.eda.core.>, e2e.eda.other (queue group eda-e2e)", count=2)

        async def one_event(timeout=10):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for run in runs:
                    if not run.queue.empty():
                        return run.queue.get_nowait()
                await asyncio.sleep(0.02)
            raise AssertionError("no event within %d s" % timeout)

        await nc.publish("e2e.eda.core.disk", json.dumps({"severity": "critical", "zone": "管理网"}).encode(),
                         reply="e2e.reply.1", headers={"Source": "e2e", "Trace": "t-1"})
        assert await one_event() == {"subject": "e2e.eda.core.disk", "data": {"severity": "critical", "zone": "管理网"},
                                     "headers": {"Source": "e2e", "Trace": "t-1"}, "reply": "e2e.reply.1"}
        # payloads that are not JSON arrive as text, never as an error
        for payload, data in ((b"disk 95% full", "disk 95% full"), (b"{not json", "{not json"), (b"", ""),
                              (b"\xff\xfe raw", "\\xff\\xfe raw"), (b"42", 42)):
            await nc.publish("e2e.eda.other", payload)
            event = await one_event()
            assert (event["subject"], event["data"], event["headers"], event["reply"]) == ("e2e.eda.other", data, {}, None)
        # the queue group splits the messages: each one reaches exactly one of the two sources
        for n in range(40):
            await nc.publish("e2e.eda.core.n", json.dumps({"n": n}).encode())
        got = [[], []]
        deadline = time.monotonic() + 10
        while sum(map(len, got)) < 40 and time.monotonic() < deadline:
            for index, run in enumerate(runs):
                while not run.queue.empty():
                    got[index].append(run.queue.get_nowait()["data"]["n"])
            await asyncio.sleep(0.05)
        assert sorted(got[0] + got[1]) == list(range(40))
        assert got[0] and got[1], "one source got everything: %r" % (got,)
    finally:
        await nc.close()
        for run in runs:
            await run.stop()
    assert "NATS connection closed" in logs.text


async def _jsm(url, action):
    nc = await nats.connect(url)
    try:
        return await action(nc.jetstream())
    finally:
        await nc.close()


async def test_jetstream_acknowledges_only_what_was_queued(nats_server, logs):
    url = nats_server.url

    async def setup(js):
        await js.add_stream(name="EDA_E2E", subjects=["e2e.eda.js.>"])
        for n in (1, 2, 3):
            await js.publish("e2e.eda.js.deploy", json.dumps({"n": n}).encode(), headers={"Nats-Msg-Id": "m-%d" % n})

    async def consumer(js):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            return await js.consumer_info("EDA_E2E", "eda-e2e")
        return None

    await _jsm(url, setup)
    args = {"servers": url, "stream": "EDA_E2E", "durable": "eda-e2e", "ack_wait": "60s", "max_deliver": 5}
    first = again = None
    try:
        # a queue of one that nobody reads: the first event fits, the second waits for room
        first = Running(args, maxsize=1)

        async def second_taken_not_acked():
            info = await _jsm(url, consumer)
            return info if info and info.num_ack_pending == 1 and info.delivered.stream_seq == 2 else None

        info = await poll(second_taken_not_acked)
        assert info, "the source never took the second message"
        await asyncio.sleep(0.5)
        info = await _jsm(url, consumer)
        assert (info.ack_floor.stream_seq, info.num_ack_pending, info.num_pending) == (1, 1, 1), info
        assert info.config.ack_wait == 60 and info.config.max_deliver == 5
        assert first.queue.qsize() == 1
        queued = first.queue.get_nowait()
        assert queued == {"subject": "e2e.eda.js.deploy", "data": {"n": 1}, "headers": {"Nats-Msg-Id": "m-1"}, "reply": None,
                          "meta": {"stream": "EDA_E2E", "consumer": "eda-e2e", "sequence": 1, "delivered": 1}}
        first, running = None, first
        await running.stop()  # cancelled while waiting to queue #2: #1 stays acknowledged, #2 is handed back (nak)
        info = await _jsm(url, consumer)
        assert (info.ack_floor.stream_seq, info.delivered.stream_seq) == (1, 2), info

        again = Running(args)
        # the nak makes #2 available at once: it arrives long before its ack_wait (60 s) would have run out
        events = [await again.get(timeout=10), await again.get()]
        assert [(e["data"]["n"], e["meta"]["sequence"], e["meta"]["delivered"]) for e in events] == [(2, 2, 2), (3, 3, 1)]
        await again.nothing_more()  # #1 is not delivered twice

        async def all_acked():
            info = await _jsm(url, consumer)
            return info if info.ack_floor.stream_seq == 3 and info.num_ack_pending == 0 else None

        info = await poll(all_acked)
        assert info and info.num_pending == 0, info
        again, running = None, again
        await running.stop()
        assert "draining connection timed out" not in logs.text
    finally:
        for run in (first, again):
            if run is not None:
                run.task.cancel()

        async def delete(js):
            await js.delete_stream("EDA_E2E")
        await _jsm(url, delete)


async def test_jetstream_consumer_settings(nats_server, logs):
    url = nats_server.url
    base = {"servers": url, "stream": "EDA_CFG", "durable": "cfg"}
    with pytest.raises(ValueError, match="option 'stream': there is no stream 'EDA_CFG'"):
        await Running(base).task

    async def setup(js):
        await js.add_stream(name="EDA_CFG", subjects=["e2e.eda.cfg.>"])
        await js.publish("e2e.eda.cfg.a", b"old")
        await js.publish("e2e.eda.cfg.b", b"skipped by the filter")

    async def consumer(js):
        return await js.consumer_info("EDA_CFG", "cfg")

    await _jsm(url, setup)
    try:
        run = Running(dict(base, filter_subject="e2e.eda.cfg.a", ack_wait=5))
        assert (await run.get())["data"] == "old"
        await run.nothing_more(1)
        await run.stop()
        info = await _jsm(url, consumer)
        assert (info.config.filter_subject, info.config.ack_wait, info.config.deliver_policy) == ("e2e.eda.cfg.a", 5, "all")
        # an existing consumer is updated where the server allows it, and refused clearly where not
        run = Running(dict(base, filter_subject="e2e.eda.cfg.a", ack_wait=7))
        await wait_log(logs, "updated ack_wait of consumer cfg")
        await run.stop()
        assert (await _jsm(url, consumer)).config.ack_wait == 7
        with pytest.raises(ValueError, match="cannot change deliver_policy of the existing consumer 'cfg'"):
            await Running(dict(base, deliver_policy="new")).task
    finally:
        async def delete(js):
            await js.delete_stream("EDA_CFG")
        await _jsm(url, delete)


@pytest.mark.parametrize("args, option", [
    ({}, "'subjects'"),
    ({"subject": "a.b"}, "unknown option 'subject' (did you mean 'subjects'?)"),
    ({"subjects": []}, "'subjects'"),
    ({"subjects": ["a..b"]}, "option 'subjects'"),
    ({"subjects": "a.>.b"}, "option 'subjects'"),
    ({"subjects": "a", "queue_group": "has space"}, "option 'queue_group'"),
    ({"subjects": "a", "ack_wait": 5}, "option 'ack_wait' is for JetStream"),
    ({"subjects": "a", "stream": "S", "durable": "d"}, "option 'subjects' is for core NATS"),
    ({"stream": "S"}, "option 'durable' is required"),
    ({"durable": "d"}, "option 'stream' is required"),
    ({"stream": "S", "durable": "a.b"}, "option 'durable'"),
    ({"stream": "S", "durable": "d", "queue_group": "q"}, "option 'queue_group' is for core NATS"),
    ({"stream": "S", "durable": "d", "deliver_policy": "sometimes"}, "option 'deliver_policy' must be one of"),
    ({"stream": "S", "durable": "d", "ack_wait": -1}, "option 'ack_wait'"),
    ({"stream": "S", "durable": "d", "ack_wait": "soon"}, "option 'ack_wait'"),
    ({"stream": "S", "durable": "d", "max_deliver": 0}, "option 'max_deliver'"),
    ({"subjects": "a", "connect_timeout": 0}, "option 'connect_timeout'"),
    ({"subjects": "a", "servers": "127.0.0.1:4222"}, "option 'servers'"),
    ({"subjects": "a", "servers": {"url": "x"}}, "option 'servers'"),
    ({"subjects": "a", "password": "Pw-not-shown-1"}, "option 'password' is set but 'user' is not"),
    ({"subjects": "a", "user": "u", "password": "Pw-not-shown-1", "token": "t"}, "choose one NATS authentication method"),
    ({"subjects": "a", "creds": "/nonexistent/eda.creds"}, "option 'creds': file /nonexistent/eda.creds does not exist"),
    ({"subjects": "a", "cert": "/etc/hostname"}, "options 'cert' and 'key'"),
    ({"subjects": "a", "inbox_prefix": "_INBOX.*"}, "option 'inbox_prefix'"),
])
async def test_bad_arguments_fail_before_connecting(args, option, logs):
    # nothing listens on this port: an attempt to connect would end in a connection error instead
    servers = "nats://127.0.0.1:%d" % devenv.free_port()
    started = time.monotonic()
    with pytest.raises(ValueError) as info:
        await PLUGIN["main"](asyncio.Queue(), dict({"servers": servers}, **args))
    assert isinstance(info.value, PLUGIN["SourceArgumentError"])
    assert option in str(info.value), str(info.value)
    assert "Pw-not-shown-1" not in str(info.value) + logs.text
    assert time.monotonic() - started < 1 and "connecting to NATS" not in logs.text


async def test_user_password_auth(tmp_path, logs, monkeypatch):
    config, sides = natsauth.user_password(tmp_path)
    server = devenv.NatsServer(extra_config=config)
    user, password = sides["client"]["user"], sides["client"]["password"]
    try:
        run = Running({"servers": server.url, "subjects": "e2e.eda.auth", "user": user, "password": password})
        await wait_log(logs, "listening on e2e.eda.auth")
        nc = await nats.connect(server.url, user=user, password=password)
        await nc.publish("e2e.eda.auth", b'{"ok": true}')
        await nc.close()
        assert (await run.get())["data"] == {"ok": True}
        await run.stop()
        assert "auth=user ctl" in logs.text

        # the password may come from the environment, as for the modules and the connection plugin
        monkeypatch.setenv("NATS_PASSWORD", password)
        run = Running({"servers": server.url, "subjects": "e2e.eda.auth", "user": user})
        await wait_log(logs, "listening on e2e.eda.auth", count=2)
        await run.stop()
        monkeypatch.delenv("NATS_PASSWORD")

        wrong = "Wrong-Secret-9"
        started = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            await PLUGIN["main"](asyncio.Queue(), {"servers": server.url, "subjects": "e2e.eda.auth", "user": user,
                                                   "password": wrong, "connect_timeout": 3})
        message = str(info.value)
        assert "cannot connect to NATS" in message and "authorization" in message.lower(), message
        assert "auth=user ctl" in message and time.monotonic() - started < 10
        for secret in (wrong, password):
            assert secret not in message and secret not in logs.text
        # without credentials the server refuses too, and says so
        with pytest.raises(ConnectionError, match="(?i)authorization"):
            await PLUGIN["main"](asyncio.Queue(), {"servers": server.url, "subjects": "e2e.eda.auth"})
    finally:
        server.stop()


@pytest.mark.parametrize("method", sorted(natsauth.METHODS))
async def test_every_auth_method(method, tmp_path, logs):
    config, sides = natsauth.METHODS[method](tmp_path)
    server = devenv.NatsServer(extra_config=config)
    url = server.url.replace("nats://", "tls://") if method in ("tls", "mtls") else server.url
    client = dict(sides["client"])
    try:
        run = Running(dict(client, servers=url, subjects="e2e.eda.%s" % method))
        await wait_log(logs, "listening on e2e.eda.%s" % method)
        settings = PLUGIN["Settings"]({"servers": url, "subjects": "x", **client})
        nc = await PLUGIN["WIRE"].connect(settings.options, "e2e publisher", 5.0, PLUGIN["WIRE"].SERVICE)
        await nc.publish("e2e.eda.%s" % method, b'{"method": "%s"}' % method.encode())
        await nc.close()
        assert (await run.get())["data"] == {"method": method}
        await run.stop()
        if sides["secret"]:
            assert sides["secret"] not in logs.text
    finally:
        server.stop()


async def test_reconnects_after_a_server_restart(logs):
    server = devenv.NatsServer()
    port = server.port
    run = Running({"servers": server.url, "subjects": "e2e.eda.restart"})
    try:
        await wait_log(logs, "listening on e2e.eda.restart")

        async def publish(url, n):
            nc = await nats.connect(url)
            try:
                await nc.publish("e2e.eda.restart", json.dumps({"n": n}).encode())
                await nc.flush()
            finally:
                await nc.close()

        await publish(server.url, 1)
        assert (await run.get())["data"] == {"n": 1}
        server.stop()
        await wait_log(logs, "disconnected from NATS; reconnecting")
        await asyncio.sleep(3)  # longer than the first connection's few attempts
        server = devenv.NatsServer(port=port)
        await wait_log(logs, "reconnected to NATS", timeout=20)
        await publish(server.url, 2)  # the subscription was restored: core NATS keeps no message for later
        assert (await run.get())["data"] == {"n": 2}
    finally:
        await run.stop()
        server.stop()


async def test_jetstream_source_outlives_a_server_that_lost_its_stream(logs):
    server = devenv.NatsServer()
    port = server.port

    async def setup(js):
        await js.add_stream(name="EDA_RESTART", subjects=["e2e.eda.jsr.>"])

    async def publish(js, n):
        await js.publish("e2e.eda.jsr.x", json.dumps({"n": n}).encode())

    await _jsm(server.url, setup)
    run = Running({"servers": server.url, "stream": "EDA_RESTART", "durable": "survivor"})
    try:
        await _jsm(server.url, lambda js: publish(js, 1))
        assert (await run.get())["data"] == {"n": 1}
        server.stop()  # and its store with it: the new server has neither the stream nor the consumer
        server = devenv.NatsServer(port=port)
        await wait_log(logs, "reconnected to NATS", timeout=20)
        await wait_log(logs, "there is no stream 'EDA_RESTART'", timeout=20)  # retried, not fatal, once running
        await _jsm(server.url, setup)
        await _jsm(server.url, lambda js: publish(js, 2))
        event = await run.get(timeout=30)
        assert (event["data"], event["meta"]["sequence"]) == ({"n": 2}, 1)
        assert "created durable pull consumer survivor" in logs.text.split("there is no stream")[-1]
    finally:
        await run.stop()
        server.stop()


def test_run_as_a_script_prints_events(nats_server, tmp_path):
    """``python nats.py ARGS`` (no collection loader, this file's folder first on sys.path) prints the events."""
    out = tmp_path / "out.txt"
    args = json.dumps({"servers": nats_server.url, "subjects": "e2e.eda.script"})
    with open(out, "wb") as handle:
        proc = subprocess.Popen([devenv.tool("python"), SOURCE, args], stdout=handle, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        async def publish_until_printed():
            nc = await nats.connect(nats_server.url)
            try:
                for _attempt in range(100):
                    await nc.publish("e2e.eda.script", b'{"from": "script"}')
                    await asyncio.sleep(0.2)
                    if '"from": "script"' in out.read_text():
                        return True
            finally:
                await nc.close()
            return False

        assert asyncio.run(publish_until_printed()), out.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, out.read_text()
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    assert lines[0] == {"subject": "e2e.eda.script", "data": {"from": "script"}, "headers": {}, "reply": None}
    assert "NATS connection closed" in out.read_text()
    # the collection's connection-option code was loaded from the files next to it, not via ansible_collections
    probe = subprocess.run([devenv.tool("python"), "-c", "import runpy; print(runpy.run_path(%r)['WIRE'].__name__)" % SOURCE],
                           capture_output=True, text=True, check=True, cwd=str(tmp_path))
    assert probe.stdout.strip() == "_natsops_fleet_eda_wire.connect"


# ------------------------------------------------------------------ a real ansible-rulebook


def _rulebook_files(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": devenv.tool("python")}}}}))
    return str(inventory)


@NEEDS_RULEBOOK
def test_ansible_rulebook_runs_a_playbook_for_a_jetstream_event(nats_server, tmp_path):
    url = nats_server.url
    out = tmp_path / "deployed.txt"
    playbook = tmp_path / "deploy.yml"
    playbook.write_text(json.dumps([{"name": "deploy", "hosts": "all", "gather_facts": False, "tasks": [{
        "name": "record the event", "ansible.builtin.copy": {
            "dest": str(out),
            "content": "{{ ansible_eda.event.data.release }} #{{ ansible_eda.event.meta.sequence }} "
                       "{{ ansible_eda.event.headers.Source }} {{ ansible_eda.event.subject }}\n"}}]}]))
    rulebook = tmp_path / "rulebook.yml"
    rulebook.write_text(json.dumps([{
        "name": "natsops e2e", "hosts": "all",
        "sources": [{"name": "deploy requests", "natsops.fleet.nats": {
            "servers": url, "stream": "EDA_RB", "durable": "rulebook", "filter_subject": "e2e.eda.rb.>"}}],
        "rules": [{"name": "deploy requested", "condition": 'event.data.kind == "deploy"', "actions": [
            {"print_event": {"pretty": True}},
            {"run_playbook": {"name": str(playbook)}},
            {"shutdown": {"message": "e2e done", "delay": 0}}]}]}]))

    async def setup(js):
        await js.add_stream(name="EDA_RB", subjects=["e2e.eda.rb.>"])
        await js.publish("e2e.eda.rb.ignored", b'{"kind": "noise"}')
        await js.publish("e2e.eda.rb.deploy", json.dumps({"kind": "deploy", "release": "1.4.2"}).encode(),
                         headers={"Source": "e2e"})

    async def consumer(js):
        return await js.consumer_info("EDA_RB", "rulebook")

    asyncio.run(_jsm(url, setup))
    try:
        result = subprocess.run([RULEBOOK, "-r", str(rulebook), "-i", _rulebook_files(tmp_path), "-v"],
                                env=devenv.ansible_env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        assert out.read_text() == "1.4.2 #2 e2e e2e.eda.rb.deploy\n", output[-6000:]
        assert "'release': '1.4.2'" in output and "'type': 'natsops.fleet.nats'" in output
        assert "NATS connection closed" in output  # the shutdown cancelled the source and it closed cleanly
        info = asyncio.run(_jsm(url, consumer))
        assert info.ack_floor.stream_seq == 2 and info.num_ack_pending == 0, info
    finally:
        async def delete(js):
            await js.delete_stream("EDA_RB")
        asyncio.run(_jsm(url, delete))


@NEEDS_RULEBOOK
def test_the_example_rulebook(nats_server, tmp_path):
    """extensions/eda/rulebooks/nats_alerts.yml, by its collection name, prints a critical alert."""
    variables = tmp_path / "vars.yml"
    variables.write_text(json.dumps({"nats_servers": nats_server.url}))
    out = tmp_path / "rulebook.out"
    with open(out, "wb") as handle:
        proc = subprocess.Popen([RULEBOOK, "-r", "natsops.fleet.nats_alerts", "-i", _rulebook_files(tmp_path), "--vars",
                                 str(variables), "-v"], env=devenv.ansible_env(), cwd=str(tmp_path), stdout=handle,
                                stderr=subprocess.STDOUT)
    try:
        async def publish_until_handled():
            nc = await nats.connect(nats_server.url)
            try:
                for _attempt in range(300):
                    if proc.poll() is not None:
                        return False
                    if "listening on fleet.alerts.>" in out.read_text():
                        await nc.publish("fleet.alerts.disk", b'{"severity": "critical", "host": "db1"}')
                        await nc.publish("fleet.alerts.cpu", b"load 12")
                        await asyncio.sleep(0.5)
                        text = out.read_text()
                        if "'host': 'db1'" in text and "alert on fleet.alerts.cpu" in text:
                            return True
                    await asyncio.sleep(0.3)
            finally:
                await nc.close()
            return False

        assert asyncio.run(publish_until_handled()), out.read_text()[-6000:]
    finally:
        devenv.stop_process(proc)
    assert "'severity': 'critical'" in out.read_text()
