# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.natsops.fleet.plugins.plugin_utils import _codecache as codecache


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _entries(home):
    return sorted(os.listdir(os.path.join(str(home), ".ansible", "natsops", "cache")))


def test_private_dir_is_made_private_and_refused_otherwise(home):
    path = codecache.private_dir("cache")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    os.chmod(path, 0o755)
    with pytest.raises(codecache.NotPrivateError):
        codecache.private_dir("cache")


def test_code_is_kept_and_used_while_its_source_is_unchanged(home, monkeypatch):
    directory = codecache.private_dir("cache")
    source = b"VALUE = 6 * 7\n"
    first = codecache._code(directory, "example", "/somewhere/example.py", source)
    assert len(_entries(home)) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(codecache, "compile", refuse, raising=False)  # the module's own name for the builtin
    kept = codecache._code(directory, "example", "/somewhere/example.py", source)
    assert kept.co_code == first.co_code and kept.co_filename == "/somewhere/example.py"
    namespace = {}
    exec(kept, namespace)  # pylint: disable=exec-used
    assert namespace["VALUE"] == 42


@pytest.mark.parametrize("damage", ["source", "truncated", "flipped"])
def test_code_is_compiled_again_when_anything_differs(home, damage):
    directory = codecache.private_dir("cache")
    codecache._code(directory, "example", "/somewhere/example.py", b"VALUE = 1\n")
    entry = os.path.join(directory, _entries(home)[0])
    source = b"VALUE = 1\n"
    if damage == "source":
        source = b"VALUE = 2\n"
    else:
        with open(entry, "rb") as handle:
            data = handle.read()
        data = data[:-3] if damage == "truncated" else data[:-1] + bytes([data[-1] ^ 1])
        with open(entry, "wb") as handle:
            handle.write(data)
    namespace = {}
    exec(codecache._code(directory, "example", "/somewhere/example.py", source), namespace)  # pylint: disable=exec-used
    assert namespace["VALUE"] == (2 if damage == "source" else 1)
    assert _entries(home) == [os.path.basename(entry)]  # replaced, one entry per module and install


def test_cached_value_is_made_once_and_again_when_invalid_or_its_key_changes(home):
    made = []

    def make():
        made.append(1)
        return {"options": [1, 2.0, None, True, "管理网"]}

    assert codecache.cached_value("v", "/origin", [b"a"], make) == make()
    made.clear()
    assert codecache.cached_value("v", "/origin", [b"a"], make) == {"options": [1, 2.0, None, True, "管理网"]}
    assert not made
    codecache.cached_value("v", "/origin", [b"a"], make, valid=lambda value: False)
    codecache.cached_value("v", "/origin", [b"b"], make)
    assert len(made) == 2


def test_cached_value_not_marshallable_is_returned_not_kept(home):
    value = codecache.cached_value("v", "/origin", [b"a"], lambda: object)
    assert value is object
    assert _entries(home) == []


def test_nothing_is_kept_without_a_private_directory(home):
    os.makedirs(os.path.join(str(home), ".ansible", "natsops", "cache"), mode=0o755)
    os.chmod(os.path.join(str(home), ".ansible", "natsops", "cache"), 0o755)
    assert codecache.cached_value("v", "/origin", [b"a"], lambda: 5) == 5
    assert _entries(home) == []
    codecache.preload(["plugin_utils._no_such_module"])  # nothing to do, nothing raised


def test_a_worker_imports_the_plugin_modules_from_the_cache(home):
    """Two processes load the connection plugin as a task's worker does: the first compiles and keeps, the second runs
    the kept code; the modules are the same either way."""
    root = os.path.abspath(codecache.__file__)
    for _part in codecache.__name__.split("."):
        root = os.path.dirname(root)
    script = textwrap.dedent("""
        import json, sys
        from ansible.plugins.loader import connection_loader, init_plugin_loader
        from ansible.playbook.play_context import PlayContext
        init_plugin_loader([sys.argv[1]])
        connection_loader.get("natsops.fleet.nats", PlayContext())
        names = [n for n in sys.modules if n.startswith("ansible_collections.natsops.fleet.plugins.")]
        print(json.dumps(dict((n, [type(sys.modules[n].__loader__).__name__, getattr(sys.modules[n], "__file__", None)])
                              for n in names)))
    """)
    env = dict(os.environ, HOME=str(home))
    runs = [subprocess.run([sys.executable, "-c", script, root], env=env, capture_output=True, text=True, check=True)
            for _run in range(2)]
    first, second = (json.loads(run.stdout) for run in runs)
    for name in ("module_utils.wire.names", "module_utils._errors", "plugin_utils._options", "plugin_utils._mux",
                 "plugin_utils._connection"):
        loader, path = first[codecache.PLUGINS + name]
        assert loader == "_CodeLoader" and path.endswith(name.replace(".", os.sep) + ".py")
        assert second[codecache.PLUGINS + name] == first[codecache.PLUGINS + name]
    assert len(_entries(home)) == 6  # five modules (the plugin's code among them) and the option definitions
    # the cache itself is loaded as ansible-core loads the plugin file (Python's loader, __pycache__ where it may)
    assert first[codecache.PLUGINS + "plugin_utils._codecache"][0] == "SourceFileLoader"
    # the kept option definitions spare the second worker even the documentation fragments
    assert codecache.PLUGINS + "doc_fragments.nats" in first and codecache.PLUGINS + "doc_fragments.nats" not in second
