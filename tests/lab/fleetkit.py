# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the role tests on the lab share: inventories, running a playbook and reading its recap, TLS files,
and the executor wheelhouse built from this repository."""

import datetime
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLAYBOOKS = os.path.join(ROOT, "playbooks")
# what the lab tests import besides this module (conftest.py imports it first): the embedded default (tools/),
# the collection as ansible finds it (.build/collections) and the end-to-end tests' helpers (tests/e2e)
for _path in (os.path.join(ROOT, "tests", "e2e"), os.path.join(ROOT, ".build", "collections"), os.path.join(ROOT, "tools")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import devenv  # noqa: E402  pylint: disable=wrong-import-position


def ssh_vars(lab):
    """Inventory vars that let ansible-playbook reach the lab hosts as root."""
    return {"ansible_user": "root", "ansible_ssh_private_key_file": lab.info["ssh_private_key_file"],
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=%s -o IdentitiesOnly=yes"
                                       % lab.info["known_hosts"],
            "ansible_python_interpreter": "/usr/bin/python3"}


def write_inventory(lab, path, groups):
    """``groups``: {group: {"vars": {...}, "hosts": {name: hostvars}}}; returns the path (JSON inventory)."""
    with open(str(path), "w", encoding="utf-8") as handle:
        json.dump({"all": {"vars": ssh_vars(lab), "children": groups}}, handle, ensure_ascii=False)
    return str(path)


def play(playbook, inventory, *extra):
    """Run playbooks/<playbook> against the inventory; returns the CompletedProcess (text)."""
    return subprocess.run([devenv.tool("ansible-playbook"), "-i", inventory, os.path.join(PLAYBOOKS, playbook)] + list(extra),
                          env=devenv.ansible_env(), capture_output=True, text=True, timeout=900, check=False)


def changed_counts(result):
    """The play succeeded: the changed= counts of its recap (one per host)."""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    counts = [int(c) for c in re.findall(r"changed=(\d+)\s+unreachable=0\s+failed=0", result.stdout)]
    assert counts, result.stdout[-4000:]
    return counts


def recap(result, changed):
    """The play succeeded with changed=0 on every host (changed=0), or a change somewhere (changed=1)."""
    counts = changed_counts(result)
    assert (max(counts) == 0) if changed == 0 else (max(counts) > 0), result.stdout[-4000:]


def hostname_through(client):
    """Run ``hostname`` through a connected ExecutorClient, close it, return the name."""
    try:
        return client.exec_command(command="hostname")[1].decode().strip()
    finally:
        client.close()


def tls_files(directory, addresses, serial):
    """A CA and a server certificate for ``addresses`` (IP SANs), as PEM files; returns (ca, cert, key) paths."""
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
    from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "natsops lab CA %d" % serial)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(serial).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(serial + 1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(str(directory), name) for name in ("ca.pem", "cert.pem", "key.pem")]
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        with open(path, "wb") as handle:
            handle.write(data)
    return paths


def build_wheelhouse(path, scratch, version=None):
    """The executor wheel (built from a copy of what it is made of: setuptools would write build/ into the
    checkout) and pip, as the executor role's air-gapped install takes them; ``version`` overrides the package's
    version (an upgrade to roll out)."""
    for name in ("pyproject.toml", "docs/executor.md", "executor/natsops_executor", "plugins/module_utils/wire"):
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(scratch, name), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            os.makedirs(os.path.dirname(os.path.join(scratch, name)), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), os.path.join(scratch, name))
    if version:
        init = os.path.join(scratch, "executor", "natsops_executor", "__init__.py")
        with open(init, encoding="utf-8") as handle:
            text = re.sub(r'__version__ = "[^"]*"', '__version__ = "%s"' % version, handle.read())
        with open(init, "w", encoding="utf-8") as handle:
            handle.write(text)
    pip = [devenv.tool("python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "-w", path, scratch], check=True, timeout=900)
    subprocess.run(pip + ["download", "-d", path, "pip"], check=True, timeout=300)
    return path


def new_signing_key(path):
    """A new NKey seed file (mode 0600) at ``path``; returns the path."""
    from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing  # pylint: disable=import-outside-toplevel
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(signing.generate_seed() + b"\n")
    return path


def public_key(path):
    """The NKey public key of the seed in a file on the controller."""
    from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing  # pylint: disable=import-outside-toplevel
    return signing.SigningKey.from_file(path).public_key


def host_public_key(lab, host, seed_file, python):
    """The NKey public key of a seed file on a lab host, computed there with ``python`` (which has nkeys)."""
    code = "import nkeys, sys; print(nkeys.from_seed(bytearray(open(sys.argv[1], 'rb').read().strip())).public_key.decode())"
    out = lab.ssh(host, '%s -c "%s" %s' % (python, code, seed_file))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def pins(path):
    """The lines of a known_executors file as (instance id, public key, comment) tuples, comment lines left out."""
    found = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields, _hash, comment = line.partition("#")
            if fields.split():
                found.append(tuple(fields.split()) + (comment.strip(),))
    return found


def remove_units(lab, hosts, unit):
    """Stop and remove a systemd unit the roles installed (test cleanup)."""
    for host in hosts:
        lab.ssh(host["name"], "systemctl disable --now %s 2>/dev/null; rm -f /etc/systemd/system/%s.service; "
                              "systemctl daemon-reload" % (unit, unit))
