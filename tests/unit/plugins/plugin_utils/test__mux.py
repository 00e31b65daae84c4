# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os
import socket
import stat
import threading

import pytest

from ansible_collections.natsops.fleet.plugins.plugin_utils import _mux as mux
from ansible_collections.natsops.fleet.plugins.module_utils._errors import (
    ExecutorError, ExecutorTaskError, ExecutorUnreachable,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_frames_round_trip_binary_payloads():
    left, right = socket.socketpair()
    try:
        payload = bytes(range(256)) * 1000  # larger than a socket buffer: send from another thread
        sender = threading.Thread(target=mux.send_frame, args=(left, {"op": "exec", "text": "管理网"}, payload))
        sender.start()
        doc, data = mux.recv_frame(right)
        sender.join(10)
        assert doc == {"op": "exec", "text": "管理网"} and data == payload
        mux.send_frame(left, {"empty": True})
        assert mux.recv_frame(right) == ({"empty": True}, b"")
    finally:
        left.close()
        right.close()


def test_closed_peer_is_an_eof():
    left, right = socket.socketpair()
    left.close()
    with pytest.raises(EOFError):
        mux.recv_frame(right)
    right.close()


def test_control_dir_is_private(home):
    path = mux.control_dir()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    os.chmod(path, 0o755)
    with pytest.raises(ExecutorUnreachable, match="control directory .* must belong to this user with mode 0700"):
        mux.control_dir()


def test_control_path_depends_on_every_option(home):
    base = mux.control_path({"servers": "nats://a:4222", "password": "one", "user": "u"}, 10, 60)
    assert base == mux.control_path({"user": "u", "servers": "nats://a:4222", "password": "one"}, 10, 60)
    assert base != mux.control_path({"servers": "nats://a:4222", "password": "two", "user": "u"}, 10, 60)
    assert base != mux.control_path({"servers": "nats://a:4222", "password": "one", "user": "u"}, 5, 60)
    assert base != mux.control_path({"servers": "nats://a:4222", "password": "one", "user": "u"}, 10, 30)
    assert "one" not in base and base.endswith(".sock")


def test_errors_cross_the_socket_with_their_kind():
    assert isinstance(ExecutorError.from_dict(ExecutorUnreachable("x", "gone").to_dict()), ExecutorUnreachable)
    err = ExecutorError.from_dict(ExecutorTaskError("timeout", "slow").to_dict())
    assert isinstance(err, ExecutorTaskError) and (err.code, err.message) == ("timeout", "slow")


def test_control_process_module_is_found_from_the_collections_root():
    """The control process is started as ``python -m CONTROL_MODULE`` with the collections root on PYTHONPATH."""
    path = os.path.join(mux._collections_root(), *mux.CONTROL_MODULE.split(".")) + ".py"
    assert os.path.isfile(path), path
    assert mux.CONTROL_MODULE.rpartition(".")[0] == mux.__name__.rpartition(".")[0]
