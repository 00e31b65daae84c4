# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The README's and every resource module's EXAMPLES, as written, in four steps against one fresh nats-server with
JetStream (issue 19): (1) --check reports changed and creates nothing, (2) a run reports changed and the server has
what the examples say, (3) a second run and (4) --check --diff change nothing.

The tasks are read from README.md and from each module's EXAMPLES at test time, so docs and test cannot drift. Only
what a single loopback server needs is adapted (see ``_adapt``): its URL instead of the examples' servers and
credentials, one replica, files under the test's directory, server_info through its HTTP monitoring port (the test
has no system-account user). Left out: publish (a message has no state to be
idempotent about; its example is in tests/e2e/test_messaging.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import time

import pytest
import yaml

import nats
import nats.js.errors

import devenv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESOURCE_MODULES = ("stream", "consumer", "kv", "object")
LEFT_OUT = ("natsops.fleet.publish",)  # a message, not a resource
# what the examples expect to exist that no example creates: the push consumer's stream
PREREQUISITES = [{"name": "the stream of the consumer EXAMPLES' push consumer",
                  "natsops.fleet.stream": {"name": "EVENTS", "subjects": ["events.>"]}}]


def _examples(module):
    """The tasks of a module's EXAMPLES, as ansible-doc shows them."""
    path = os.path.join(ROOT, "plugins", "modules", "%s.py" % module)
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    text = re.search(r'^EXAMPLES = r"""(.*?)^"""', source, re.S | re.M).group(1)
    return yaml.safe_load(text)


def _readme_play():
    """The README's play that manages the NATS side (the yaml block with module_defaults for the action group)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        blocks = re.findall(r"```yaml\n(.*?)```", handle.read(), re.S)
    plays = [yaml.safe_load(b) for b in blocks if "group/natsops.fleet.nats" in b]
    assert len(plays) == 1, "README.md should have one play with module_defaults for group/natsops.fleet.nats"
    return plays[0][0]


def _module_of(task):
    return next((k for k in task if k.startswith("natsops.fleet.") or k.startswith("ansible.builtin.")), None)


def _adapt(task, files, monitor):
    """The task as one loopback server runs it: no servers or credentials of the example (module_defaults and
    NATS_URL give the test server's), replicas 1, expected_servers 1 read from ``monitor``, src and dest under
    ``files``."""
    task = dict(task)
    module = _module_of(task)
    args = dict(task[module]) if isinstance(task[module], dict) else task[module]
    if module.startswith("natsops.fleet."):
        for option in ("servers", "creds"):
            args.pop(option, None)
        if args.get("replicas"):
            args["replicas"] = 1
        if args.get("expected_servers"):
            args.update(expected_servers=1, monitor_url=monitor)
        for option in ("src", "dest"):
            if args.get(option):
                args[option] = os.path.join(files, args[option].lstrip("/"))
        if args.get("src"):
            os.makedirs(os.path.dirname(args["src"]), exist_ok=True)
            with open(args["src"], "wb") as handle:
                handle.write(("the contents of %s\n" % os.path.basename(args["src"])).encode() * 1000)
        if args.get("dest"):
            os.makedirs(os.path.dirname(args["dest"]), exist_ok=True)
    else:  # a lookup reads the server as it is: in check mode on a fresh server there is nothing to read yet
        task["when"] = "not ansible_check_mode"
    task[module] = args
    return task


@pytest.fixture(scope="module")
def fresh_server():
    port = devenv.free_port()
    # room for the examples' limits (a stream of max_bytes 10G), reserved, not written
    server = devenv.NatsServer(extra_config="http: 127.0.0.1:%d\n" % port, max_file_store="16GB")
    server.monitor = "http://127.0.0.1:%d" % port
    yield server
    server.stop()


@pytest.fixture(scope="module")
def docs_play(fresh_server, tmp_path_factory):
    """Writes the playbook of the README's and the EXAMPLES' tasks; returns a function that runs it once
    (check, diff) and returns (registered results by task label, recap changed count, output)."""
    work = tmp_path_factory.mktemp("docs-examples")
    files = str(work / "files")
    labelled = [("prerequisite: %s" % t["name"], t) for t in PREREQUISITES]
    readme = _readme_play()
    labelled += [("README: %s" % _module_of(t), t) for t in readme["tasks"] if _module_of(t) not in LEFT_OUT]
    for module in RESOURCE_MODULES:
        labelled += [("%s EXAMPLES: %s" % (module, t["name"]), t) for t in _examples(module)]
    tasks = []
    for number, (label, task) in enumerate(labelled):
        task = _adapt(task, files, fresh_server.monitor)
        task["register"] = "task_%d" % number
        tasks.append(task)
    results = str(work / "results.json")
    tasks.append({"name": "keep the results", "check_mode": False, "ansible.builtin.copy": {
        "dest": results, "content": "{{ {%s} | to_json }}" % ", ".join("'%d': task_%d" % (n, n) for n in range(len(labelled)))}})
    play = work / "docs.yml"
    play.write_text(json.dumps([{
        "name": "README and EXAMPLES", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": devenv.tool("python")},
        "module_defaults": {"group/natsops.fleet.nats": {"servers": fresh_server.url}}, "tasks": tasks}], ensure_ascii=False))

    def run(check=False, diff=False):
        cmd = [devenv.tool("ansible-playbook"), "-i", "localhost,", str(play)] + (["--check"] if check else []) + (
            ["--diff"] if diff else [])
        started = time.monotonic()
        done = subprocess.run(cmd, env=devenv.ansible_env({"NATS_URL": fresh_server.url, "ANSIBLE_PIPELINING": "1"}),
                              cwd=str(work), capture_output=True, text=True, timeout=300, check=False)
        print("ansible-playbook%s: %.1f s" % (" ".join(cmd[4:]), time.monotonic() - started))
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-12000:]
        with open(results, encoding="utf-8") as handle:
            registered = json.load(handle)
        by_label = {"%d %s" % (n, label): registered[str(n)] for n, (label, task) in enumerate(labelled)}
        recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", output)
        return by_label, int(recap.group(1)) - 1, output  # minus the copy of the results

    run.files = files
    return run


async def _server_state(url):
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        streams = {s.config.name: s.config for s in await js.streams_info()}
        consumers = {}
        for stream in streams:
            for info in await js.consumers_info(stream):
                consumers[(stream, info.name)] = info.config
        keys = {}
        for bucket, key in (("config", "rollout.batch_size"), ("config", "maintenance")):
            try:
                keys[(bucket, key)] = (await (await js.key_value(bucket)).get(key)).value.decode()
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
                pass
        objects = {}
        for bucket in ("artifacts", "natsops_artifacts"):
            try:
                store = await js.object_store(bucket)
                objects.update({(bucket, info.name): info.size for info in await store.list()})
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                pass
        return streams, consumers, keys, objects
    finally:
        await nc.close()


def test_readme_and_examples_in_four_steps(docs_play, fresh_server):
    url = fresh_server.url

    # (1) check mode on a fresh server: every task that makes something reports it, with a diff that shows it, nothing
    # is created, no failure (the kv key, the consumers and the objects go into a bucket or stream an earlier task
    # would create)
    results, changed, output = docs_play(check=True, diff=True)
    makes = [label for label, result in results.items() if "Gone" not in label and "Remove" not in label
             and "Forget" not in label and "server_info" not in label and "debug" not in label]
    assert [label for label in makes if not results[label].get("changed")] == [], results
    assert changed == len(makes)
    assert [label for label in makes if not results[label].get("diff") or results[label]["diff"]["before"] == results[label][
        "diff"]["after"]] == [], results
    assert "key-value bucket config does not exist (yet)" in output and "stream JOBS does not exist (yet)" in output
    assert asyncio.run(_server_state(url)) == ({}, {}, {}, {})

    # (2) a real run: changed, and the server holds what the docs say; the kv EXAMPLES' bucket and setting are the
    # README's, made by an earlier task of this run
    results, changed, output = docs_play()
    repeats = [label for label in makes if "kv EXAMPLES: A bucket for settings" in label or "kv EXAMPLES: A setting the" in label]
    assert len(repeats) == 2 and not any(results[label]["changed"] for label in repeats)
    assert [label for label in makes if label not in repeats and not results[label].get("changed")] == [], results
    assert "has no effect with backoff" not in output  # the docs' consumers do not contradict themselves
    streams, consumers, keys, objects = asyncio.run(_server_state(url))
    assert streams["JOBS"].subjects == ["jobs.>"] and streams["JOBS"].max_age == 7 * 86400
    assert streams["natsops_probes"].max_msgs_per_subject == 1 and streams["ORDERS"].duplicate_window == 120
    assert streams["KV_config"].max_msgs_per_subject == 5 and streams["KV_natsops_registry"].max_age == 300
    assert "OLD" not in streams
    workers = consumers[("JOBS", "workers")]
    assert workers.backoff == [10, 60, 300] and workers.ack_wait == 10 and workers.max_deliver == 4
    assert workers.filter_subject == "jobs.probe.>" and workers.max_ack_pending == 100
    assert consumers[("EVENTS", "audit")].deliver_group == "auditors"
    assert keys == {("config", "rollout.batch_size"): "20",
                    ("config", "maintenance"): '{"enabled":true,"until":"2026-12-01T06:00:00Z"}'}
    assert set(objects) == {("artifacts", "probe.tar.gz"), ("natsops_artifacts", "natsops-probe-0.1.0-linux-amd64.tar.gz")}
    fetched = os.path.join(docs_play.files, "var/cache/natsops/probe.tar.gz")
    uploaded = os.path.join(docs_play.files, "dist/natsops-probe-0.1.0-linux-amd64.tar.gz")
    with open(fetched, "rb") as got, open(uploaded, "rb") as sent:
        assert hashlib.sha256(got.read()).digest() == hashlib.sha256(sent.read()).digest()
    assert [r["msg"] for label, r in results.items() if label.endswith("README: ansible.builtin.debug")] == ["20"]

    # (3) again: nothing changes; (4) check mode with diff: nothing would change, every diff shows the same before and after
    for check in (False, True):
        results, changed, output = docs_play(check=check, diff=check)
        assert changed == 0, [label for label, result in results.items() if result.get("changed")]
        assert not [label for label, result in results.items() if result.get("failed")]
    assert [label for label, result in results.items() if result.get("diff") and result["diff"]["before"] != result["diff"]["after"]] == []
