# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): the CPU a task costs in ansible-core's forked worker process, per connection plugin.

Each scenario runs the real ``ansible-playbook`` in this process (``ansible.cli.playbook``: collection loader,
plugin loaders, inventory, play context, strategy and the forked ``WorkerProcess`` exactly as a real run), with
one change for measuring: the worker's ``TaskExecutor`` is a subclass that records, in the worker, the CPU time
of the process since the fork (``resource.getrusage(RUSAGE_SELF)``; the module's own processes are children and
not counted), and the CPU of loading the connection plugin (``_get_connection``: ``connection_loader.get``
and the become plugin) and of handing it its options (``_set_connection_options``: ``set_options`` with the
task keys and variables). The workload is ``command: /bin/true`` per task.

Scenarios (interleaved rounds; the median per task over every round):
  nats    natsops.fleet.nats to a local executor (tools/devenv.py: nats-server + natsops-executor --warm),
          through the control process (kept across rounds, as across tasks of a playbook)
  local   connection: local
  ssh     ansible.builtin.ssh to a closed local port: load and options are comparable, the exec (a failed
          connect, the task unreachable and ignored) is not

  nats-base  with ``--baseline DIR``: nats with the plugin of another checkout (``git worktree add DIR REV``, then
          link DIR/.build/collections/ansible_collections/natsops/fleet to DIR), for before/after in one run

    .venv/bin/python bench/worker_cost.py [--rounds 3] [--tasks 30] [--profile DIR] [--baseline DIR]

The workers inherit this environment: with ``PYTHONDONTWRITEBYTECODE=1`` (or a read-only collection) Python keeps
no ``__pycache__`` for the plugin file itself, which ansible-core loads with Python's own source loader.

