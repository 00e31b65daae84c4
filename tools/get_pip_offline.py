# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for the get-pip.py bootstrap script ansible-test downloads for its --venv mode.

ansible-test fetches get-pip.py from a host this build machine cannot reach; it runs
the script as ``python get-pip.py [pip options] [--no-setuptools] [--no-wheel] PACKAGES``.
This script does the same with the interpreter's own ensurepip plus the package index
pip is configured for. `make sanity` installs it into ansible-test's cache.
"""

import subprocess
import sys


def main(argv):
    args = [a for a in argv if a not in ("--no-setuptools", "--no-wheel")]
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"],
                          stdout=subprocess.DEVNULL)
    return subprocess.call([sys.executable, "-m", "pip", "install", "--quiet"] + args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
