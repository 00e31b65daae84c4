# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the bench scripts find things, and the import path they share.

Imported first by every bench script (``from _paths import ...``): it puts tools/ (devenv), tests/lab (labctl),
tests/executor (ansiballz_payloads) and the checkout's ansible_collections tree on ``sys.path``.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
COLLECTIONS = os.path.join(ROOT, ".build", "collections")

for _path in (COLLECTIONS, os.path.join(ROOT, "tests", "executor"), os.path.join(ROOT, "tests", "lab"),
              os.path.join(ROOT, "tools")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