``--profile DIR`` also runs one nats round with cProfile in every worker and prints the functions with the
most cumulative time inside ``TaskExecutor.run`` (summed over the workers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import devenv  # noqa: E402  pylint: disable=wrong-import-position

PHASES = ("worker", "run", "load", "options")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_playbook_here(output: str, profile_dir: str, argv: List[str]) -> int:
    """ansible-playbook ``argv`` in this process, its workers recording their CPU into ``output`` (JSON lines)."""
    from ansible.executor import task_executor  # pylint: disable=import-outside-toplevel
    from ansible.executor.process import worker  # pylint: disable=import-outside-toplevel

    class TimedTaskExecutor(task_executor.TaskExecutor):
        """TaskExecutor recording its worker's CPU (measuring only: the work is the base class's)."""

        spent: Dict[str, float] = {}

        def _timed(self, phase: str, func: Any, *args: Any) -> Any:
            started = time.process_time()
            try:
                return func(*args)
            finally:
                self.spent[phase] = self.spent.get(phase, 0.0) + time.process_time() - started

        def _get_connection(self, cvars: Any, templar: Any, current_connection: Any) -> Any:
            return self._timed("load", super()._get_connection, cvars, templar, current_connection)

        def _set_connection_options(self, variables: Any, templar: Any) -> Any:
            return self._timed("options", super()._set_connection_options, variables, templar)

        def run(self) -> Any:
            profiler = None
            if profile_dir:
                import cProfile  # pylint: disable=import-outside-toplevel
                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
            before = set(sys.modules)
            started = time.process_time()
            result = super().run()
            self.spent["run"] = time.process_time() - started
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(os.path.join(profile_dir, "%d.prof" % os.getpid()))
            self.spent["worker"] = _cpu()  # since the fork: a child's usage starts at zero
            self.spent["failed"] = bool(result.get("failed"))
            self.spent["unreachable"] = bool(result.get("unreachable"))
            self.spent["imported"] = sorted(set(sys.modules) - before)
            with open(output, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(self.spent) + "\n")
            return result

    worker.TaskExecutor = TimedTaskExecutor
    from ansible.cli.playbook import main  # pylint: disable=import-outside-toplevel
    try:
        main(["ansible-playbook"] + argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _write(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _playbook(directory: str, tasks: int) -> str:
    lines = ["- hosts: all", "  gather_facts: false", "  ignore_unreachable: true", "  tasks:"]
    for index in range(tasks):
        lines += ["    - name: true %d" % index, "      ansible.builtin.command: /bin/true", "      changed_when: false"]
    return _write(directory, "playbook-%d.yml" % tasks, "\n".join(lines) + "\n")


def _inventory(directory: str, name: str, hostvars: Dict[str, Any]) -> str:
    doc = {"all": {"hosts": {"bench-host": hostvars}}}
    return _write(directory, "%s.json" % name, json.dumps(doc))


def _scenario_run(name: str, inventory: str, playbook: str, scratch: str, profile_dir: str = "",
                  collections: str = devenv.COLLECTIONS) -> List[Dict[str, Any]]:
    output = os.path.join(scratch, "%s-%d.jsonl" % (name, time.monotonic_ns()))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker-run", output, "--profile-dir", profile_dir, "--",
           "-i", inventory, playbook]
    # a home of its own: the control process and the collection's caches (~/.ansible/natsops) are this run's
    env = devenv.ansible_env({"HOME": os.path.join(scratch, "home"), "ANSIBLE_COLLECTIONS_PATH": collections})
    env.pop("PYTHONUNBUFFERED", None)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError("%s: ansible-playbook failed:\n%s\n%s" % (name, result.stdout[-3000:], result.stderr[-3000:]))
    with open(output, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return records


def _profile_summary(profile_dir: str, limit: int = 40) -> str:
    import io  # pylint: disable=import-outside-toplevel
    import pstats  # pylint: disable=import-outside-toplevel
    files = [os.path.join(profile_dir, f) for f in os.listdir(profile_dir) if f.endswith(".prof")]
    stream = io.StringIO()
    stats = pstats.Stats(*files, stream=stream)
    stream.write("%d workers profiled; times are sums over them\n" % len(files))
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return stream.getvalue()


def _stop_control_processes(home: str) -> None:
    """Stop the control processes the runs started (their socket is below ``home``), by PID."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"plugin_utils._control") for arg in argv) and any(arg.startswith(home.encode()) for arg in argv):
            os.kill(int(pid), signal.SIGTERM)


def measure(rounds: int, tasks: int, profile: str, baseline: str = "") -> Dict[str, Dict[str, List[float]]]:
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(1))  # stop what was started (finally below)
    scratch = tempfile.mkdtemp(prefix="natsops-worker-cost-")
    nats = executor = None
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    try:
        nats = devenv.NatsServer()
        clean_env = dict((k, v) for k, v in os.environ.items() if k != "PYTHONUNBUFFERED")
        executor = devenv.ExecutorProcess(nats.url, ["bench-host"], extra_args=["--warm"], log_dir=scratch,
                                          env=clean_env, inherit_env=False)
        playbook = _playbook(scratch, tasks)
        common = {"ansible_python_interpreter": python}
        nats_vars = dict(common, ansible_connection="natsops.fleet.nats", ansible_nats_servers=nats.url)
        scenarios = {
            "nats": _inventory(scratch, "nats", nats_vars),
            "local": _inventory(scratch, "local", dict(common, ansible_connection="local")),
            "ssh": _inventory(scratch, "ssh", dict(common, ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=9,
                                                   ansible_ssh_pipelining=True, ansible_ssh_retries=0)),
        }
        trees = dict((name, devenv.COLLECTIONS) for name in scenarios)
        if baseline:  # the same collection from another checkout (its own control process: other code revision)
            scenarios["nats-base"] = _inventory(scratch, "nats-base", dict(nats_vars, ansible_nats_control_persist=61))
            trees["nats-base"] = os.path.join(os.path.abspath(baseline), ".build", "collections")
        for name, inventory in scenarios.items():  # warm-up: control process, AnsiballZ cache
            _scenario_run(name, inventory, _playbook(scratch, 2) if not name.startswith("nats") else playbook, scratch,
                          collections=trees[name])
        figures: Dict[str, Dict[str, List[float]]] = dict((name, dict((p, []) for p in PHASES)) for name in scenarios)
        for _round in range(rounds):
            for name, inventory in scenarios.items():
                records = _scenario_run(name, inventory, playbook, scratch, collections=trees[name])
                if len(records) != tasks:
                    raise RuntimeError("%s: %d worker records for %d tasks" % (name, len(records), tasks))
                for record in records:
                    if name != "ssh" and (record["failed"] or record["unreachable"]):
                        raise RuntimeError("%s: a task failed: %r" % (name, record))
                    for phase in PHASES:
                        figures[name][phase].append(record.get(phase, 0.0))
        if profile:
            os.makedirs(profile, exist_ok=True)
            _scenario_run("nats", scenarios["nats"], playbook, scratch, profile_dir=profile)
        return figures
    finally:
        _stop_control_processes(os.path.join(scratch, "home"))
        if executor is not None:
            executor.stop()
            executor.remove_log()
        if nats is not None:
            nats.stop()
        if not os.environ.get("WORKER_COST_KEEP"):
            subprocess.run(["rm", "-rf", scratch], check=False)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--profile", default="", help="directory for one profiled nats round (cProfile per worker)")
    parser.add_argument("--json", default="", help="also write the per-task figures here")
    parser.add_argument("--baseline", default="", help="a checkout of another revision (with .build/collections, e.g. a "
                                                       "git worktree): scenario nats-base runs its plugin, interleaved")
    parser.add_argument("--worker-run", default="", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("playbook_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_run:
        return _run_playbook_here(args.worker_run, args.profile_dir, args.playbook_args)
    figures = measure(args.rounds, args.tasks, args.profile, args.baseline)
    print("CPU per task in the forked worker, ms (median of %d tasks; mean in brackets)" % (args.rounds * args.tasks))
    print("%-9s %16s %16s %16s %16s" % (("scenario",) + PHASES))
    for name, phases in figures.items():
        cells = ["%8.2f (%5.2f)" % (statistics.median(phases[p]) * 1000, statistics.mean(phases[p]) * 1000) for p in PHASES]
        print("%-9s %s" % (name, " ".join(cells)))
    print("worker: the whole worker process since the fork; run: TaskExecutor.run; load: _get_connection; "
          "options: _set_connection_options")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle)
    if args.profile:
        print(_profile_summary(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
