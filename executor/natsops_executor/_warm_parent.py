# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to warm.py: the warm parent, the program a warm runner's interpreter runs.

It is never imported by the executor: warm.py reads this file and starts the interpreter a module run names with
a short ``-c`` line that reads this source from stdin and runs it (so it needs nothing but the standard library of
that interpreter, ps shows one line, and it runs in a namespace of its own: ``__main__`` stays as pristine as in
a cold interpreter).

Protocol (warm.py is the other end):
- control socket (fd in ``sys.argv[1]``), executor -> parent: frames ``>II`` (header length, body length), a JSON
  header, a body. ``{"op": "init"}`` + the payload zip: import ansible.module_utils.basic and the AnsiballZ loader
  from it. ``{"op": "run", "job": N, "cwd": ..., "umask": ...}`` + the module's stdin source, with three file
  descriptors (stdin, stdout, stderr of the job) passed as SCM_RIGHTS: fork a child that runs the source.
  End of file: the executor is gone; kill every child's process group and exit.
- stdout, parent -> executor: one JSON object a line: ``{"ready": [zip members imported]}``, ``{"failed": why}``,
  ``{"job": N, "pid": P}``, ``{"job": N, "status": raw wait status}``, ``{"job": N, "error": why}``.
"""

import json
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading

_FRAME = struct.Struct(">II")
_FDS_PER_RUN = 3


class _Stop(Exception):
    """SIGTERM (or the executor's death signal): stop."""


def _emit(event):
    data = (json.dumps(event) + "\n").encode("utf-8")
    while data:
        data = data[os.write(1, data):]


def _on_term(_signum, _frame):
    raise _Stop()


def _on_child(_signum, _frame):
    pass  # the wakeup fd wakes the loop


def _die_with_executor(executor_pid):
    """Backstop for the end of file on the control socket: SIGTERM when the executor dies (Linux)."""
    try:
        import ctypes  # pylint: disable=import-outside-toplevel
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, ImportError):
        pass
    if os.getppid() != executor_pid:
        raise _Stop()


