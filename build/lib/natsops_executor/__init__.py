# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops-executor: serves natsops.fleet tasks from NATS on the host it runs on."""

__version__ = "0.1.0"
