# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the digest natsops-executor's warm runner allowlists (executor/natsops_executor/warm_allowlist.json) for
an ansible-core: the sha256 of the comment-stripped AnsiballZ wrapper as a pipelined module's stdin carries it,
after the shebang line. Without arguments: the installed ansible-core; with wheel files: each of them.

    python tools/warm_allowlist.py [ansible_core-X.Y.Z-py3-none-any.whl ...]
"""

from __future__ import annotations

import hashlib
import re
import sys
import zipfile

WRAPPER = "ansible/_internal/_ansiballz/_wrapper.py"
PLACEHOLDER = "# shebang placeholder"


def strip_comments(source: str) -> str:
    """ansible.executor.module_common._strip_comments, as ansible-core 2.19 applies it."""
    lines = []
    for line in source.splitlines():
        stripped = line.strip()
        if (not stripped or stripped.startswith("#")) and stripped != PLACEHOLDER:
            line = ""
        lines.append(line)
    return "\n".join(lines)


def digest(wrapper_source: str) -> str:
    code = strip_comments(wrapper_source).replace(PLACEHOLDER, "#!PYTHON")
    return hashlib.sha256(code.partition("\n")[2].encode("utf-8")).hexdigest()


def main(argv: list) -> int:
    if not argv:
        import ansible._internal._ansiballz as ansiballz  # pylint: disable=import-outside-toplevel
        from ansible.release import __version__  # pylint: disable=import-outside-toplevel
        with open(ansiballz.__file__.replace("__init__.py", "_wrapper.py"), encoding="utf-8") as handle:
            print("%s %s" % (digest(handle.read()), __version__))
        return 0
    for wheel in argv:
        version = re.search(r"ansible_core-([^-]+)-", wheel)
        with zipfile.ZipFile(wheel) as archive:
            if WRAPPER not in archive.namelist():
                print("%s: no %s (not a 2.19-style AnsiballZ wrapper)" % (wheel, WRAPPER))
                continue
            print("%s %s" % (digest(archive.read(WRAPPER).decode("utf-8")), version.group(1) if version else wheel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
