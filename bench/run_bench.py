# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): the same playbooks through each connection, side by side (issue 18, item 8).

``make bench`` runs it (after ``pip install mitogen``). Every scenario is set up first, warmed up once, then
run round-robin (round 1 of each, round 2 of each, ...) so that the drift of a noisy machine spreads over all
of them. Per run: the wall time of the whole ``ansible-playbook`` command, and the CPU-seconds of every process
involved, by cgroup (bench/_cpu.py): the controller (ansible-playbook, its workers, the natsops control
process, ssh clients, Mitogen's multiplexer), nats-server, the executor (with the module processes it starts),
and for lab scenarios the target hosts.

  1 host x 30 tasks (bench/playbook-30.yml)
    local, nats-warm, nats-cold, mitogen-local             on this machine
    ssh, nats-lab-warm, nats-lab-cold, mitogen-ssh          to one lab host (agent mode: the executor runs there)
  10 hosts x 10 tasks, forks 10 (bench/playbook-10.yml), ten inventory hosts on this machine
    local-10, nats-warm-10, nats-cold-10, mitogen-local-10  (one executor serves the ten instance ids)
  20 hosts x 10 tasks, forks 20 (bench/playbook-10.yml), twenty lab hosts
    ssh-fleet, zone-fleet (one zone executor, SSH mode, warm runners), zone-fleet-cold, mitogen-ssh-fleet
  zone-rtt: a command round trip through a zone executor, with the client alone (issue 4)

Lab scenarios need root and the lab (tests/lab/labctl.py), which this script boots and stops. Results go to
bench/results/connections.md and docs/performance.md, for a complete run only (no ``--only``, no ``--no-docs``).

    .venv/bin/python bench/run_bench.py [--runs 5] [--fleet-runs 3] [--only SCENARIO ...] [--no-lab] [--no-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _paths import HERE, RESULTS, ROOT
from _cpu import CpuMeter
import devenv  # after _paths, which puts tools/ on sys.path

PLAYBOOK_30 = os.path.join(HERE, "playbook-30.yml")
PLAYBOOK_10 = os.path.join(HERE, "playbook-10.yml")
CONNECTIONS = os.path.join(RESULTS, "connections.md")
LAB_RESULTS = os.path.join(RESULTS, "lab.md")
TRUST_RESULTS = os.path.join(RESULTS, "trust.md")  # written by bench/trust_bench.py
RESILIENCE_RESULTS = os.path.join(RESULTS, "resilience.md")  # written by bench/resilience_bench.py
WARM_RESULTS = os.path.join(RESULTS, "warm_cpu.md")  # written by bench/warm_cpu.py
PERFORMANCE = os.path.join(ROOT, "docs", "performance.md")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
LAB_PYTHON = "/usr/bin/python3"
FLEET_HOSTS = 20
LOCAL_HOSTS = 10
RUN_TIMEOUT = 900  # seconds, one ansible-playbook run
# ssh's ControlPersist and the natsops control process outlive a whole round (a round takes minutes), so that every
# timed run finds them as the warm-up left them, as consecutive runs of one scenario would
PERSIST = 1200
# the executor's warm module runs, passed explicitly (the default may change): agent-mode scenarios come in both kinds
WARM_FLAGS = {"warm": "--warm", "cold": "--no-warm"}
CPU_PARTS = ("controller", "nats", "executor", "target")
CPU_PART_TITLES = {"controller": "controller", "nats": "nats-server", "executor": "executor", "target": "target"}


@dataclasses.dataclass(frozen=True)
class Workload:
    title: str
    playbook: str
    tasks: int
    hosts: int
    forks: int


WORKLOADS = {
    "1x30": Workload("1 host x 30 tasks (bench/playbook-30.yml)", PLAYBOOK_30, 30, 1, 5),
    "10x10": Workload("10 hosts x 10 tasks, forks 10 (bench/playbook-10.yml, ten inventory hosts on this machine)",
                      PLAYBOOK_10, 10, LOCAL_HOSTS, LOCAL_HOSTS),
    "20x10": Workload("20 lab hosts x 10 tasks, forks 20 (bench/playbook-10.yml)", PLAYBOOK_10, 10, FLEET_HOSTS, FLEET_HOSTS),
}


@dataclasses.dataclass
class Scenario:
    """One way to run one workload; ``groups`` maps a CPU part (CPU_PARTS) to the CpuMeter group that measures it."""
    name: str
    workload: str
    placement: str  # "local" or "lab": what its ratios compare against
    what: str
    hosts: Dict[str, Dict[str, Any]]
    groups: Dict[str, str]
    mitogen: bool = False
    rounds: int = 0
    inventory: str = ""
    times: List[float] = dataclasses.field(default_factory=list)
    cpu: List[Dict[str, float]] = dataclasses.field(default_factory=list)


# name: (workload, placement, needs the lab, needs mitogen)
SCENARIOS: Dict[str, Tuple[str, str, bool, bool]] = {
    "local": ("1x30", "local", False, False),
    "nats-warm": ("1x30", "local", False, False),
    "nats-cold": ("1x30", "local", False, False),
    "mitogen-local": ("1x30", "local", False, True),
    "ssh": ("1x30", "lab", True, False),
    "nats-lab-warm": ("1x30", "lab", True, False),
    "nats-lab-cold": ("1x30", "lab", True, False),
    "mitogen-ssh": ("1x30", "lab", True, True),
    "local-10": ("10x10", "local", False, False),
    "nats-warm-10": ("10x10", "local", False, False),
    "nats-cold-10": ("10x10", "local", False, False),
    "mitogen-local-10": ("10x10", "local", False, True),
    "ssh-fleet": ("20x10", "lab", True, False),
    "zone-fleet": ("20x10", "lab", True, False),
    "zone-fleet-cold": ("20x10", "lab", True, False),
    "mitogen-ssh-fleet": ("20x10", "lab", True, True),
}
EXTRAS = ("zone-rtt",)
# what each (workload, placement) is compared with: Mitogen, and the plain connection
MITOGEN_REF = {("1x30", "local"): "mitogen-local", ("1x30", "lab"): "mitogen-ssh", ("10x10", "local"): "mitogen-local-10",
               ("20x10", "lab"): "mitogen-ssh-fleet"}
PLAIN_REF = {("1x30", "local"): "local", ("1x30", "lab"): "ssh", ("10x10", "local"): "local-10", ("20x10", "lab"): "ssh-fleet"}
# issue 18 item 8: (scenario, reference, measure, limit, goal or None, what)
TARGETS = [
    ("nats-warm", "mitogen-local", "wall", 1.0, 0.8, "1x30 agent mode (warm) vs Mitogen, this machine, wall time"),
    ("nats-warm", "mitogen-local", "cpu", 1.0, 0.8, "1x30 agent mode (warm) vs Mitogen, this machine, CPU"),
    ("nats-lab-warm", "mitogen-ssh", "wall", 1.0, 0.8, "1x30 agent mode (warm) on a lab host vs Mitogen over ssh, wall time"),
    ("nats-lab-warm", "mitogen-ssh", "cpu", 1.0, 0.8, "1x30 agent mode (warm) on a lab host vs Mitogen over ssh, CPU"),
    ("nats-warm-10", "mitogen-local-10", "wall", 1.0, None, "10x10 forks 10, agent mode (warm) vs Mitogen, wall time"),
    ("zone-fleet", "ssh-fleet", "wall", 0.5, None, "20x10 through one zone executor vs direct ssh, wall time"),
    ("zone-fleet", "mitogen-ssh-fleet", "wall", 1.0, None, "20x10 through one zone executor vs Mitogen over ssh, wall time"),
]


# ---------------------------------------------------------------- running

def _median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def mitogen_strategy_dir() -> Optional[str]:
    try:
        import ansible_mitogen  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return os.path.join(os.path.dirname(ansible_mitogen.__file__), "plugins", "strategy")


def mitogen_version() -> str:
    try:
        return importlib.metadata.version("mitogen")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def lab_available() -> Tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "not root"
    try:
        import labctl  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        return False, str(exc)
    reason = labctl.check_prerequisites()
    return reason is None, reason or ""


def _write_inventory(directory: str, scenario: Scenario) -> None:
    scenario.inventory = os.path.join(directory, "%s.json" % scenario.name)
    with open(scenario.inventory, "w", encoding="utf-8") as handle:
        json.dump({"all": {"hosts": scenario.hosts}}, handle)


def _run_once(scenario: Scenario, meter: CpuMeter, strategy_dir: Optional[str]) -> Tuple[float, Dict[str, float]]:
    """One ansible-playbook run in the controller's cgroup: wall seconds and CPU-seconds per part."""
    load = WORKLOADS[scenario.workload]
    argv = [devenv.tool("ansible-playbook"), "-i", scenario.inventory, "--forks", str(load.forks), load.playbook]
    extra = {"ANSIBLE_STRATEGY_PLUGINS": strategy_dir or "", "ANSIBLE_STRATEGY": "mitogen_linear"} if scenario.mitogen else {}
    before = meter.snapshot()
    started = time.monotonic()
    result = subprocess.run(meter.argv("controller", argv), env=devenv.ansible_env(extra), capture_output=True, text=True,
                            timeout=RUN_TIMEOUT, check=False)
    elapsed = time.monotonic() - started
    after = meter.snapshot()
    if result.returncode != 0 or len(re.findall(r"\bok=%d\s" % load.tasks, result.stdout)) != load.hosts:
        raise RuntimeError("%s: playbook failed (rc %d):\n%s\n%s" % (
            scenario.name, result.returncode, result.stdout[-3000:], result.stderr[-3000:]))
    return elapsed, {part: after[group] - before[group] for part, group in scenario.groups.items() if group in after}


def _control_process_check(meter: CpuMeter) -> str:
    """Whether the natsops control process (started by a worker, detached, persisting between runs) is counted."""
    if not meter.cgroups:
        return "the natsops control process is not counted (it detaches from ansible-playbook)"
    found = []
    for pid in meter.pids("controller"):
        with contextlib.suppress(OSError):
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                if b"plugin_utils._control" in handle.read():
                    found.append(pid)
    if found:
        return "the natsops control process (PID %s) stays in the controller's cgroup between runs" % ", ".join(map(str, found))
    return "no natsops control process was found in the controller's cgroup after the warm-up runs"


def _measure_rounds(scenarios: List[Scenario], meter: CpuMeter, strategy_dir: Optional[str], notes: List[str]) -> List[Scenario]:
    """One warm-up each, then the rounds, round-robin. A Mitogen scenario whose warm-up fails is dropped (noted)."""
    kept = []
    for scenario in scenarios:
        try:
            _run_once(scenario, meter, strategy_dir)
        except RuntimeError as exc:
            if not scenario.mitogen:
                raise
            notes.append("%s skipped: Mitogen %s failed its warm-up: %s" % (
                scenario.name, mitogen_version(), str(exc).splitlines()[1:2] or str(exc)))
            continue
        kept.append(scenario)
    if any("nats" in s.groups for s in kept):
        notes.append(_control_process_check(meter))
    for rnd in range(max((s.rounds for s in kept), default=0)):
        for scenario in kept:
            if rnd < scenario.rounds:
                elapsed, cpu = _run_once(scenario, meter, strategy_dir)
                scenario.times.append(elapsed)
                scenario.cpu.append(cpu)
        print("round %d done: %s" % (rnd + 1, ", ".join("%s %.2f s" % (s.name, s.times[-1]) for s in kept if rnd < s.rounds)),
              flush=True)
    return kept


# ---------------------------------------------------------------- setting up

class _Bench:
    """The processes, lab and cgroups of one benchmark run; ``close`` stops them all, by PID or unit."""

    def __init__(self, selected: List[str], use_lab: bool, runs: int, fleet_runs: int) -> None:
        self.selected = selected
        self.runs = runs
        self.fleet_runs = fleet_runs
        self.notes: List[str] = []
        self.meter = CpuMeter()
        self.scratch = tempfile.mkdtemp(prefix="natsops-bench-")
        self.lab: Optional[Dict[str, Any]] = None
        self.nats: Optional[devenv.NatsServer] = None
        self.url = ""
        self._stack = contextlib.ExitStack()
        self._use_lab = use_lab
        self.strategy_dir = mitogen_strategy_dir()
        self.zone_rtt = ""

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.meter.close()
            subprocess.run(["rm", "-rf", self.scratch], check=False)

    def _wanted(self, *names: str) -> bool:
        return any(name in self.selected for name in names)

    def setup(self) -> List[Scenario]:
        lab_names = [n for n, (_w, _p, lab, _m) in SCENARIOS.items() if lab] + list(EXTRAS)
        if self._wanted(*lab_names):
            ok, reason = lab_available()
            if not self._use_lab or not ok:
                self.notes.append("lab scenarios skipped: %s" % ("--no-lab" if not self._use_lab else reason))
                self.selected = [n for n in self.selected if n not in lab_names]
            else:
                self._boot_lab()
        if not self.strategy_dir and self._wanted(*[n for n, spec in SCENARIOS.items() if spec[3]]):
            self.notes.append("Mitogen not installed (pip install mitogen): its scenarios were skipped")
            self.selected = [n for n in self.selected if not SCENARIOS.get(n, ("", "", False, False))[3]]
        elif self.strategy_dir:
            self.notes.append("Mitogen %s (strategy mitogen_linear)" % mitogen_version())
        self.nats = devenv.NatsServer(listen=self.lab["controller_address"] if self.lab else "127.0.0.1")
        self._stack.callback(self.nats.stop)
        self.meter.adopt("nats", self.nats.proc.pid)
        self.url = self.nats.url
        self.meter.group("controller")
        if self._wanted("nats-warm", "nats-cold", "nats-warm-10", "nats-cold-10"):
            for kind in WARM_FLAGS:  # each serves the 1x30 host and the ten 10x10 hosts
                ids = ["bench-%s" % kind] + ["%s-%d" % (kind, i) for i in range(1, LOCAL_HOSTS + 1)]
                self._local_executor("executor-%s" % kind, WARM_FLAGS[kind], ids)
        scenarios = self._local_scenarios() + self._local_fleet_scenarios()
        if self.lab:
            scenarios += self._lab_scenarios() + self._fleet_scenarios()
        scenarios = [s for s in scenarios if s.name in self.selected]
        for scenario in scenarios:
            scenario.rounds = self.fleet_runs if scenario.workload == "20x10" else self.runs
            _write_inventory(self.scratch, scenario)
        return scenarios

    # -- processes

    def _boot_lab(self) -> None:
        import labctl  # pylint: disable=import-outside-toplevel
        fleet = self._wanted("ssh-fleet", "zone-fleet", "zone-fleet-cold", "mitogen-ssh-fleet")
        # lab-mgmt-1: the zone executor's host; lab-mgmt-2: the 1x30 target; lab-mgmt-3..22: the fleet; lab-zone-1
        self._stack.callback(labctl.down)
        self.lab = labctl.up(2 + (FLEET_HOSTS if fleet else 0), 1)
        cgroups = {h["name"]: [p for p in h["cgroups"] if os.path.exists(os.path.join(p, "cpu.stat"))]
                   for h in labctl.status()["hosts"]}
        for host in self.lab["hosts"]:
            host["cgroup_paths"] = cgroups.get(host["name"], [])

    def _local_executor(self, group: str, flag: str, instances: List[str]) -> None:
        # like a systemd service: without this shell's PYTHONUNBUFFERED (see FINDINGS)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        executor = devenv.ExecutorProcess(self.url, instances, extra_args=[flag],
                                          log_dir=self.scratch, env=env, inherit_env=False)
        self._stack.callback(executor.remove_log)
        self._stack.callback(executor.stop)
        self.meter.adopt(group, executor.proc.pid)

    def _lab_executor(self, host: Dict[str, Any], unit: str, instances: List[str], extra_args: List[str],
                      files: Optional[Dict[str, str]] = None) -> List[str]:
        """An executor as a unit on a lab host; returns its cgroup (a list: empty when not found)."""
        executor = devenv.LabExecutor(host["name"], self.url, instances, unit=unit, scratch=self.scratch, files=files,
                                      extra_args=extra_args)
        self._stack.callback(executor.stop)
        paths = [os.path.join(p, "payload", "system.slice", "%s.service" % unit) for p in host["cgroup_paths"]]
        return [p for p in paths if os.path.exists(os.path.join(p, "cpu.stat"))]

    # -- scenarios

    def _local_scenarios(self) -> List[Scenario]:
        if not self._wanted("local", "nats-warm", "nats-cold", "mitogen-local"):
            return []
        local = {"ansible_connection": "local", "ansible_python_interpreter": PYTHON}
        nats = self._nats_vars(PYTHON)
        controller = {"controller": "controller"}
        return [
            Scenario("local", "1x30", "local", "connection: local", {"bench-host": local}, controller),
            Scenario("nats-warm", "1x30", "local", "natsops.fleet.nats, executor here, --warm",
                     {"bench-host": dict(nats, ansible_nats_executor="bench-warm")},
                     dict(controller, nats="nats", executor="executor-warm")),
            Scenario("nats-cold", "1x30", "local", "natsops.fleet.nats, executor here, --no-warm",
                     {"bench-host": dict(nats, ansible_nats_executor="bench-cold")},
                     dict(controller, nats="nats", executor="executor-cold")),
            Scenario("mitogen-local", "1x30", "local", "Mitogen (mitogen_linear), connection: local", {"bench-host": local},
                     controller, mitogen=True),
        ]

    def _local_fleet_scenarios(self) -> List[Scenario]:
        """Ten inventory hosts on this machine, served by the local executors (warm, cold): ten instance ids each."""
        if not self._wanted("local-10", "nats-warm-10", "nats-cold-10", "mitogen-local-10"):
            return []
        names = ["bench-%d" % i for i in range(1, LOCAL_HOSTS + 1)]
        local = {n: {"ansible_connection": "local", "ansible_python_interpreter": PYTHON} for n in names}

        def nats(kind: str) -> Dict[str, Dict[str, Any]]:
            return {n: self._nats_vars(PYTHON, ansible_nats_executor="%s-%d" % (kind, i)) for i, n in enumerate(names, 1)}
        controller = {"controller": "controller"}
        return [
            Scenario("local-10", "10x10", "local", "connection: local", local, controller),
            Scenario("nats-warm-10", "10x10", "local", "natsops.fleet.nats, one executor here, --warm", nats("warm"),
                     dict(controller, nats="nats", executor="executor-warm")),
            Scenario("nats-cold-10", "10x10", "local", "natsops.fleet.nats, one executor here, --no-warm", nats("cold"),
                     dict(controller, nats="nats", executor="executor-cold")),
            Scenario("mitogen-local-10", "10x10", "local", "Mitogen (mitogen_linear), connection: local", local, controller,
                     mitogen=True),
        ]

    def _nats_vars(self, python: str, **extra: Any) -> Dict[str, Any]:
        return dict({"ansible_connection": "natsops.fleet.nats", "ansible_nats_servers": self.url,
                     "ansible_nats_control_persist": PERSIST, "ansible_python_interpreter": python}, **extra)

    def _ssh_vars(self, address: str) -> Dict[str, Any]:
        assert self.lab is not None
        return {"ansible_connection": "ssh", "ansible_host": address, "ansible_user": "root",
                "ansible_ssh_private_key_file": self.lab["ssh_private_key_file"], "ansible_python_interpreter": LAB_PYTHON,
                "ansible_ssh_pipelining": True,
                "ansible_ssh_common_args": "-o ControlMaster=auto -o ControlPersist=%ds -o StrictHostKeyChecking=no "
                                           "-o UserKnownHostsFile=%s -o IdentitiesOnly=yes" % (PERSIST, self.lab["known_hosts"])}

    def _lab_scenarios(self) -> List[Scenario]:
        """1x30 on lab-mgmt-2, agent mode: its executors (warm, cold) run there as units."""
        if not self._wanted("ssh", "nats-lab-warm", "nats-lab-cold", "mitogen-ssh"):
            return []
        assert self.lab is not None
        host = next(h for h in self.lab["hosts"] if h["name"] == "lab-mgmt-2")
        units = {}
        for kind, flag in WARM_FLAGS.items():
            units[kind] = self._lab_executor(host, "natsops-bench-%s" % kind, ["lab-%s" % kind], [flag])
            self.meter.watch("lab-executor-%s" % kind, units[kind])
        if not units["warm"] or not units["cold"]:
            self.notes.append("the lab executors' unit cgroups were not found: their CPU is counted as target CPU")
        self.meter.watch("lab-target", host["cgroup_paths"], minus=units["warm"] + units["cold"])
        ssh = self._ssh_vars(host["ansible_host"])
        nats = self._nats_vars(LAB_PYTHON)
        controller = {"controller": "controller", "target": "lab-target"}
        return [
            Scenario("ssh", "1x30", "lab", "ssh, pipelining + ControlPersist, to a lab host", {"bench-host": ssh}, controller),
            Scenario("nats-lab-warm", "1x30", "lab", "natsops.fleet.nats, executor on that lab host, --warm",
                     {"bench-host": dict(nats, ansible_nats_executor="lab-warm")},
                     dict(controller, nats="nats", executor="lab-executor-warm")),
            Scenario("nats-lab-cold", "1x30", "lab", "natsops.fleet.nats, executor on that lab host, --no-warm",
                     {"bench-host": dict(nats, ansible_nats_executor="lab-cold")},
                     dict(controller, nats="nats", executor="lab-executor-cold")),
            Scenario("mitogen-ssh", "1x30", "lab", "Mitogen (mitogen_linear) over ssh to that lab host", {"bench-host": ssh},
                     controller, mitogen=True),
        ]

    def _fleet_scenarios(self) -> List[Scenario]:
        """20x10: direct ssh, one zone executor on lab-mgmt-1 (SSH mode, pooled), Mitogen over ssh; same 20 hosts."""
        if not self._wanted("ssh-fleet", "zone-fleet", "zone-fleet-cold", "mitogen-ssh-fleet"):
            return []
        assert self.lab is not None
        executor_host = next(h for h in self.lab["hosts"] if h["name"] == self.lab["executor_hosts"][0])
        targets = [h for h in self.lab["hosts"] if h["name"] not in (executor_host["name"], "lab-mgmt-2")
                   and "mgmt" in h["addresses"]][:FLEET_HOSTS]
        known = "".join("%s %s\n" % (h["addresses"]["mgmt"], " ".join(h["host_key"].split()[:2])) for h in targets)
        unit = self._lab_executor(executor_host, "natsops-bench-fleet", ["bench-fleet"],
                                  ["--warm", "--ssh-known-hosts", "/etc/natsops/fleet_known_hosts",
                                   "--ssh-identity", "default=%s" % self.lab["executor_key_path"]],
                                  files={"/etc/natsops/fleet_known_hosts": known})
        self.meter.watch("zone-executor", unit or executor_host["cgroup_paths"])
        self.meter.watch("fleet-targets", [p for h in targets for p in h["cgroup_paths"]])
        ssh = {h["name"]: self._ssh_vars(h["addresses"]["mgmt"]) for h in targets}
        zone = {h["name"]: self._nats_vars(LAB_PYTHON, ansible_nats_mode="ssh", ansible_nats_executor="bench-fleet",
                                           ansible_host=h["addresses"]["mgmt"], ansible_user="root") for h in targets}
        controller = {"controller": "controller", "target": "fleet-targets"}
        return [
            Scenario("ssh-fleet", "20x10", "lab", "ssh, pipelining + ControlPersist, from this machine", ssh, controller),
            Scenario("zone-fleet", "20x10", "lab", "natsops.fleet.nats through one zone executor (SSH mode, pooled, warm "
                     "runners on the targets)", zone, dict(controller, nats="nats", executor="zone-executor")),
            Scenario("zone-fleet-cold", "20x10", "lab", "the same with ansible_nats_warm: false (an interpreter per task)",
                     {name: dict(hostvars, ansible_nats_warm=False) for name, hostvars in zone.items()},
                     dict(controller, nats="nats", executor="zone-executor")),
            Scenario("mitogen-ssh-fleet", "20x10", "lab", "Mitogen (mitogen_linear) over ssh from this machine", ssh, controller,
                     mitogen=True),
        ]

    def extras(self) -> None:
        if self.lab and "zone-rtt" in self.selected:
            self.zone_rtt = zone_round_trip(self.lab, self.url, self.scratch)


def measure(selected: List[str], use_lab: bool, runs: int, fleet_runs: int) -> Tuple[List[Scenario], List[str]]:
    bench = _Bench(selected, use_lab, runs, fleet_runs)
    try:
        scenarios = bench.setup()
        bench.notes.insert(0, "CPU: " + bench.meter.describe())
        scenarios = _measure_rounds(scenarios, bench.meter, bench.strategy_dir, bench.notes)
        bench.extras()
        if bench.zone_rtt:
            bench.notes.append(bench.zone_rtt)
    finally:
        bench.close()
    return scenarios, bench.notes


def zone_round_trip(lab: Dict[str, Any], url: str, scratch: str, count: int = 200) -> str:
    """Issue 4's target: a warm command round trip through a zone executor to a lab host over SSH,
    measured with the client alone (no Ansible): caller -> NATS -> executor -> pooled SSH -> host -> back."""
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    zone_host = [h for h in lab["hosts"] if h["networks"] == ["zone"]][0]
    known = "%s %s\n" % (zone_host["addresses"]["zone"], " ".join(zone_host["host_key"].split()[:2]))
    zone_exec = devenv.LabExecutor(lab["executor_hosts"][0], url, ["bench-zone"], unit="natsops-bench-zone", scratch=scratch,
                                   files={"/etc/natsops/bench_known_hosts": known},
                                   extra_args=["--no-warm", "--ssh-known-hosts", "/etc/natsops/bench_known_hosts",
                                               "--ssh-identity", "default=%s" % lab["executor_key_path"]])
    client = None
    try:
        client = ExecutorClient({"servers": [url]}, "bench-zone",
                                target={"host": zone_host["addresses"]["zone"], "user": "root"}).connect()
        for _warm in range(5):
            client.exec_command(command="true")
        times = []
        for _run in range(count):
            started = time.perf_counter()
            rc = client.exec_command(command="true")[0]
            times.append((time.perf_counter() - started) * 1000)
            if rc != 0:
                raise RuntimeError("zone round trip: rc %s" % rc)
    finally:
        if client is not None:
            client.close()
        zone_exec.stop()
    times.sort()
    median = statistics.median(times)
    return ("zone executor round trip (issue 4 target: median under 15 ms): `true` on %s over SSH through a zone executor "
            "on %s, %d warm requests with the client alone: median %.1f ms, p90 %.1f ms, min %.1f ms, target %s" % (
                zone_host["name"], lab["executor_hosts"][0], count, median, times[int(count * 0.9)], times[0],
                "met" if median < 15 else "not met"))


# ---------------------------------------------------------------- reporting

def _total(cpu: Dict[str, float]) -> float:
    return sum(cpu.values())


def _figure(scenario: Optional[Scenario], measure: str) -> Optional[float]:
    """Median wall seconds ("wall") or median total CPU-seconds ("cpu") of a scenario."""
    if scenario is None:
        return None
    return _median(scenario.times if measure == "wall" else [_total(c) for c in scenario.cpu])


def _ratio(scenario: Scenario, reference: Optional[Scenario]) -> str:
    if reference is None or reference is scenario:
        return "-"
    parts = []
    for measure in ("wall", "cpu"):
        mine, theirs = _figure(scenario, measure), _figure(reference, measure)
        parts.append("%.2fx" % (mine / theirs) if mine is not None and theirs else "-")
    return " / ".join(parts)


def _cell(values: Sequence[float]) -> str:
    return "%.2f" % statistics.median(values) if values else "-"


def _table(workload: str, scenarios: List[Scenario], by_name: Dict[str, Scenario]) -> List[str]:
    lines = ["### %s" % WORKLOADS[workload].title, "",
             "| scenario | what | wall median (s) | runs (s) | CPU-s median | %s | vs Mitogen (wall / CPU) | "
             "vs local or ssh (wall / CPU) |" % " | ".join(CPU_PART_TITLES[p] for p in CPU_PARTS),
             "|---|---|---|---|---|%s---|---|" % ("---|" * len(CPU_PARTS))]
    for scenario in scenarios:
        key = (scenario.workload, scenario.placement)
        parts = [_cell([c[p] for c in scenario.cpu if p in c]) for p in CPU_PARTS]
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            scenario.name, scenario.what, _cell(scenario.times), ", ".join("%.2f" % t for t in scenario.times),
            _cell([_total(c) for c in scenario.cpu]), " | ".join(parts),
            _ratio(scenario, by_name.get(MITOGEN_REF[key])), _ratio(scenario, by_name.get(PLAIN_REF[key]))))
    return lines + [""]