class _Parent:
    def __init__(self, ctl_fd):
        self.ctl = socket.socket(fileno=ctl_fd)
        self.ctl.setblocking(True)
        self.buffer = b""
        self.fds = []
        self.children = {}  # pid -> job
        self.initial_path = list(sys.path)
        self.main_dict = dict(sys.modules["__main__"].__dict__)
        self.tempdir = None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    # ------------------------------------------------------------ warm up

    def init(self, zip_bytes):
        self.tempdir = tempfile.mkdtemp(prefix="natsops_warm_")  # not TemporaryDirectory: no atexit in children
        path = os.path.join(self.tempdir, "module_utils.zip")
        with open(path, "wb") as handle:
            handle.write(zip_bytes)
        sys.path = [path] + [p for p in self.initial_path if p not in ("", ".")]
        try:
            import ansible.module_utils.basic  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
            from ansible.module_utils._internal._ansiballz import _loader  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        finally:
            sys.path = list(self.initial_path)
        prefix = path + os.sep
        members = []
        for name, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None) or ""
            if origin.startswith(prefix):
                members.append(origin[len(prefix):])
            locations = getattr(module, "__path__", None)
            if name.startswith("ansible") and locations is not None and any(str(p).startswith(prefix) for p in locations):
                self._follow_payload(module, name)
        if threading.active_count() != 1:
            raise RuntimeError("importing module_utils started a thread: forking would not be safe")
        return sorted(members)

    @staticmethod
    def _follow_payload(package, name):
        """Submodules not imported here (the module itself, module_utils only some modules use) are found in the
        payload zip the wrapper puts first on sys.path, as in a cold interpreter, before this parent's copy."""
        parts = name.split(".")

        class _PayloadPath(list):
            def __iter__(self):
                first = sys.path[0] if sys.path else ""
                if first.endswith(".zip") and os.path.basename(first).startswith("ansible_"):
                    yield os.path.join(first, *parts)
                yield from list.__iter__(self)

        follow = _PayloadPath(package.__path__)
        package.__path__ = follow
        if getattr(package, "__spec__", None) is not None:
            package.__spec__.submodule_search_locations = follow

    # ------------------------------------------------------------ the loop

    def serve(self):
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, _on_child)
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, _event in poller.poll():
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif not self.receive():
                    return

    def receive(self):
        data, ancdata, _flags, _addr = self.ctl.recvmsg(1 << 20, socket.CMSG_SPACE(_FDS_PER_RUN * 4 * 4))
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(cdata) - len(cdata) % 4
                self.fds.extend(struct.unpack("%di" % (usable // 4), cdata[:usable]))
        if not data:
            return False
        self.buffer += data
        while len(self.buffer) >= _FRAME.size:
            hlen, blen = _FRAME.unpack_from(self.buffer)
            end = _FRAME.size + hlen + blen
            if len(self.buffer) < end:
                break
            header = json.loads(self.buffer[_FRAME.size:_FRAME.size + hlen].decode("utf-8"))
            body = self.buffer[_FRAME.size + hlen:end]
            self.buffer = self.buffer[end:]
            self.handle(header, body)
        return True

    def handle(self, header, body):
        if header.get("op") == "init":
            try:
                _emit({"ready": self.init(body)})
            except Exception as exc:  # pylint: disable=broad-except
                _emit({"failed": "%s: %s" % (type(exc).__name__, exc)})
            return
        job = header["job"]
        fds, self.fds = self.fds[:_FDS_PER_RUN], self.fds[_FDS_PER_RUN:]
        try:
            if len(fds) != _FDS_PER_RUN:
                raise RuntimeError("the job's stdio descriptors did not arrive")
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            gate_r, gate_w = os.pipe()
            ready_r, ready_w = os.pipe()
            pid = os.fork()
        except (OSError, RuntimeError) as exc:
            for fd in fds:
                os.close(fd)
            _emit({"job": job, "error": str(exc)})
            return
        if pid == 0:
            os.close(gate_w)
            os.close(ready_r)
            self.child(fds, header, body, gate_r, ready_w)  # never returns
        os.close(gate_r)
        os.close(ready_w)
        os.read(ready_r, 1)  # its own session and process group exist (or it is gone): the pid can be reported
        os.close(ready_r)
        os.close(fds[0])
        # stdout and stderr stay open here until the child is reaped, as the cold run's shell keeps them
        self.children[pid] = (job, fds[1], fds[2])
        _emit({"job": job, "pid": pid})
        # the child starts the module only now: had this process died before the executor learnt the pid (so
        # that it can supervise, or fall back to a cold run), the child would find the gate closed and give up
        os.write(gate_w, b"g")
        os.close(gate_w)

    def reap(self):
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            if entry is None:
                continue
            job, out_fd, err_fd = entry
            if os.WIFSIGNALED(status):
                _shell_says(err_fd, status)
            os.close(out_fd)
            os.close(err_fd)
            _emit({"job": job, "status": status})

    def stop(self):
        for pid in list(self.children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.tempdir:
            shutil.rmtree(self.tempdir, ignore_errors=True)

    # ------------------------------------------------------------ the child: a cold interpreter's twin

    def child(self, fds, header, body, gate, ready):
        status = 1
        try:
            os.setsid()
            os.write(ready, b"r")
            os.close(ready)
            if os.read(gate, 1) != b"g":
                os._exit(127)  # pylint: disable=protected-access
            os.close(gate)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            self.ctl.detach()
            os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            os.chdir(header["cwd"])
            os.environ["PWD"] = header["pwd"]  # as the shell exports it; everything else is the parent's
            os.umask(header["umask"])
            sys.argv[:] = [""]
            sys.orig_argv[:] = [sys.orig_argv[0]] if getattr(sys, "orig_argv", None) else []
            sys.path[:] = self.initial_path
            main = sys.modules["__main__"]
            main.__dict__.clear()
            main.__dict__.update(self.main_dict)
            code = compile(body.decode("utf-8"), "<stdin>", "exec", dont_inherit=True)
        except BaseException as exc:  # pylint: disable=broad-except
            try:
                os.write(2, ("natsops warm runner: cannot start the module: %s\n" % exc).encode("utf-8", "replace"))
            finally:
                os._exit(127)  # pylint: disable=protected-access
        try:
            exec(code, main.__dict__)  # pylint: disable=exec-used
            status = 0
        except SystemExit as exc:
            status = _exit_status(exc)
        except BaseException:  # pylint: disable=broad-except
            sys.excepthook(*sys.exc_info())
            status = 1
        os._exit(_finalize(status))  # pylint: disable=protected-access


def _shell_says(fd, status):
    """What /bin/sh (dash) prints when the command it waits for dies by a signal: its description, except for
    SIGINT and SIGPIPE."""
    signum = os.WTERMSIG(status)
    if signum in (signal.SIGINT, signal.SIGPIPE):
        return
    text = signal.strsignal(signum) or "Signal %d" % signum
    if os.WCOREDUMP(status):
        text += " (core dumped)"
    try:
        os.write(fd, (text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _exit_status(exc):
    """What the interpreter exits with for an uncaught SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write("%s\n" % (code,))
    except Exception:  # pylint: disable=broad-except
        pass
    return 1


def _finalize(status):
    """Interpreter shutdown, in its order: wait for non-daemon threads, run atexit handlers, flush stdio."""
    threading_module = sys.modules.get("threading")
    if threading_module is not None:
        try:
            threading_module._shutdown()  # pylint: disable=protected-access
        except BaseException:  # pylint: disable=broad-except
            pass
    import atexit  # pylint: disable=import-outside-toplevel
    atexit._run_exitfuncs()  # pylint: disable=protected-access
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # pylint: disable=broad-except
            if status == 0:
                status = 120
    return status


def main():
    executor_pid = os.getppid()
    # the program came on stdin (warm.py's boot line), now at end of file: stdin is /dev/null from here on
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGTERM, _on_term)
    parent = _Parent(int(sys.argv[1]))
    try:
        _die_with_executor(executor_pid)
        parent.serve()
    except _Stop:
        pass
    finally:
        parent.stop()


if __name__ == "_natsops_warm_parent":  # exec'd by warm.py; never run on import
    main()
