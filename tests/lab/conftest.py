# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make the session-scoped ``lab`` fixture (pytest_lab.py) available to the tests in this directory."""

from pytest_lab import lab, pytest_configure, pytest_report_header  # noqa: F401  pylint: disable=unused-import

import pytest  # noqa: E402  pylint: disable=wrong-import-position

import fleetkit  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """The executor wheel and pip, built once per session from this repository."""
    return fleetkit.build_wheelhouse(str(tmp_path_factory.mktemp("wheelhouse")), str(tmp_path_factory.mktemp("source")))