def _targets(by_name: Dict[str, Scenario]) -> List[str]:
    lines = ["### Targets (issue 18, item 8)", ""]
    for name, reference, measure, limit, goal, what in TARGETS:
        mine, theirs = _figure(by_name.get(name), measure), _figure(by_name.get(reference), measure)
        if mine is None or not theirs:
            lines.append("- %s (%s / %s): not measured in this run" % (what, name, reference))
            continue
        ratio = mine / theirs
        verdict = "**met**" if ratio <= limit else "**not met**"
        if goal is not None:
            verdict += ", goal <= %.1fx %s" % (goal, "met" if ratio <= goal else "not met")
        lines.append("- %s (%s / %s): %.2fx, target <= %.1fx %s" % (what, name, reference, ratio, limit, verdict))
    return lines + [""]


def render(scenarios: List[Scenario], notes: List[str], runs: int, fleet_runs: int) -> str:
    by_name = {s.name: s for s in scenarios}
    lines: List[str] = []
    for workload in WORKLOADS:
        rows = [s for s in scenarios if s.workload == workload]
        if rows:
            lines += _table(workload, rows, by_name)
    lines += _targets(by_name)
    lines.append("Each scenario: one warm-up, then %d timed run(s) (20x10: %d), all scenarios interleaved round-robin (ssh's ControlPersist "
                 "and the natsops control process persist %d s, across rounds); wall time of the whole `ansible-playbook` "
                 "command; CPU-seconds of every process involved in that run: controller "
                 "(ansible-playbook, its workers, the natsops control process, ssh clients and masters, Mitogen's "
                 "multiplexer and, with connection: local, the module processes), nats-server, executor (with the module "
                 "processes it starts; on a lab host, its unit), target (the lab host(s), less the executor's unit). The CPU "
                 "columns are medians of each part, the CPU-s median that of the totals (so the parts need not add up). "
                 "Ratios compare medians with the Mitogen scenario and the plain connection of the same placement (this "
                 "machine, or the lab); < 1 means less." % (runs, fleet_runs, PERSIST))
    lines.append("Machine: %s, %d cores, Python %s, %s. Measured %s." % (
        platform.platform(), os.cpu_count() or 0, platform.python_version(), ansible_version(),
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))
    for note in notes:
        lines.append("")
        lines.append("Note: %s." % note.rstrip("."))
    return "\n".join(lines) + "\n"


