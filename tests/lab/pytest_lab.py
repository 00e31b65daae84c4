# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pytest plugin: the session-scoped ``lab`` fixture (real systemd + sshd hosts, see labctl.py).

Use it from a conftest.py::

    from pytest_lab import lab, pytest_configure, pytest_report_header  # noqa: F401  pylint: disable=unused-import

and size the lab with a marker on the tests (or module) that need it; the session lab gets
the largest size any collected test asks for::

    pytestmark = pytest.mark.lab(hosts=2, zone_hosts=1)

The lab boots once per session and is always torn down at the end. Without root,
systemd-nspawn or debootstrap the tests are skipped with the reason (set
NATSOPS_LAB_REQUIRED=1, as CI does, to fail instead). NATSOPS_LAB_REUSE=1 keeps a lab
started with ``make lab-up`` when it is big enough, and leaves it running afterwards.
"""

import json
import os

import pytest

import labctl

DEFAULT_HOSTS = 3
DEFAULT_ZONE_HOSTS = 0


class Lab:
    """The running lab: its description (``info``, as in .lab/hosts.json) and helpers."""

    def __init__(self, hosts, zone_hosts):
        self.size = (hosts, zone_hosts)
        self.info = {}

    def start(self):
        """Boot (or reboot) the lab at its size; replaces whatever lab ran before."""
        self.info = labctl.up(*self.size)
        return self.info

    def stop(self):
        """Tear the lab down."""
        return labctl.down()

    @property
    def hosts(self):
        return self.info["hosts"]

    def host(self, name):
        return next(h for h in self.hosts if h["name"] == name)

    def by_role(self, role):
        return [h for h in self.hosts if h["role"] == role]

    def on_network(self, network):
        return [h for h in self.hosts if network in h["addresses"]]

    def known_hosts(self, hosts, network="zone", keys_of=None):
        """known_hosts text for these hosts' addresses on ``network``; ``keys_of`` maps a host name to the
        lab host whose key to write instead (a deliberately wrong entry)."""
        by_name = dict((h["name"], h) for h in self.hosts)
        lines = []
        for host in hosts:
            key_host = by_name.get((keys_of or {}).get(host["name"]), host)
            lines.append("%s %s\n" % (host["addresses"][network], " ".join(key_host["host_key"].split()[:2])))
        return "".join(lines)

    def ssh(self, name, command, user=None, input_text=None, timeout=60):
        """Run a command on a lab host; returns subprocess.CompletedProcess (text)."""
        return labctl.run_ssh(name, command, user=user, input_text=input_text, timeout=timeout)


def pytest_configure(config):
    config.addinivalue_line("markers", "lab(hosts=3, zone_hosts=0): the test needs the systemd-nspawn lab with at least this many hosts")


def pytest_report_header(config):  # pylint: disable=unused-argument
    reason = labctl.check_prerequisites()
    return f"natsops lab: {'unavailable, lab tests will skip: ' + reason if reason else 'available'}"


def _wanted_size(session):
    """The largest lab any collected test asks for (tests without a lab marker ask for the defaults)."""
    hosts, zone_hosts = 1, 0
    for item in session.items:
        if "lab" not in getattr(item, "fixturenames", ()):
            continue
        mark = item.get_closest_marker("lab")
        kwargs = mark.kwargs if mark else {}
        hosts = max(hosts, kwargs.get("hosts", DEFAULT_HOSTS))
        zone_hosts = max(zone_hosts, kwargs.get("zone_hosts", DEFAULT_ZONE_HOSTS))
    return hosts, zone_hosts


@pytest.fixture(scope="session")
def lab(request):
    """Boot the lab once for the session; always tear it down."""
    reason = labctl.check_prerequisites()
    if reason:
        if os.environ.get("NATSOPS_LAB_REQUIRED") == "1":
            pytest.fail(f"natsops lab required (NATSOPS_LAB_REQUIRED=1) but unavailable: {reason}")
        pytest.skip(f"natsops lab unavailable: {reason}")
    hosts, zone_hosts = _wanted_size(request.session)
    the_lab = Lab(hosts, zone_hosts)
    if os.environ.get("NATSOPS_LAB_REUSE") == "1":
        current = labctl.status()
        names = {h["name"] for h in current["hosts"]}
        wanted = {h["name"] for h in labctl.plan(hosts, zone_hosts)}
        if current["running"] and wanted <= names and labctl.HOSTS_JSON.exists():
            the_lab.info = json.loads(labctl.HOSTS_JSON.read_text(encoding="utf-8"))
            yield the_lab
            return
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.stop()
