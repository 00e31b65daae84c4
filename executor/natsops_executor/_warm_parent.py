# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to warm.py: the warm parent, the program a warm runner's interpreter runs.

It never runs in the executor (warm.py imports only its rules for where the wrapper ends and where the payload's
literal is, ``_TAIL`` and ``_zip_literal``, so that both ends split a run alike): warm.py reads this file and starts
the interpreter a module run names with a short ``-c`` line that reads this source from stdin and runs it (so it
needs nothing but the standard library of that interpreter, ps shows one line, and it runs in a namespace of its
own: ``__main__`` stays as pristine as in a cold interpreter).

Command line: ``PYTHON -c BOOT LENGTH MODE ARG``: the boot line reads LENGTH bytes of this program from stdin.
MODE ``socket`` (agent mode, warm.py; ARG: the control socket's fd) or ``stream`` (zone mode, warm_remote.py, over an
SSH channel: stdin and stdout are the control stream; ARG: seconds without a frame and without children after which
the runner exits on its own, should its executor vanish without closing the channel).

Protocol: executor -> parent, frames ``>II`` (header length, body length), a JSON header, a body:
``{"op": "init"}`` + the payload zip: import ansible.module_utils.basic and the AnsiballZ loader from it.
``{"op": "run", "job": N, "cwd": ..., "pwd": ..., "umask": ..., "zip": sha256 of the payload's base64}`` + the
module's stdin source: fork a child that runs the source; in socket mode with three file descriptors (stdin,
stdout, stderr of the job) passed as SCM_RIGHTS, in stream mode the parent makes the child's pipes and relays its
output (cwd, pwd, umask may be null: the parent's own). ``{"op": "signal", "job": N, "signal": S}`` (stream mode): signal the child's process group.
End of file: the executor is gone; kill every child's process group and exit.
Parent -> executor: socket mode, one JSON object a line on stdout; stream mode, frames on stdout:
``{"ready": [zip members imported]}``, ``{"failed": why}``, ``{"job": N, "pid": P}``, ``{"job": N, "status": raw
wait status}``, ``{"job": N, "error": why}``; stream mode also ``{"job": N, "out": "stdout" | "stderr"}`` + data
(all of a job's output comes before its status).
"""

import __future__
import base64
import collections
import hashlib
import io
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
import warnings
import zipfile
import zipimport

_FRAME = struct.Struct(">II")
_FDS_PER_RUN = 3
SYNC = b"\x00natsops-warm-runner\x00"  # stream mode: the first bytes of the runner itself on stdout
# where the wrapper ends and its one _ansiballz_main(...) call begins (as ansible-core writes it; warm.py checks it)
_TAIL = '\n\n\nif __name__ == "__main__":\n    _ansiballz_main(\n'
_ZIP_START = "\nzip_data='"
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
# imported by every module run after the wrapper, from the standard library: the codec zipfile decodes the payload's
# member names with (payload files are not: a later payload may carry other bytes, or none of them)
_EVERY_RUN = ("encodings.cp437",)
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag
_MAX_SOURCES = 8 * 1024 * 1024  # bytes of module source whose compiled code is kept (oldest dropped first)
_MAX_LEARNT = 4 * 1024 * 1024   # bytes of module source compiled at most for one payload (before its run's fork)
_MAX_ZIPS = 64                  # payload zips whose members were compiled, remembered by digest


def _refile(code, filename):
    """``code`` (and the code nested in it) as compiled under ``filename``."""
    consts = tuple(_refile(c, filename) if isinstance(c, type(code)) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _compiled_quietly(how, *args):
    """``how(*args)``: code compiled here for a child, or None when compiling it fails or warns (SyntaxWarning, ...):
    the child compiles that itself, so that a warning goes to the module's stderr as in a cold run."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            code = how(*args)
        except (SyntaxError, ValueError):
            return None
    return None if said else code


class _Sources(object):
    """Module sources compiled once in the parent, for its children: the module a run names and the module_utils
    it imports later come from that run's payload zip, which zipimport compiles from source in every child (twice
    for the module: once to find it, once to run it). Here the members of each new payload are compiled before the
    fork, keyed by the SHA-256 of their bytes; a child's zipimport gets the code compiled from identical bytes under
    its own file name, and compiles anything else itself. Python 3.8 and later (zipimport in Python, code.replace);
    elsewhere children compile as before."""

    def __init__(self):
        self.original = getattr(zipimport, "_compile_source", None)
        self.usable = self.original is not None and hasattr(type(_refile.__code__), "replace")
        self.codes = collections.OrderedDict()  # sha256 of the source -> (code, source length)
        self.size = 0
        self.zips = collections.OrderedDict()

    def install(self):
        """zipimport compiles through this from now on, in this process and the children it forks."""
        if self.usable:
            zipimport._compile_source = self.compile_source  # pylint: disable=protected-access

    def compile_source(self, pathname, source):
        """zipimport's own step, in a child: the code compiled from these bytes, under this path."""
        entry = self.codes.get(hashlib.sha256(source).digest())
        if entry is None:
            return self.original(pathname, source)
        return _refile(entry[0], pathname)

    def wants(self, token):
        """Whether the members of the payload zip with digest ``token`` are still to be compiled."""
        return self.usable and bool(token) and token not in self.zips

    def learn(self, token, zip_data):
        """Compile the members of a payload zip (base64 ``zip_data``, digest ``token``) this parent has not imported
        and has no code for (at most _MAX_LEARNT bytes of them: the run waits for it)."""
        if not self.wants(token):
            return
        budget = _MAX_LEARNT
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(zip_data))) as archive:
            for info in archive.infolist():
                name = info.filename
                if not name.endswith(".py") or info.file_size > min(budget, _MAX_SOURCES // 8):
                    continue
                module = name[:-3].replace("/", ".")
                if module.endswith(".__init__"):
                    module = module[:-9]
                if module in sys.modules:
                    continue  # imported here: children never compile it
                source = archive.read(name)
                key = hashlib.sha256(source).digest()
                if key in self.codes:
                    continue
                budget -= len(source)
                code = _compiled_quietly(self.original, "natsops-warm-parent/" + name, source)
                if code is None:
                    continue  # the child compiles it, and warns or fails as a cold run would
                self.codes[key] = (code, len(source))
                self.size += len(source)
                while self.size > _MAX_SOURCES:
                    _key, (_code, length) = self.codes.popitem(last=False)
                    self.size -= length
        self.zips[token] = None
        while len(self.zips) > _MAX_ZIPS:
            self.zips.popitem(last=False)


class _Stop(Exception):
    """SIGTERM (or the executor's death signal): stop."""


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


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
    def __init__(self, ctl_fd, idle=None):
        """Socket mode with ``ctl_fd`` (the control socket), else stream mode on fds 0 and 1 (``idle``: see above)."""
        self.ctl = socket.socket(fileno=ctl_fd) if ctl_fd is not None else None
        if self.ctl is not None:
            self.ctl.setblocking(True)
        self.idle = idle
        self.buffer = b""
        self.fds = []
        self.children = {}  # pid -> (job, out fd, err fd): socket mode, the job's fds, closed once it is reaped
        self.outputs = {}   # stream mode: read end of a child's pipe -> (job, "stdout" | "stderr")
        self.ended = {}     # stream mode: job -> (wait status, what the shell says), sent once its output ended too
        self.groups = {}    # job -> its process group (the child's pid) until its status is sent
        self.initial_path = list(sys.path)
        self.main_dict = dict(sys.modules["__main__"].__dict__)
        self.tempdir = None
        self.sources = _Sources()
        self.wrappers = collections.OrderedDict()  # wrapper source -> its code, the last few
        self.placeholder = "natsops-zip-" + base64.b32encode(os.urandom(10)).decode("ascii")
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def emit(self, event, body=b""):
        """An event for the executor: a JSON line (socket mode), a frame (stream mode)."""
        if self.ctl is not None:
            _write_all(1, (json.dumps(event) + "\n").encode("utf-8"))
        else:
            head = json.dumps(event).encode("utf-8")
            _write_all(1, _FRAME.pack(len(head), len(body)) + head + body)

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
            for name in _EVERY_RUN:
                try:
                    __import__(name)
                except ImportError:
                    pass  # an ansible-core without it
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
        self.sources.install()
        return sorted(members)

    # ------------------------------------------------------------ a run's program, compiled once where it can be

    def prepare(self, header, body):
        """Before the fork: the run's source as text (None: not UTF-8, the child fails on it as a cold interpreter
        would); its wrapper (the same for every module of one ansible-core) compiled once, and its payload's members
        once per payload (``header["zip"]``: the zip's digest, from the executor)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        end = text.find(_TAIL)
        if end <= 0:
            return text
        try:
            wrapper = text[:end]
            if wrapper in self.wrappers:
                self.wrappers.move_to_end(wrapper)
            else:
                code = _compiled_quietly(compile, wrapper, "<stdin>", "exec", 0, True)
                if code is not None:
                    self.wrappers[wrapper] = code
                while len(self.wrappers) > 4:
                    self.wrappers.popitem(last=False)
            token = str(header.get("zip") or "")
            span = _zip_literal(text, end) if self.sources.wants(token) else None
            if span is not None:
                self.sources.learn(token, text[span[0]:span[1]])
        except Exception:  # pylint: disable=broad-except
            pass  # a zip that cannot be read: its members' code is not kept; the children compile them as before
        return text

    def program(self, text):
        """In the child: the code of the run's source. The wrapper's code comes from ``prepare``; the call after it
        is compiled here with a short stand-in for the payload's base64 literal, put back into its constants (what
        compiling it whole would give, without scanning about 170 KB of literal)."""
        end = text.find(_TAIL)
        wrapper = self.wrappers.get(text[:end]) if end > 0 else None
        span = _zip_literal(text, end) if wrapper is not None and self.sources.usable else None
        if span is None or self.placeholder in text[end:span[0]] or self.placeholder in text[span[1]:]:
            return [compile(text, "<stdin>", "exec", dont_inherit=True)]
        call = "\n" * text.count("\n", 0, end) + text[end:span[0]] + self.placeholder + text[span[1]:]
        code = compile(call, "<stdin>", "exec", flags=wrapper.co_flags & _FUTURE_FLAGS, dont_inherit=True)
        consts = list(code.co_consts)
        found = [i for i, value in enumerate(consts) if type(value) is str and value == self.placeholder]  # pylint: disable=unidiomatic-typecheck
        if len(found) != 1:
            return [compile(text, "<stdin>", "exec", dont_inherit=True)]
        consts[found[0]] = text[span[0]:span[1]]
        return [wrapper, code.replace(co_consts=tuple(consts))]

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
        self.poller = select.poll()
        self.poller.register(self.ctl.fileno() if self.ctl is not None else 0, select.POLLIN)
        self.poller.register(self.wake_r, select.POLLIN)
        while True:
            events = self.poller.poll(None if self.idle is None else self.idle * 1000)
            if not events and not self.children and not self.ended:
                return  # stream mode: nothing asked of it for ``idle`` seconds and nothing runs
            for fd, _event in events:
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif fd in self.outputs:
                    self.relay(fd)
                elif not self.receive():
                    return

    def receive(self):
        if self.ctl is not None:
            data, ancdata, _flags, _addr = self.ctl.recvmsg(1 << 20, socket.CMSG_SPACE(_FDS_PER_RUN * 4 * 4))
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(cdata) - len(cdata) % 4
                    self.fds.extend(struct.unpack("%di" % (usable // 4), cdata[:usable]))
        else:
            data = os.read(0, 1 << 20)
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
        op = header.get("op")
        if op == "init":
            try:
                self.emit({"ready": self.init(body)})
            except Exception as exc:  # pylint: disable=broad-except
                self.emit({"failed": "%s: %s" % (type(exc).__name__, exc)})
            return
        job = header["job"]
        if op == "signal":  # the whole group, also after its leader ended while others still hold its output
            if job in self.groups:
                try:
                    os.killpg(self.groups[job], int(header["signal"]))
                except OSError:
                    pass
            return
        pipes, fds = [], []
        try:
            if self.ctl is not None:
                fds, self.fds = self.fds[:_FDS_PER_RUN], self.fds[_FDS_PER_RUN:]
                if len(fds) != _FDS_PER_RUN:
                    raise RuntimeError("the job's stdio descriptors did not arrive")
            else:  # the child reads nothing (its program came as the body) and writes into pipes relayed here
                fds = [os.open(os.devnull, os.O_RDONLY)]
                for _stream in ("stdout", "stderr"):
                    pipes.append(os.pipe())
                    fds.append(pipes[-1][1])
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            text = self.prepare(header, body)
            gate_r, gate_w = os.pipe()
            ready_r, ready_w = os.pipe()
            pid = os.fork()
        except (OSError, RuntimeError) as exc:
            for fd in fds + [r for r, _w in pipes]:
                os.close(fd)
            self.emit({"job": job, "error": str(exc)})
            return
        if pid == 0:
            os.close(gate_w)
            os.close(ready_r)
            self.child(fds, header, body if text is None else text, gate_r, ready_w)  # never returns
        os.close(gate_r)
        os.close(ready_w)
        # its own session and process group exist, in the requested directory (or it is gone): the pid can be
        # reported; a directory it cannot enter ends it here, and the run goes cold (the shell then says why)
        state = os.read(ready_r, 1)
        os.close(ready_r)
        os.close(fds[0])
        if state != b"r":
            os.close(gate_w)
            for fd in fds[1:] + [r for r, _w in pipes]:
                os.close(fd)
            os.waitpid(pid, 0)
            self.emit({"job": job, "error": "cannot enter %s" % header.get("cwd"), "reason": "cwd"})
            return
        self.groups[job] = pid
        if self.ctl is not None:
            # stdout and stderr stay open here until the child is reaped, as the cold run's shell keeps them
            self.children[pid] = (job, fds[1], fds[2])
        else:
            for (read_end, write_end), name in zip(pipes, ("stdout", "stderr")):
                os.close(write_end)
                self.outputs[read_end] = (job, name)
                self.poller.register(read_end, select.POLLIN)
            self.children[pid] = (job, None, None)
        self.emit({"job": job, "pid": pid})
        # the child starts the module only now: had this process died before the executor learnt the pid (so
        # that it can supervise, or fall back to a cold run), the child would find the gate closed and give up
        os.write(gate_w, b"g")
        os.close(gate_w)

    def relay(self, fd):
        """Stream mode: a child's output goes to the executor; its status follows once both pipes ended."""
        job, name = self.outputs[fd]
        data = os.read(fd, 65536)
        if data:
            self.emit({"job": job, "out": name}, data)
            return
        self.poller.unregister(fd)
        os.close(fd)
        del self.outputs[fd]
        self.finish(job)

    def finish(self, job):
        if job in self.ended and not any(j == job for j, _name in self.outputs.values()):
            status, said = self.ended.pop(job)
            if said:  # after all of the child's own output, as the shell writes it after the command ended
                self.emit({"job": job, "out": "stderr"}, said)
            self.groups.pop(job, None)
            self.emit({"job": job, "status": status})

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
            if out_fd is None:  # stream mode
                self.ended[job] = (status, _shell_says(status) if os.WIFSIGNALED(status) else b"")
                self.finish(job)
                continue
            if os.WIFSIGNALED(status):
                try:
                    _write_all(err_fd, _shell_says(status))
                except OSError:
                    pass
            os.close(out_fd)
            os.close(err_fd)
            self.groups.pop(job, None)
            self.emit({"job": job, "status": status})

    def stop(self):
        for pgid in list(self.groups.values()):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        if self.tempdir:
            shutil.rmtree(self.tempdir, ignore_errors=True)

    # ------------------------------------------------------------ the child: a cold interpreter's twin

    def child(self, fds, header, source, gate, ready):
        status = 1
        try:
            os.setsid()
            if header.get("cwd") is not None:  # else the parent's (stream mode: the login directory)
                try:
                    os.chdir(header["cwd"])
                except OSError:
                    os.write(ready, b"c")
                    os._exit(127)  # pylint: disable=protected-access
            os.write(ready, b"r")
            os.close(ready)
            if os.read(gate, 1) != b"g":
                os._exit(127)  # pylint: disable=protected-access
            os.close(gate)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            if self.ctl is not None:
                self.ctl.detach()
            os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            if header.get("pwd") is not None:
                os.environ["PWD"] = header["pwd"]  # as the shell exports it; everything else is the parent's
            if header.get("umask") is not None:
                os.umask(header["umask"])
            sys.argv[:] = [""]
            sys.orig_argv[:] = [sys.orig_argv[0]] if getattr(sys, "orig_argv", None) else []
            sys.path[:] = self.initial_path
            main = sys.modules["__main__"]
            main.__dict__.clear()
            main.__dict__.update(self.main_dict)
            codes = self.program(source) if isinstance(source, str) else [compile(source.decode("utf-8"), "<stdin>", "exec", dont_inherit=True)]
        except BaseException as exc:  # pylint: disable=broad-except
            try:
                os.write(2, ("natsops warm runner: cannot start the module: %s\n" % exc).encode("utf-8", "replace"))
            finally:
                os._exit(127)  # pylint: disable=protected-access
        try:
            for code in codes:
                exec(code, main.__dict__)  # pylint: disable=exec-used
            status = 0
        except SystemExit as exc:
            status = _exit_status(exc)
        except BaseException:  # pylint: disable=broad-except
            sys.excepthook(*sys.exc_info())
            status = 1
        os._exit(_finalize(status))  # pylint: disable=protected-access


