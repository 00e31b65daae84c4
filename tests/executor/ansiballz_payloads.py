# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real pipelined AnsiballZ payloads, made by the installed ansible-core (for tests/executor/test_warm.py and
bench/warm_cpu.py): a playbook runs each module once through ``connection: local`` with pipelining, with an
interpreter that records its stdin and then runs it. Nothing large is stored in the repository."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any, Dict, Optional

from natsops_executor import warm

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
ANSIBLE_BIN = pathlib.Path(sys.executable).parent

BEHAVE_MODULE = '''#!/usr/bin/python
from __future__ import annotations
import atexit, os, signal, sys, threading, time
from ansible.module_utils.basic import AnsibleModule

def main():
    module = AnsibleModule(argument_spec=dict(action=dict(type="str", required=True), marker=dict(type="str")))
    action = module.params["action"]
    if action == "fail":
        module.fail_json(msg="it failed", rc=7)
    if action == "raise":
        raise ValueError("the module raised")
    if action == "exit3":
        sys.stderr.write("exiting with 3\\n")
        sys.exit(3)
    if action == "signal":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "sleep":
        while module.params["marker"] and os.path.exists(module.params["marker"]):
            time.sleep(0.05)
    if action == "atexit":
        atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
    if action == "thread":
        def later():
            time.sleep(0.3)
            with open(module.params["marker"], "w") as handle:
                handle.write("thread ran")
        threading.Thread(target=later).start()
    module.exit_json(changed=False, action=action, pid_is_pgid=os.getpgid(0) == os.getpid(),
                     argv=sys.argv, cwd=os.getcwd(), umask=os.umask(0o022), path0=sys.path[0] if sys.path else None,
                     stdin_at_eof=sys.stdin.read() == "", file=__file__, code_file=main.__code__.co_filename)

if __name__ == "__main__":
    main()
'''

_RECORDER = '''#!/bin/sh
# records the pipelined module source it is given, then runs it
n=$(ls "{out}" | wc -l)
cat > "{out}/$n.py"
exec {python} < "{out}/$n.py"
'''


def _playbook(work: pathlib.Path) -> str:
    copy_src = work / "copy-src"
    copy_src.write_text("copied\n")
    (work / "stat-me").write_text("stat\n")
    tasks = [
        {"ping": {}},
        {"command": "/bin/true"},
        {"stat": {"path": str(work / "stat-me"), "get_checksum": True}},
        {"file": {"path": str(work / "dir"), "state": "directory", "mode": "0755"}},
        {"copy": {"src": str(copy_src), "dest": str(work / "copy-dest"), "remote_src": True}},
        {"setup": {"gather_subset": ["min"]}},
    ] + [{"natsops_test_behave": {"action": a, "marker": str(work / ("marker-" + a))}}
         for a in ("fail", "raise", "exit3", "signal", "sleep", "atexit", "thread", "ok")]
    play = [{"hosts": "all", "gather_facts": False,
             "tasks": [dict(t, ignore_errors=True) for t in tasks]}]
    path = work / "capture.yml"
    path.write_text(json.dumps(play))
    return str(path)


def tail_args(source: bytes) -> Dict[str, Any]:
    text = source.decode("utf-8")
    args = warm._parse_tail(text[text.index(warm._TAIL):])  # pylint: disable=protected-access
    if not isinstance(args, dict):
        raise RuntimeError("not a recognisable _ansiballz_main call: %s" % args.detail)
    return args


def capture(work: pathlib.Path) -> Dict[str, bytes]:
    """{name: pipelined stdin} for each module run of the capture playbook (shebang = PYTHON), made in ``work``;
    ``_work`` is ``work`` itself (the test module's marker files live there)."""
    out = work / "captured"
    out.mkdir()
    (work / "library").mkdir()
    (work / "library" / "natsops_test_behave.py").write_text(BEHAVE_MODULE)
    recorder = work / "recorder.sh"
    recorder.write_text(_RECORDER.format(out=out, python=PYTHON))
    recorder.chmod(0o755)
    (work / "ansible.cfg").write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_PIPELINING="1", ANSIBLE_LIBRARY=str(work / "library"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_CONFIG=str(work / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    result = subprocess.run(
        [str(ANSIBLE_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % recorder, _playbook(work)],
        env=env, cwd=str(work), capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError("the capture playbook failed:\n" + result.stdout[-5000:] + result.stderr[-3000:])
    found: Dict[str, bytes] = {}
    for path in sorted(out.iterdir(), key=lambda p: int(p.stem)):
        source = path.read_bytes()
        first, _newline, rest = source.partition(b"\n")
        if first != b"#!" + str(recorder).encode():
            raise RuntimeError("%s does not start with the recorder's shebang" % path)
        source = b"#!" + PYTHON.encode() + b"\n" + rest
        args = tail_args(source)
        name = args["ansible_module"].rpartition(".")[2]  # ping, ansible.legacy.command, ...
        if name == "natsops_test_behave":
            name = "behave-" + json.loads(args["params"])["ANSIBLE_MODULE_ARGS"]["action"]
        found.setdefault(name, source)
    found["_work"] = str(work).encode()
    return found


class Output:
    """Stands in for a StreamSender: keeps what a job streams."""

    def __init__(self) -> None:
        self.streams: Dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    async def send(self, kind: str, document: Any = None, attachment: bytes = b"", stream: Optional[str] = None) -> None:
        del document
        if kind == "data" and stream in self.streams:
            self.streams[stream].extend(attachment)


# fields that differ between any two runs of the same module, cold or warm (clock, counters of the host), and
# pid_is_pgid: a cold run's process group leader is the shell, a warm run's is the module's own process; and what
# pytest changes in this process's environment between test phases (a warm parent started in a fixture's setup
# keeps the environment of then), which facts report under ansible_env
_VOLATILE = {"start", "end", "delta", "ansible_date_time", "atime", "ansible_uptime_seconds", "pid_is_pgid",
             "PYTEST_CURRENT_TEST", "COLUMNS", "LINES"}
# the wrapper's temporary directory has a random name in every run
_PAYLOAD_DIR = re.compile(r"/ansible_([A-Za-z0-9_.]+)_payload_[A-Za-z0-9_]+/")


def result(stdout: bytes) -> Any:
    """A module's JSON result without what differs between any two runs (or the bytes, if it is not JSON)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, str):
            return _PAYLOAD_DIR.sub(r"/ansible_\1_payload_X/", value)
        return value
    try:
        return strip(json.loads(stdout))
    except ValueError:
        return stdout


async def group_gone(pgid: int, seconds: float = 2.5) -> bool:
    """Whether process group ``pgid`` is gone within ``seconds`` (a timed-out run's group must be killed)."""
    for _attempt in range(int(seconds / 0.05)):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False
