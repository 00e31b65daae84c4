# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): CPU per module run, cold against warm (natsops_executor.warm), on real payloads made by
the installed ansible-core, run through LocalHost and jobs.run_command as the executor runs them (no NATS, no
Ansible controller). Interleaved: each round runs a module cold, then warm.

Cold: CPU of the reaped children (/bin/sh and python3) plus this process's. Warm: CPU of the warm parent's
reaped children (the forked runs) and of the parent itself, from /proc, plus this process's (the executor side:
recognition, the payload check, pipes).

    .venv/bin/python bench/warm_cpu.py [--rounds 10]

Run it without PYTHONUNBUFFERED in the environment, as a systemd service would (see docs/performance.md: with
it, a cold interpreter reads its program from stdin one byte at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time
from typing import Dict, List

from _paths import RESULTS as _RESULTS
import ansiballz_payloads  # after _paths, which puts tests/executor on sys.path
from natsops_executor import jobs, warm
from natsops_executor._wire.messages import ExecRequest
from natsops_executor.hosts.local import LocalHost

RESULTS = pathlib.Path(_RESULTS) / "warm_cpu.md"
MODULES = ["command", "stat", "file", "copy", "ping", "setup"]
TICK = os.sysconf("SC_CLK_TCK")


class _Discard:
    async def send(self, *_args: object, **_kwargs: object) -> None:
        pass


def _proc_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of a process, in seconds."""
    with open("/proc/%d/stat" % pid, "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICK


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _run(host: LocalHost, source: bytes) -> None:
    req = ExecRequest.new("_INBOX.bench", command="/bin/sh -c '%s && sleep 0'" % ansiballz_payloads.PYTHON)
    result = await jobs.run_command(host, req, source, _Discard(), 64 * 1024)  # type: ignore[arg-type]
    if result.rc != 0:
        raise RuntimeError("rc %d" % result.rc)


async def measure(payloads: Dict[str, bytes], rounds: int) -> Dict[str, Dict[str, List[float]]]:
    pool = warm.WarmPool()
    hot = LocalHost(warm=pool)
    cold = LocalHost()
    try:
        await _run(hot, payloads["ping"])  # starts the warm parent
        while not all(p.ready.done() for p in pool.parents.values()):
            await asyncio.sleep(0.05)
        parent = next(iter(pool.parents.values()))
        if parent.proc is None or parent.ready.exception() is not None:
            raise RuntimeError("the warm parent did not start")
        pid = parent.proc.pid
        figures: Dict[str, Dict[str, List[float]]] = {}
        for name in MODULES:
            runs = figures[name] = {"cold": [], "warm": [], "executor": []}
            for _round in range(rounds):
                before, own = _children_cpu(), time.process_time()
                await _run(cold, payloads[name])
                runs["cold"].append(_children_cpu() - before + time.process_time() - own)
                hits, before, own = pool.hits, _proc_cpu(pid), time.process_time()
                await _run(hot, payloads[name])
                side = time.process_time() - own
                if pool.hits != hits + 1:
                    raise RuntimeError("%s did not run warm: %s" % (name, pool.stats()))
                runs["warm"].append(_proc_cpu(pid) - before + side)
                runs["executor"].append(side)
        return figures
    finally:
        await pool.close()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    payloads = ansiballz_payloads.capture(pathlib.Path(tempfile.mkdtemp(prefix="natsops-warm-cpu-")))
    figures = asyncio.run(measure(payloads, args.rounds))
    lines = ["# Warm module runs: CPU per module run (bench/warm_cpu.py)", "",
             "| module | cold CPU (ms) | warm CPU (ms) | of which executor side (ms) |", "|---|---|---|---|"]
    for name, runs in figures.items():
        lines.append("| %s | %.1f | %.1f | %.1f |" % (
            name, *(statistics.median(runs[k]) * 1000 for k in ("cold", "warm", "executor"))))
    lines += ["", "Medians of %d interleaved rounds, real payloads of the installed ansible-core, through LocalHost and "
                  "jobs.run_command (no NATS, no controller); PYTHONUNBUFFERED %s. Measured %s." % (
                      args.rounds, "set (cold runs are slower)" if os.environ.get("PYTHONUNBUFFERED") else "not set",
                      time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