def ansible_version() -> str:
    out = subprocess.run([devenv.tool("ansible"), "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "ansible ?"


FINDINGS = """
### Where the time goes (profiling, 2026-11-23)

- The transport is not the cost: the same pipelined module payload takes 0.310 s through the control
  process, NATS and the executor and 0.308 s run directly (20 interleaved runs); a `true` round trip
  through the whole chain takes 3-6 ms (ssh's ControlPersist path forks an `ssh` client per command).
- Before the control process, every task's worker imported nats-py and asyncio (about 0.13 s) and connected
  to NATS; the control process removed that (per-task connect: 2 ms).
- Loading the plugin in every forked worker was the gap to ssh. Measured in forked children of a parent
  prepared like ansible-playbook's (median of 30): 23 ms per task at first, of which 7.6 ms was ansible-core
  parsing the plugin's DOCUMENTATION with its tagging YAML loader (builtin plugins' definitions are loaded in
  the parent before the fork, collection plugins' are not) and about 9 ms compiling the plugin and its
  module_utils from source (the collection loader keeps no bytecode). Now 13 ms: the plugin registers its
  option definitions itself, parsed with the C YAML loader (a unit test checks they equal ansible-core's
  parse), and a worker compiles only the plugin, `mux.py`, `errors.py` and `wire/names.py` (now
  `plugin_utils/_mux.py`, `module_utils/_errors.py`); the control process moved to `control.py` (now
  `plugin_utils/_control.py`). The lab ratio went from 1.15x to parity: full benchmark runs on
  2026-11-23 gave 1.02x, 1.07x and 0.90x (the table above is the last one), and a run of ssh-lab against
  nats-lab alone, 10 interleaved rounds, gave medians 9.53 s and 9.41 s (0.99x). This machine's noise
  (runs of one scenario spread by 25 %) is larger than the remaining difference. What is left per task:
  about 11 ms more plugin load in the worker (13 ms against 2 ms for ssh, mostly compiling from source,
  the rest finding the plugin and the C YAML parse), and about 3-6 ms less transport (a `true` round trip:
  3.9 ms through the control process, NATS and the executor against 10.3 ms through ssh's ControlPersist;
  the `command` module payload: 207.6 ms against 211.0 ms, 30 interleaved runs).
- 20 hosts x 10 tasks through one zone executor (profiled 2026-11-23, second session): per run of 200
  tasks the executor used 2.0 CPU-s (paramiko >= 3.4; 2.3-2.8 CPU-s with Debian's paramiko 2.12, whose
  `asbytes()` formats the repr of every outgoing packet into an exception message and throws it away: 14 %
  of the executor's GIL time), nats-server 0.4, the control process 0.75, and the ansible-playbook workers
  1.2-1.5 CPU-s more than with ssh (the plugin load above). On this 2-core machine the 20 targets, the
  executor, NATS and the controller share the CPUs, so that CPU is wall time. After the paramiko change,
  single runs gave 36.71 and 39.42 s through the zone executor against 35.72 and 40.37 s direct (within the
  noise); a 3-round run disturbed by a concurrent ansible-lint gave medians 46.04 against 41.56 s (1.11x).
  An undisturbed 3-round run afterwards: ssh median 43.90 s (40.71, 43.90, 47.04), zone 48.25 s (41.55, 48.57,
  48.25): 1.10x, target not met. Third session, no change to the per-task path: the full benchmark above
  gave 0.99x (3 rounds), and the fleet scenario alone, 6 interleaved rounds, gave medians 36.51 s direct
  (36.01, 37.57, 37.00, 40.25, 35.76, 33.59) against 36.47 s through the zone executor (35.69, 35.66, 40.51,
  40.23, 34.04, 37.25): 1.00x, target met; the zone executor was faster in 5 of those 9 paired rounds, and
  their sums differ by 2.8 %. So the two paths are at parity within this machine's noise, where all 20
  targets, the executor, NATS and the controller share two cores. Headroom, if needed: the executor's
  per-task CPU (10 ms: threads, asyncio, paramiko's Python packetizer). The lab's executors now run the
  paramiko the wheel would install (copied from the virtualenv) instead of Debian's.
- SSH mode: paramiko's socket needs TCP_NODELAY; without it a zone round trip waited on delayed ACKs
  (49 ms median, 9 ms with it).
- Pipelined modules start slower when `PYTHONUNBUFFERED=1` is in the environment of the process that runs
  them (it is on this machine): Python then reads a script from stdin one byte per `read(2)`: 180,399
  calls for the 180 KB AnsiballZ payload of `command`, against 392 without it (0.29 s against 0.22 s to run
  the payload; 0.18 s from a file). Every pipelined connection pays it when the variable reaches the
  module's interpreter; lab hosts (sshd, systemd units) do not have it, and the benchmark starts its local
  executor without it, as a systemd service would be.
- The module run itself (`python3` running AnsiballZ, about 0.2 s per task here) dominates every
  scenario but Mitogen's: a warm executor that keeps module_utils imported is the path to the moonshot
  (warm runs, issue 18: bench/warm_cpu.py below; a warm child of `command` costs about 18 ms of CPU, of which
  about 6 ms start `/bin/true` and 1.4 ms compile the wrapper).
- The plugin load in the task worker, second cut (2026-11-29, bench/worker_cost.py: real ansible-playbook in
  process, each forked worker records its own CPU; 30 x `command: /bin/true`, 3 interleaved rounds, median of
  90 tasks, the previous revision in the same run). ansible-core's collection loader compiles collection Python
  from source in every worker, and the plugin's option definitions were parsed from YAML in every worker (3.1 ms,
  mostly building Python objects). Both are now kept per user in `~/.ansible/natsops/cache`
  (`plugin_utils/_codecache.py`: mode 0700, one entry per module and install, checked against the SHA-256 of the
  source, the bytecode magic and its own content, computed again on any mismatch). Worker CPU per task went from
  31.3 to 22.7 ms, against 19.4 ms for ssh and 20.0 ms for local; the plugin load from 15.1 to 6.2 ms (ssh 1.4);
  option handling was already at parity (1.3 against 1.4 ms). Where Python keeps no bytecode
  (`PYTHONDONTWRITEBYTECODE`, a read-only collection) the plugin file itself is still compiled per worker: 34.8 to
  27.8 ms. Left, about 7 ms: ansible-core importing the collection's packages (2.2 ms, any collection plugin pays
  it), running the four modules from cached code (2.2 ms), the cache module (0.7 ms), finding and building the
  plugin (2 ms); a round trip to the control process costs the worker about 0.25 ms, two per task.
- Payload by digest (2026-11-29): after the first run of a module in an ansible-playbook run, a task sends about
  5.4 KB of stdin instead of 170-340 KB (`command` 173,940 -> 5,448 bytes; `setup` 339,999 -> 5,411).
- Where a warm run's CPU went (2026-11-29, second session; 1x30 `command`, per task): the forked child about 16 ms,
  of which about 10 ms in the kernel: page faults (about 2,500 per child at about 3.3 us each on this virtual
  machine: the child writes to pages it shares with its parent, reference counts first) and the module's own fork
  and exec of `/bin/true` (about 2.5 ms); the warm parent about 2 ms (its forks); the executor 5-6 ms (NATS,
  signatures, audit records, recognition about 1 ms); the control process 5.5 ms. A child compiled the wrapper
  (0.6 ms), the 170 KB call after it (0.6 ms, mostly the zip's base64 literal) and the module from the payload
  zip twice (zipimport compiles a module once to find it and once to run it: 1.8 ms for `command`, 5-10 ms for
  `file` or `copy`); the warm parent now compiles all of that once and the children run the same code
  (bench/warm_cpu.py: file 33 -> 13 ms, copy 23 -> 13, ping 25 -> 15, setup 163 -> 94). Mitogen runs each module
  in its long-lived target process without a fork, which is where its remaining lead per task comes from; a warm
  child keeps the isolation of a cold run (its own process, session, cwd, environment, atexit) and pays the faults.
- The plugin load in the task worker, third cut (2026-11-29, bench/worker_cost.py, with `PYTHONDONTWRITEBYTECODE=1`
  as on this machine): the plugin file itself was compiled in every worker (3.7 ms); its code now lives in
  `plugin_utils/_connection.py`, loaded from the per-user code cache, and `nats.py` holds the documentation (0.3
  ms to compile): the worker's plugin load went from 11.8 to 9.0 ms (ssh 1.4). Recognising a payload moved from a
  file thread into the event loop and handing a run to its warm parent no longer uses a thread (two thread
  hand-offs less per task).
"""


def _section(path: str, title: str) -> str:
    """A section of docs/performance.md from another benchmark's results file (its first line is its own title)."""
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as handle:
        return "\n## %s\n\n" % title + handle.read().split("\n", 1)[1].lstrip()


def write_performance(connections: str) -> None:
    lab = ""
    if os.path.exists(LAB_RESULTS):
        with open(LAB_RESULTS, encoding="utf-8") as handle:
            lab = handle.read()
    trust = _section(TRUST_RESULTS, "Request signatures (bench/trust_bench.py)")
    trust += _section(WARM_RESULTS, "Warm module runs: CPU per module run (bench/warm_cpu.py)")
    trust += _section(RESILIENCE_RESULTS, "Faults: NATS node kills and executor restarts (bench/resilience_bench.py)")
    text = ("# Performance\n\nFigures from real runs on this project's machine kind (2 cores, Debian 12). "
            "Regenerate with `make bench` (connections) and `make lab-bench` (lab); this file is written by "
            "bench/run_bench.py. Targets are checked here, never in timed tests.\n\n"
            "## Connections: each transport side by side, wall time and CPU\n\n"
            "Issue 18 (item 8): natsops.fleet.nats in agent mode no slower and no more CPU than Mitogen for 1 host x 30 "
            "tasks (<= 1.0x, goal <= 0.8x), no slower than Mitogen for 10 hosts x 10 tasks with forks 10, and 20 hosts x "
            "10 tasks through one zone executor in half the time of direct ssh (pipelining + ControlPersist) and no "
            "slower than Mitogen over ssh. Agent mode is measured warm (`--warm`, the executor's default) and cold "
            "(`--no-warm`); the zone executor warm (runners on the targets) and cold (`ansible_nats_warm: false`).\n\n" + connections + FINDINGS + trust +
            "\n## Test lab\n\n" + (lab.split("\n", 1)[1].lstrip() if lab.startswith("#") else lab))
    with open(PERFORMANCE, "w", encoding="utf-8") as handle:
        handle.write(text)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per scenario, after one warm-up (default 5)")
    parser.add_argument("--fleet-runs", type=int, default=3, help="timed rounds of the 20x10 scenarios (default 3)")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", choices=list(SCENARIOS) + list(EXTRAS),
                        help="run these scenarios alone (a smoke run: docs are not written); one of: %s" % ", ".join(
                            list(SCENARIOS) + list(EXTRAS)))
    parser.add_argument("--no-lab", action="store_true", help="skip the scenarios that need the lab")
    parser.add_argument("--no-docs", action="store_true", help="print the tables only: write neither "
                                                               "bench/results/connections.md nor docs/performance.md")
    parser.add_argument("--keep-connections", action="store_true",
                        help="do not run the connections benchmark again: write docs/performance.md from the last "
                             "run's bench/results/connections.md and the other benchmarks' results")
    args = parser.parse_args(argv)
    if args.keep_connections:
        with open(CONNECTIONS, encoding="utf-8") as handle:
            write_performance(handle.read().split("\n", 2)[2])
        return 0
    if args.runs < 1 or args.fleet_runs < 1:
        parser.error("--runs and --fleet-runs must be at least 1")
    started = time.monotonic()
    scenarios, notes = measure(args.only or list(SCENARIOS) + list(EXTRAS), not args.no_lab, args.runs, args.fleet_runs)
    table = render(scenarios, notes, args.runs, args.fleet_runs)
    print(table)
    print("bench/run_bench.py: %.0f s" % (time.monotonic() - started))
    if args.only or args.no_docs:
        print("(a partial run: bench/results/connections.md and docs/performance.md left as they were)")
        return 0
    os.makedirs(RESULTS, exist_ok=True)
    with open(CONNECTIONS, "w", encoding="utf-8") as handle:
        handle.write("# Connections benchmark\n\n" + table)
    write_performance(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
