# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make the session-scoped ``lab`` fixture (pytest_lab.py) available to the tests in this directory."""

from pytest_lab import lab, pytest_configure, pytest_report_header  # noqa: F401  pylint: disable=unused-import
