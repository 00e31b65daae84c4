# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make the session-scoped ``lab`` fixture (pytest_lab.py) available to the tests in this directory."""

import os
import tempfile

from pytest_lab import lab, pytest_configure, pytest_report_header  # noqa: F401  pylint: disable=unused-import

import pytest

import fleetkit

# the lab tests pin executor keys in a file of their own, never in the user's ~/.config/natsops/known_executors, and
# sign with a key of their own, never ~/.config/natsops/signing.nk (the executor role would make it there otherwise);
# the tests of the roles pass files of their own to the roles and their clients
_SESSION = tempfile.mkdtemp(prefix="natsops-lab-")
os.environ["NATSOPS_KNOWN_EXECUTORS"] = os.path.join(_SESSION, "known_executors")
os.environ["NATSOPS_SIGNING_KEY"] = fleetkit.new_signing_key(os.path.join(_SESSION, "signing.nk"))


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """The executor wheel and pip, built once per session from this repository."""
    return fleetkit.build_wheelhouse(str(tmp_path_factory.mktemp("wheelhouse")), str(tmp_path_factory.mktemp("source")))