def _zip_literal(text, start):
    """Where the payload's base64 literal (``zip_data='...',`` on a line of its own) is in ``text`` after ``start``:
    (first, end) of its characters, or None when there is none or it holds anything but base64 (warm.py cuts it out
    of the call it parses by this rule)."""
    first = text.find(_ZIP_START, start)
    if first < 0:
        return None
    first += len(_ZIP_START)
    end = text.find("'", first)
    if end < 0 or text[end:end + 3] != "',\n":
        return None
    try:
        if text[first:end].encode("ascii").translate(None, _BASE64):
            return None
    except UnicodeEncodeError:
        return None
    return first, end


def _shell_says(status):
    """What /bin/sh (dash) prints when the command it waits for dies by a signal: its description, except for
    SIGINT and SIGPIPE (bytes, maybe empty)."""
    signum = os.WTERMSIG(status)
    if signum in (signal.SIGINT, signal.SIGPIPE):
        return b""
    text = signal.strsignal(signum) or "Signal %d" % signum
    if os.WCOREDUMP(status):
        text += " (core dumped)"
    return (text + "\n").encode("utf-8", "replace")


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
    # the boot line's own names leave __main__: a module's children see it as a cold interpreter would
    main_module = sys.modules["__main__"]
    for name in [n for n in vars(main_module) if not (n.startswith("__") and n.endswith("__"))]:
        delattr(main_module, name)
    mode, arg = sys.argv[2], sys.argv[3]
    if mode == "socket":
        # the program came on stdin, now at its end: stdin is /dev/null from here on
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    signal.signal(signal.SIGTERM, _on_term)
    parent = _Parent(int(arg)) if mode == "socket" else _Parent(None, idle=float(arg))
    try:
        if mode == "socket":
            _die_with_executor(executor_pid)
        else:  # whatever a login script printed before this comes first: the executor skips to this mark
            _write_all(1, SYNC)
        parent.serve()
    except _Stop:
        pass
    finally:
        parent.stop()


if __name__ == "_natsops_warm_parent":  # exec'd by warm.py; never run on import
    main()
