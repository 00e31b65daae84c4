# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the test lab (not a test): boot time of 10 hosts and their idle memory.

Run as root: ``python3 bench/lab_bench.py [--hosts 10] [--settle 10]``. The base root is
built (or found in the cache) before the clock starts. Prints a Markdown table and writes it
to bench/results/lab.md.

Method
  * boot: from starting the first systemd-nspawn until every host has run ``true`` over SSH
    (``boot_seconds`` of labctl.up; probes run in parallel). Wall time of the whole ``up``
    (cleanup, bridges, per-host upper dirs and host keys, boot) is shown too.
  * memory, after the hosts idled SETTLE seconds: for each host, every process in its own
    cgroup (its systemd-nspawn and everything inside the container); sum of PSS from
    /proc/PID/smaps_rollup (shared pages, e.g. libraries of the common base root, are split
    between the processes sharing them, so per-host PSS adds up to the real total), and RSS for
    comparison (counts shared pages once per process, so it overstates). Plus the host's tmpfs
    contents (/run, /tmp, /dev/shm inside the container, from df over SSH): that memory belongs to
    no process. Per-host memory = PSS + tmpfs; that is what the target is checked against.
"""

import argparse
import importlib.util
import logging
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "lab.md"
TARGET_BOOT_SECONDS = 15.0
TARGET_MIB_PER_HOST = 60.0


def _load_labctl():
    spec = importlib.util.spec_from_file_location("labctl", ROOT / "tests" / "lab" / "labctl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meminfo():
    values = {}
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            key, value = line.split(":")
            values[key] = int(value.split()[0])
    return values


def _smaps(pid):
    """(PSS, RSS) of a process in KiB, zeros when it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def _host_memory(labctl, host):
    pids = set()
    for cgroup in host["cgroups"]:
        pids.update(labctl._cgroup_pids(cgroup))  # pylint: disable=protected-access
    pss = rss = 0
    for pid in pids:
        one_pss, one_rss = _smaps(pid)
        pss += one_pss
        rss += one_rss
    df = labctl.run_ssh(host["name"], "df -k --output=used -t tmpfs | tail -n +2")
    tmpfs = sum(int(value) for value in df.stdout.split()) if df.returncode == 0 else 0
    return {"name": host["name"], "processes": len(pids), "pss_mib": pss / 1024, "rss_mib": rss / 1024, "tmpfs_mib": tmpfs / 1024,
            "total_mib": (pss + tmpfs) / 1024}


def _report(result):
    rows = result["hosts"]
    mean = {key: sum(r[key] for r in rows) / len(rows) for key in ("pss_mib", "rss_mib", "tmpfs_mib", "total_mib")}
    max_total = max(r["total_mib"] for r in rows)
    boot = result["boot_seconds"]
    lines = [
        "# Lab benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, {_meminfo()['MemTotal'] // 1024} MiB RAM, "
        f"Linux {platform.release()}; base root {'cached' if result['base_cached'] else 'built first (not timed)'}; "
        f"idle memory sampled {result['settle']:.0f} s after all hosts answered ssh.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| hosts | {len(rows)} | |",
        f"| time until all answer ssh | {boot:.2f} s | < {TARGET_BOOT_SECONDS:.0f} s {'(met)' if boot < TARGET_BOOT_SECONDS else '(MISSED)'} |",
        f"| `labctl up` wall time | {result['up_wall']:.2f} s | |",
        f"| idle memory per host, PSS + tmpfs, mean (max) | {mean['total_mib']:.1f} MiB ({max_total:.1f}) | < {TARGET_MIB_PER_HOST:.0f} MiB "
        f"{'(met)' if max_total < TARGET_MIB_PER_HOST else '(MISSED)'} |",
        f"| of which PSS of the host's processes, mean | {mean['pss_mib']:.1f} MiB | |",
        f"| of which tmpfs in the host, mean | {mean['tmpfs_mib']:.1f} MiB | |",
        f"| RSS of the host's processes, mean | {mean['rss_mib']:.1f} MiB | (overstates: shared pages counted per process) |",
        f"| `labctl down` wall time | {result['down_wall']:.2f} s | |",
        "",
        "| host | processes | PSS MiB | tmpfs MiB | PSS + tmpfs MiB | RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['processes']} | {r['pss_mib']:.1f} | {r['tmpfs_mib']:.1f} | {r['total_mib']:.1f} | {r['rss_mib']:.1f} |"
              for r in rows]
    lines += [
        "",
        "Method: boot time runs from starting the first systemd-nspawn until every host has run `true` over SSH "
        "(parallel probes). Memory per host is the sum over every process in the host's own cgroup (its systemd-nspawn "
        "and everything inside the container) of PSS from /proc/PID/smaps_rollup, which splits pages shared between "
        "hosts (the common read-only base root) fairly, so the per-host figures add up to the real total; "
        "the host's tmpfs contents (df inside the container) are added because they belong to no process. "
        "Produced by `python3 bench/lab_bench.py`.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the natsops.fleet test lab (root only).")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--settle", type=float, default=10.0, help="idle seconds before sampling memory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="lab_bench: %(message)s", stream=sys.stderr)
    labctl = _load_labctl()
    reason = labctl.check_prerequisites()
    if reason:
        print(f"lab_bench: cannot run: {reason}", file=sys.stderr)
        return 1
    base_cached = labctl.base_path().is_dir()
    labctl.ensure_base()
    labctl.down()
    try:
        started = time.monotonic()
        info = labctl.up(args.hosts, 0)
        up_wall = time.monotonic() - started
        time.sleep(args.settle)
        hosts = [_host_memory(labctl, host) for host in labctl.status()["hosts"]]
    finally:
        started = time.monotonic()
        labctl.down()
        down_wall = time.monotonic() - started
    report = _report({"hosts": hosts, "boot_seconds": info["boot_seconds"], "up_wall": up_wall, "down_wall": down_wall,
                      "settle": args.settle, "base_cached": base_cached})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
