# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Warm module runs (agent mode): a pipelined AnsiballZ module run forks from a warm parent instead of starting
an interpreter that imports ``ansible.module_utils.basic`` from scratch.

- ``recognise`` says whether a request is, unambiguously, a pipelined AnsiballZ run of a wrapper this executor
  knows (``warm_allowlist.json``: the wrapper's sha256 per ansible-core version), and why not when it is not.
- ``WarmPool`` keeps a few warm parents (``_warm_parent.py``), one per interpreter / environment / module_utils,
  and hands ``LocalHost`` a ``WarmProcess`` that ``jobs.supervise`` drives exactly like a cold process (its own
  session and process group, killed by group on timeout), or None: then the request runs cold, unchanged.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import binascii
import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import resource
import shlex
import signal
import socket
import struct
import time
import zipfile
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union, cast

# where the wrapper ends and where the payload's literal is: one rule for both ends (the parent splits there too)
from natsops_executor._warm_parent import _TAIL, _zip_literal
from natsops_executor._wire.contract import E_INTERRUPTED, E_SPAWN, WireError
from natsops_executor._wire.messages import ExecRequest
from natsops_executor.guard import JobGuard
from natsops_executor.hosts.base import DRAIN_AFTER_KILL, KILL_GRACE, SHELL_ENV_NAME, Process, run_blocking

if TYPE_CHECKING:
    from natsops_executor.warm_remote import RemoteSite

log = logging.getLogger("natsops_executor")

MAX_PARENTS = 4           # warm parents kept at once (one per key)
MAX_RUNNERS_PER_TARGET = 4  # zone mode: runners on one target connection (each holds an SSH session; sshd's
#                             MaxSessions is 10 by default, and cold runs, SFTP and kills need sessions too)
IDLE_TIMEOUT = 300.0      # seconds a warm parent without work is kept
MAX_AGE = 3600.0          # seconds after which a warm parent is replaced (installed packages may have changed)
MAX_FORKS = 1000          # module runs after which a warm parent is replaced
START_TIMEOUT = 60.0      # seconds a warm parent may take to import module_utils
FORK_TIMEOUT = 10.0       # seconds a warm parent may take to report a forked child
RETRY_AFTER = 60.0        # seconds before a warm parent that failed to start is tried again for its key
_VERDICTS_KEPT = 64       # payload zips whose module_utils check is remembered, per parent
MAX_RECOGNISED = 16 * 1024 * 1024  # bytes of stdin inspected at most (a payload is ~0.2-1 MB); larger runs cold
# stdin up to this size is recognised in the event loop (about 1 ms for a 170 KB payload: every step is linear, and
# the call is parsed only once its lines have the shape below); larger in the file threads, where hashing it lets
# the event loop run (the other steps hold the interpreter lock wherever they run)
INLINE_RECOGNITION = 512 * 1024

SHELL = "/bin/sh"
_KEYWORDS = frozenset(("zip_data", "ansible_module", "module_fqn", "params", "profile", "date_time", "extensions",
                       "rlimit_nofile"))
_STRINGS = ("zip_data", "ansible_module", "module_fqn", "params", "profile")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# the lines of the _ansiballz_main(...) call as ansible-core writes them (``name=<repr of the value>,``), values a
# string, an integer, an empty dict (extensions in use run cold), None, True, False or datetime.datetime(<ints>[,
# tzinfo=...utc]): checked (in linear time) before the call is parsed, so that parsing costs time in proportion to
# its length (at most MAX_CALL), whatever it holds
MAX_CALL = 1024 * 1024
_STRING = r"'[^'\\\n]*(?:\\[^\n][^'\\\n]*)*'|" + r'"[^"\\\n]*(?:\\[^\n][^"\\\n]*)*"'
_CALL_LINES = re.compile(r"(?:[a-z_]{1,32}=(?:%s|-?[0-9]{1,20}|\{\}|None|True|False|datetime\.datetime\((?:[0-9]{1,10}, ){2,6}"
                         r"[0-9]{1,10}(?:, tzinfo=datetime\.timezone\.utc)?\)),\n){1,16}\)\n?" % _STRING)
_FRAME = struct.Struct(">II")
_PARENT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_warm_parent.py")
# the warm parent's command line (PYTHON -c BOOT LENGTH MODE ARG): it reads LENGTH bytes of its program from stdin
# (ps shows this, not the whole program; stdin goes on as the control stream in stream mode)
BOOT = """import os, sys
b = b''
while len(b) < int(sys.argv[1]):
    c = os.read(0, int(sys.argv[1]) - len(b))
    if not c:
        raise SystemExit('natsops warm runner: its program did not arrive')
    b += c
exec(compile(b, 'natsops-warm-parent', 'exec', dont_inherit=True), {'__name__': '_natsops_warm_parent'})"""


def parent_program() -> bytes:
    """The warm parent's program (_warm_parent.py), sent to its interpreter's stdin."""
    with open(_PARENT_SOURCE, "rb") as handle:
        return handle.read()


_ALLOWLIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "warm_allowlist.json")

# why a run went cold: the reasons counted in stats (details go to the debug log)
COLD_NOT_MODULE = "not_a_pipelined_module"
COLD_BECOME = "become"
COLD_PTY = "pty"
COLD_INTERPRETER = "interpreter"
COLD_WRAPPER = "unknown_wrapper"
COLD_TAIL = "unexpected_call"
COLD_EXTENSIONS = "extensions"
COLD_MODULE_UTILS = "module_utils_differ"
COLD_CWD = "cwd"
COLD_WARMING = "warming_up"
COLD_LIMIT = "parents_at_limit"
COLD_PARENT_FAILED = "parent_failed"
COLD_PARENT_LOST = "parent_lost"
COLD_TOO_LARGE = "too_large"
COLD_OPT_OUT = "caller_opt_out"


class _ParentGone(Exception):
    """The warm parent ended (or failed) before the child started: the run goes cold."""


class _ForkRefused(_ParentGone):
    """The warm parent said it did not start the module: ``reason`` COLD_CWD (the child could not enter the
    requested directory; the cold run's shell will say why) or COLD_PARENT_FAILED (it could not fork)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _send_frame(sock: socket.socket, frame: bytes, rights: List[Tuple[int, int, bytes]]) -> None:
    """A frame on a warm parent's control socket (non-blocking): its first part with the descriptors, the rest as
    the socket takes it."""
    loop = asyncio.get_running_loop()
    view = memoryview(frame)
    fd = sock.fileno()
    while True:
        try:
            sent = sock.sendmsg([view[:65536]], rights)
            break
        except BlockingIOError:
            writable: "asyncio.Future[None]" = loop.create_future()
            loop.add_writer(fd, lambda: writable.done() or writable.set_result(None))
            try:
                await writable
            finally:
                loop.remove_writer(fd)
    if sent < len(frame):
        await loop.sock_sendall(sock, view[sent:])


async def _to_completion(call: "asyncio.Future[Any]") -> Any:
    """Wait for a call to finish even when the waiter is cancelled (a frame half written to a shared stream would
    corrupt it for every later one); the cancellation is raised afterwards."""
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        await asyncio.wait([call])
        raise


@dataclasses.dataclass(frozen=True)
class Cold:
    """A run that is not warm: ``reason`` (one of COLD_*) and a one-line ``detail``."""

    reason: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Recognised:
    """A pipelined AnsiballZ run this executor may run warm."""

    interpreter: str             # as the command names it (argv[0] of the parent)
    key: str                     # which warm parent runs it
    env: Dict[str, str]          # the interpreter's environment, as the shell would give it
    cwd: str
    pwd: str                     # PWD as the shell exports it (not part of the key: the child sets it)
    source: bytes                # the module's stdin: what the child runs as __main__
    zip_data: str                # base64 payload zip
    zip_token: str               # its sha256
    ansible_core: str            # the version whose wrapper this is


def load_allowlist(path: str = _ALLOWLIST) -> Dict[str, str]:
    """{sha256 of the comment-stripped AnsiballZ wrapper: ansible-core version}."""
    with open(path, "rb") as handle:
        data = json.load(handle)
    return {str(digest): str(version) for digest, version in data["wrappers"].items()}


def _shell_pwd(env: Mapping[str, str], cwd: str) -> str:
    """PWD as /bin/sh exports it to the commands it starts: the inherited one when it names the working directory,
    else the physical path."""
    inherited = env.get("PWD", "")
    if inherited.startswith("/"):
        try:
            here, there = os.stat(cwd), os.stat(inherited)
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino) and "/./" not in inherited + "/" \
                    and "/../" not in inherited + "/":
                return inherited
        except OSError:
            pass
    return os.path.realpath(cwd)


def _which(name: str, env: Mapping[str, str]) -> Optional[str]:
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _split_command(command: str) -> Union[Tuple[List[str], str], Cold]:
    """``/bin/sh -c '[VAR=val ...] PYTHON && sleep 0'`` -> (assignments, python), only when the command is exactly
    what ansible-core builds (re-quoting the parts gives back the same text)."""
    not_module = Cold(COLD_NOT_MODULE, "the command is not /bin/sh -c '[VAR=val ...] PYTHON && sleep 0'")
    try:
        outer = shlex.split(command)
    except ValueError:
        return not_module
    if len(outer) != 3 or outer[:2] != [SHELL, "-c"] or command != "%s -c %s" % (SHELL, shlex.quote(outer[2])):
        return not_module
    inner = outer[2]
    try:
        words = shlex.split(inner)
    except ValueError:
        return not_module
    if len(words) < 4 or words[-3:] != ["&&", "sleep", "0"]:
        return not_module
    *assignments, python = words[:-3]
    if not python or _ASSIGNMENT.match(python) or not all(_ASSIGNMENT.match(a) for a in assignments):
        return not_module
    quoted = ["%s=%s" % (a.split("=", 1)[0], shlex.quote(a.split("=", 1)[1])) for a in assignments]
    if inner != " ".join(quoted + [shlex.quote(python), "&& sleep 0"]):
        return not_module
    return assignments, python


def _is_datetime_call(node: ast.AST) -> bool:
    """``datetime.datetime(<ints>[, tzinfo=datetime.timezone.utc])``, checked, never evaluated."""
    def named(expr: ast.AST, *dotted: str) -> bool:
        for part in reversed(dotted[1:]):
            if not (isinstance(expr, ast.Attribute) and expr.attr == part):
                return False
            expr = expr.value
        return isinstance(expr, ast.Name) and expr.id == dotted[0]

    return (isinstance(node, ast.Call) and named(node.func, "datetime", "datetime") and 3 <= len(node.args) <= 7
            and all(isinstance(a, ast.Constant) and type(a.value) is int for a in node.args)  # pylint: disable=unidiomatic-typecheck
            and all(k.arg == "tzinfo" and named(k.value, "datetime", "timezone", "utc") for k in node.keywords))


def _parse_tail(tail: str) -> Union[Dict[str, Any], Cold]:
    """The one ``_ansiballz_main(...)`` call after the wrapper: its arguments, literals only."""
    unexpected = Cold(COLD_TAIL, "the wrapper is not followed by exactly one _ansiballz_main(...) call with literal "
                                 "arguments")
    # the zip (~170 KB of base64 on a line of its own, as ansible-core writes it) is taken out before parsing:
    # a base64 literal needs no parser, and parsing it would be most of the work
    zip_data = None
    span = _zip_literal(tail, 0)
    if span is not None:
        zip_data = tail[span[0]:span[1]]
        tail = tail[:span[0]] + tail[span[1]:]
    if len(tail) > MAX_CALL:
        return Cold(COLD_TOO_LARGE, "the _ansiballz_main(...) call is larger than is checked (%d bytes)" % MAX_CALL)
    if "\nextensions=" in tail and "\nextensions={},\n" not in tail:  # a line of its own: strings hold no newline
        return Cold(COLD_EXTENSIONS, "AnsiballZ extensions are in use (a debugger or coverage)")
    if not tail.startswith(_TAIL) or _CALL_LINES.fullmatch(tail, len(_TAIL)) is None:
        return unexpected
    try:
        tree = ast.parse(tail)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return unexpected
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.If):
        return unexpected
    branch = tree.body[0]
    test = branch.test
    if branch.orelse or len(branch.body) != 1 or not (
            isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq) and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__"):
        return unexpected
    stmt = branch.body[0]
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return unexpected
    call = stmt.value
    if not (isinstance(call.func, ast.Name) and call.func.id == "_ansiballz_main") or call.args:
        return unexpected
    names = [k.arg for k in call.keywords]
    if len(names) != len(set(names)) or set(names) != _KEYWORDS:
        return unexpected
    args: Dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg == "date_time":
            if not _is_datetime_call(keyword.value):
                return unexpected
            continue
        try:
            args[str(keyword.arg)] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return unexpected
    if zip_data is not None:
        if args["zip_data"] != "":
            return unexpected
        args["zip_data"] = zip_data
    if not all(isinstance(args[name], str) for name in _STRINGS) or type(args["rlimit_nofile"]) is not int:  # pylint: disable=unidiomatic-typecheck
        return unexpected
    if args["extensions"] != {}:
        return Cold(COLD_EXTENSIONS, "AnsiballZ extensions are in use (%s)" % ", ".join(sorted(map(str, args["extensions"])))
                    if isinstance(args["extensions"], dict) else "AnsiballZ extensions are not a mapping")
    return args


def _identity(path: str) -> str:
    real = os.path.realpath(path)
    st = os.stat(real)
    return "%s:%d:%d:%d" % (real, st.st_dev, st.st_ino, st.st_mtime_ns)


def _limits() -> List[Tuple[int, int]]:
    return [resource.getrlimit(getattr(resource, name)) for name in sorted(dir(resource)) if name.startswith("RLIMIT_")]


def current_umask() -> int:
    """This process's umask, read without changing it (Linux); 0o022 when it cannot be read."""
    try:
        with open("/proc/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@dataclasses.dataclass(frozen=True)
class _Payload:
    """What recognition learnt from the request alone (no host involved)."""

    assignments: List[str]       # VAR=val words before the interpreter in the command
    python: str                  # the interpreter as the command names it
    wrapper_digest: str
    version: str                 # the ansible-core series whose wrapper this is
    zip_data: str
    zip_token: str
    basic: str                   # sha256 of the payload's ansible/module_utils/basic.py


def _recognise_payload(req: ExecRequest, stdin: bytes, allowlist: Mapping[str, str]) -> Union[_Payload, Cold]:
    """The checks of the request and its stdin that hold for any host: the caller's wish, become, pty, the command
    ansible-core builds, the wrapper on the allowlist, one literal _ansiballz_main call, module_utils present."""
    if req.warm is False:
        return Cold(COLD_OPT_OUT, "the caller asked for a cold run (ansible_nats_warm: false)")
    if req.become is not None:
        return Cold(COLD_BECOME, "privilege escalation runs cold")
    if req.pty:
        return Cold(COLD_PTY, "a pty was requested")
    if req.argv is not None or req.command is None or req.shell != SHELL:
        return Cold(COLD_NOT_MODULE, "not a shell command run by %s" % SHELL)
    split = _split_command(req.command)
    if isinstance(split, Cold):
        return split
    assignments, python = split
    if len(stdin) > MAX_RECOGNISED:
        return Cold(COLD_TOO_LARGE, "stdin of %d bytes is larger than a module payload is checked for (%d)"
                    % (len(stdin), MAX_RECOGNISED))
    try:
        text = stdin.decode("utf-8")
    except UnicodeDecodeError:
        return Cold(COLD_NOT_MODULE, "stdin is not UTF-8 text")
    first, newline, rest = text.partition("\n")
    if not newline or first != "#!" + python:
        return Cold(COLD_NOT_MODULE if not first.startswith("#!") else COLD_INTERPRETER,
                    "stdin does not start with the shebang #!%s" % python)
    end = rest.find(_TAIL)
    if end < 0:
        return Cold(COLD_NOT_MODULE, "stdin is not an AnsiballZ payload")
    wrapper_digest = hashlib.sha256(rest[:end].encode("utf-8")).hexdigest()
    version = allowlist.get(wrapper_digest)
    if version is None:
        return Cold(COLD_WRAPPER, "AnsiballZ wrapper sha256 %s is not on the allowlist" % wrapper_digest)
    args = _parse_tail(rest[end:])
    if isinstance(args, Cold):
        return args
    zip_token = hashlib.sha256(args["zip_data"].encode("ascii", "replace")).hexdigest()
    basic = _basic_digest(zip_token, args["zip_data"])
    if basic is None:
        return Cold(COLD_MODULE_UTILS, "the payload zip has no ansible/module_utils/basic.py")
    return _Payload(assignments=assignments, python=python, wrapper_digest=wrapper_digest, version=version,
                    zip_data=args["zip_data"], zip_token=zip_token, basic=basic)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def recognise(req: ExecRequest, stdin: bytes, allowlist: Mapping[str, str],
              base_env: Optional[Mapping[str, str]] = None) -> Union[Recognised, Cold]:
    """A pipelined AnsiballZ run on this host, only when every part is the shape ansible-core sends; else
    Cold(why)."""
    payload = _recognise_payload(req, stdin, allowlist)
    if isinstance(payload, Cold):
        return payload
    env = dict(os.environ if base_env is None else base_env)
    env.update(req.env or {})
    cwd = req.cwd or os.getcwd()
    if not os.path.isdir(cwd):
        return Cold(COLD_CWD, "the working directory %s is not a directory" % cwd)
    pwd = env["PWD"] = _shell_pwd(env, cwd)
    for assignment in payload.assignments:
        name, value = assignment.split("=", 1)
        env[name] = value
    resolved = _which(payload.python, env)
    if resolved is None:
        return Cold(COLD_INTERPRETER, "interpreter %s not found" % payload.python)
    try:
        identity = _identity(resolved)
    except OSError as exc:
        return Cold(COLD_INTERPRETER, "interpreter %s: %s" % (payload.python, exc.strerror or exc))
    keyed_env = sorted((k, v) for k, v in env.items() if k != "PWD")
    key = _key(identity, payload.python, payload.wrapper_digest, payload.basic, json.dumps(keyed_env), repr(_limits()))
    return Recognised(interpreter=payload.python, key=key, env=env, cwd=cwd, pwd=pwd, source=stdin,
                      zip_data=payload.zip_data, zip_token=payload.zip_token, ansible_core=payload.version)


def recognise_remote(req: ExecRequest, stdin: bytes, allowlist: Mapping[str, str],
                     where: str) -> Union[Recognised, Cold]:
    """The same for a target reached over SSH (``where``: user@host:port): the interpreter must be an absolute
    path; ``env`` holds only what the command adds to the target's login environment; an empty ``cwd`` is the
    login directory."""
    payload = _recognise_payload(req, stdin, allowlist)
    if isinstance(payload, Cold):
        return payload
    if not payload.python.startswith("/"):
        return Cold(COLD_INTERPRETER, "interpreter %s is not an absolute path" % payload.python)
    bad = [name for name in (req.env or {}) if not SHELL_ENV_NAME.match(name)]
    if bad:  # the cold run refuses it (bad_request), exactly as without warm runs
        return Cold(COLD_NOT_MODULE, "environment variable name %r is not valid in SSH mode" % bad[0])
    env = dict(req.env or {})
    for assignment in payload.assignments:
        name, value = assignment.split("=", 1)
        env[name] = value
    key = _key(where, payload.python, payload.wrapper_digest, payload.basic, json.dumps(sorted(env.items())))
    return Recognised(interpreter=payload.python, key=key, env=env, cwd=req.cwd or "", pwd=req.cwd or "",
                      source=stdin, zip_data=payload.zip_data, zip_token=payload.zip_token,
                      ansible_core=payload.version)


_BASIC_DIGESTS: "collections.OrderedDict[str, Optional[str]]" = collections.OrderedDict()


def _basic_digest(zip_token: str, zip_data: str) -> Optional[str]:
    """sha256 of the payload's ansible/module_utils/basic.py (remembered for the last few payloads)."""
    if zip_token in _BASIC_DIGESTS:
        _BASIC_DIGESTS.move_to_end(zip_token)
        return _BASIC_DIGESTS[zip_token]
    digests = _member_digests(zip_data, ["ansible/module_utils/basic.py"])
    digest = digests["ansible/module_utils/basic.py"] if digests else None
    _BASIC_DIGESTS[zip_token] = digest
    while len(_BASIC_DIGESTS) > _VERDICTS_KEPT:
        _BASIC_DIGESTS.popitem(last=False)
    return digest


def _zip_bytes(zip_data: str) -> Optional[bytes]:
    try:
        return base64.b64decode(zip_data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _member_digests(zip_data: str, members: Iterable[str]) -> Optional[Dict[str, str]]:
    """sha256 of each member of the base64 payload zip; None when one is missing or the zip is unreadable."""
    raw = _zip_bytes(zip_data)
    if raw is None:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            return {name: hashlib.sha256(archive.read(name)).hexdigest() for name in members}
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, EOFError):
        return None


# ---------------------------------------------------------------- one warm parent (executor side)

class _Parent:
    """A warm parent process: started with the interpreter and environment of its key, warmed with one payload's
    module_utils, then asked to fork one child per run."""

    def __init__(self, key: str, recognised: Recognised, guard: Optional[JobGuard]) -> None:
        self.key = key
        self.interpreter = recognised.interpreter
        self.env = recognised.env
        self.guard = guard
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.sock: Optional[socket.socket] = None
        self.reference: Dict[str, str] = {}   # zip member -> sha256, of every module_utils file imported
        self.verdicts: "collections.OrderedDict[str, bool]" = collections.OrderedDict()
        loop = asyncio.get_running_loop()
        self.reported: "asyncio.Future[List[str]]" = loop.create_future()  # the parent's own report of its imports
        self.ready: "asyncio.Future[None]" = loop.create_future()  # done once ``reference`` is known, or failed
        self.started = time.monotonic()
        self.last_used = self.started
        self.forks = 0
        self.running: Dict[int, "WarmProcess"] = {}
        self.pending: Dict[int, "asyncio.Future[int]"] = {}
        self.exits: Dict[int, int] = {}  # wait statuses of runs that ended before run() registered them
        self.abandoned: Set[int] = set()  # runs given up before their pid came: their pid is killed, status dropped
        self.place = ""  # where it runs: "" here, a target's key in zone mode
        self.next_job = 0
        self.alive = True
        self.send_lock = asyncio.Lock()
        self.tasks: List["asyncio.Task[None]"] = []

    @property
    def usable(self) -> bool:
        return self.alive and self.ready.done() and not self.ready.exception() and self.forks < MAX_FORKS \
            and time.monotonic() - self.started < MAX_AGE

    async def start(self, zip_data: str) -> None:
        """Start the interpreter with the parent program and warm it with this payload's module_utils."""
        try:
            raw = _zip_bytes(zip_data)
            if raw is None:
                raise _ParentGone("the payload zip is not base64")
            program = parent_program()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ours.setblocking(False)
            self.sock = ours
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    self.interpreter, "-c", BOOT, str(len(program)), "socket", str(theirs.fileno()),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env, cwd="/",
                    pass_fds=(theirs.fileno(),), start_new_session=True)
            finally:
                theirs.close()
            stdin = cast(asyncio.StreamWriter, self.proc.stdin)
            stdin.write(program)  # about 14 KB: fits the pipe
            await stdin.drain()
            stdin.close()
            if self.guard is not None:
                self.guard.watch(self.proc.pid)
            self.tasks = [asyncio.ensure_future(self._events(self.proc)), asyncio.ensure_future(self._log_stderr(self.proc))]
            await self._send({"op": "init"}, raw, [])
            members = await asyncio.wait_for(asyncio.shield(self.reported), START_TIMEOUT)
            self._warmed(zip_data, members, "warm parent %d" % self.proc.pid)
        except (OSError, ValueError, asyncio.TimeoutError, _ParentGone) as exc:
            log.warning("warm parent for %s could not start: %s", self.interpreter, exc or type(exc).__name__)
            if not self.ready.done():
                self.ready.set_exception(_ParentGone(str(exc)))
            await self.stop()

    def _warmed(self, zip_data: str, members: List[str], label: str) -> None:
        """The parent reported the zip members it imported: they become the reference every later payload is
        checked against, and the parent is ready."""
        digests = _member_digests(zip_data, members)
        if not digests:
            raise _ParentGone("the %s imported nothing from its payload, or files that are not in it" % label)
        self.reference = digests
        if not self.alive:
            raise _ParentGone("the %s exited while it warmed up" % label)
        self.last_used = time.monotonic()
        self.ready.set_result(None)
        log.info("%s ready (%s): %d module_utils files imported", label, self.interpreter, len(digests))

    def matches(self, token: str, zip_data: str) -> bool:
        """Every module_utils file this parent imported is in the payload (``token``: its sha256) with identical
        bytes."""
        verdict = self.verdicts.get(token)
        if verdict is None:
            digests = _member_digests(zip_data, self.reference)
            verdict = digests == self.reference
            self.verdicts[token] = verdict
            while len(self.verdicts) > _VERDICTS_KEPT:
                self.verdicts.popitem(last=False)
        else:
            self.verdicts.move_to_end(token)
        return verdict

    async def run(self, recognised: Recognised) -> "WarmProcess":
        """Fork a child that runs the module; returns once it runs (its pid known), or raises _ParentGone."""
        self.next_job += 1
        job = self.next_job
        started: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        self.pending[job] = started
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.close(stdin_w)  # the cold interpreter has read all of stdin as its program
        self.forks += 1
        self.last_used = time.monotonic()
        try:
            await self._send({"op": "run", "job": job, "cwd": recognised.cwd, "pwd": recognised.pwd,
                              "umask": current_umask(), "zip": recognised.zip_token},
                             recognised.source, [stdin_r, out_w, err_w])
        except BaseException as exc:
            self._abandon(job)
            for fd in (out_r, err_r):
                os.close(fd)
            if isinstance(exc, OSError):
                raise _ParentGone("cannot reach the warm parent: %s" % exc) from exc
            raise  # cancelled: if the frame went out, the pid that comes back is killed (_dispatch)
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)
        try:
            pid = await asyncio.wait_for(started, FORK_TIMEOUT)
        except _ParentGone:  # it ended before it started the module (the gate stayed closed): nothing ran
            self._abandon(job)
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        except asyncio.CancelledError:  # the job was ended while it waited; a late pid is killed (_dispatch)
            self._abandon(job)
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        except asyncio.TimeoutError as exc:
            # it may still start it: never run it cold as well; a late pid is killed (_dispatch)
            self._abandon(job)
            self.alive = False  # retired by the pool
            for fd in (out_r, err_r):
                os.close(fd)
            raise WireError(E_INTERRUPTED, "the warm runner did not start the module within %.0f s; it was "
                                           "retired and the module's outcome is unknown" % FORK_TIMEOUT,
                            {"warm": True}) from exc
        process = WarmProcess(self, job, pid, out_r, err_r)
        self.running[job] = process
        if job in self.exits:  # it ended before this coroutine went on
            process.exited(self.exits.pop(job))
        elif not self.alive:
            process.lost()
        try:
            await process.connect()
        except OSError as exc:
            await process.cleanup()
            raise WireError(E_SPAWN, "cannot read the output of a warm run: %s" % (exc.strerror or exc)) from exc
        return process

    async def _send(self, header: Dict[str, Any], body: bytes, fds: List[int]) -> None:
        sock = self.sock
        if sock is None or not self.alive:
            raise OSError("the warm parent is gone")
        head = json.dumps(header).encode("utf-8")
        frame = _FRAME.pack(len(head), len(body)) + head + body
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))] if fds else []
        async with self.send_lock:  # once begun, a frame is sent whole, even if the run is given up meanwhile
            await _to_completion(asyncio.ensure_future(_send_frame(sock, frame, rights)))

    def _abandon(self, job: int) -> None:
        """A run given up before its pid came: a pid reported later is killed, its status dropped."""
        self.pending.pop(job, None)
        self.abandoned.add(job)

    async def _events(self, proc: asyncio.subprocess.Process) -> None:
        stdout = cast(asyncio.StreamReader, proc.stdout)
        try:
            while True:
                line = await stdout.readline()
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("warm parent %d said something unexpected: %r", proc.pid, line[:200])
                    continue
                self._dispatch(event)
        finally:
            self._lost()

    def _dispatch(self, event: Dict[str, Any]) -> None:
        if "ready" in event:
            if not self.reported.done():
                self.reported.set_result([str(m) for m in event["ready"]])
        elif "failed" in event:
            if not self.reported.done():
                self.reported.set_exception(_ParentGone("the warm parent could not import module_utils: %s"
                                                        % event["failed"]))
        elif "pid" in event:
            future = self.pending.pop(event["job"], None)
            if future is not None and not future.done():
                future.set_result(int(event["pid"]))
            else:  # its run gave up waiting (FORK_TIMEOUT): it must not run unsupervised
                self.kill_group(int(event["job"]), int(event["pid"]), signal.SIGKILL)
        elif "status" in event:
            job = int(event["job"])
            process = self.running.pop(job, None)
            if process is not None:
                process.exited(int(event["status"]))
            elif job in self.abandoned:
                self.abandoned.discard(job)
            else:
                self.exits[job] = int(event["status"])
        elif "error" in event:
            future = self.pending.pop(event["job"], None)
            self.abandoned.discard(int(event["job"]))
            if future is not None and not future.done():
                future.set_exception(_ForkRefused("the warm parent did not start the module: %s" % event["error"],
                                                  COLD_CWD if event.get("reason") == "cwd" else COLD_PARENT_FAILED))

    def kill_group(self, job: int, pid: int, sig: int) -> None:  # pylint: disable=unused-argument
        """Signal the process group of a child (``job``, ``pid``) of this parent."""
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    async def _log_stderr(proc: asyncio.subprocess.Process) -> None:
        stderr = cast(asyncio.StreamReader, proc.stderr)
        while True:
            line = await stderr.readline()
            if not line:
                return
            log.warning("warm parent %d: %s", proc.pid, line.decode("utf-8", "replace").rstrip())

    def _lost(self) -> None:
        """The parent's stdout ended: it is gone. Runs not started yet go cold; running ones are lost."""
        was_alive, self.alive = self.alive, False
        for future in (self.reported, self.ready):
            if not future.done():
                future.set_exception(_ParentGone("the warm parent exited while it warmed up"))
                future.exception()  # retrieved: start() reports it
        for future in self.pending.values():
            if not future.done():
                future.set_exception(_ParentGone("the warm parent exited"))
        self.pending.clear()
        for process in list(self.running.values()):
            process.lost()
        self.running.clear()
        if was_alive and self.proc is not None:
            log.info("warm parent %d ended", self.proc.pid)

    async def stop(self) -> None:
        """Close the control socket (the parent kills its children and exits), then make sure it is gone."""
        self.alive = False
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a send under way fails now (broken pipe), rather than wait on it
            except OSError:
                pass
            async with self.send_lock:
                sock.close()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), KILL_GRACE)
            except asyncio.TimeoutError:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                await self.proc.wait()
            if self.guard is not None:
                self.guard.forget(self.proc.pid)
        if self.tasks:
            _done, pending = await asyncio.wait(self.tasks, timeout=DRAIN_AFTER_KILL)
            for task in pending:
                task.cancel()
        self._lost()


class WarmProcess(Process):
    """A module run forked by a warm parent: its own session (process group = its pid) as a cold run's shell,
    stdio on the executor's pipes; the exit status comes from the parent (a signal death reads as the shell
    reports it: 128 + the signal)."""

    warm = True

    def __init__(self, parent: _Parent, job: int, pid: int, out_fd: int, err_fd: int) -> None:
        self.parent = parent
        self.job = job
        self.pid = pid
        self.guard = parent.guard
        if self.guard is not None:
            self.guard.watch(pid)
        self._fds = [out_fd, err_fd]
        self._transports: List[asyncio.BaseTransport] = []
        self.status: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        self.label = "process group %d" % pid
        self.details = {"pgid": pid, "warm": True}

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        readers = []
        for fd in self._fds:
            reader = asyncio.StreamReader(limit=1 << 20)
            transport, _protocol = await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r),
                                                                os.fdopen(fd, "rb", buffering=0))
            self._transports.append(transport)
            readers.append(reader)
        self._fds = []
        self.stdout, self.stderr = readers

    def exited(self, raw: int) -> None:
        if not self.status.done():
            code = os.waitstatus_to_exitcode(raw)
            self.status.set_result(code if code >= 0 else 128 - code)

    def lost(self) -> None:
        self._kill(signal.SIGKILL)
        if not self.status.done():
            self.status.set_exception(WireError(
                E_INTERRUPTED, "the warm runner of this module died while it ran; the module's process group %d was "
                               "killed and its outcome is unknown" % self.pid, {"pgid": self.pid, "warm": True}))

    def _kill(self, sig: int) -> None:
        self.parent.kill_group(self.job, self.pid, sig)

    async def wait(self) -> int:
        return await asyncio.shield(self.status)

    def write_password(self, data: bytes) -> None:
        raise RuntimeError("a warm run never escalates privileges")  # recognise() sends become requests cold

    async def feed(self, data: bytes) -> None:
        """The child already has its program (the cold interpreter reads all of stdin as its program)."""

    async def terminate(self) -> None:
        self._kill(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.status), KILL_GRACE)
        except asyncio.TimeoutError:
            self._kill(signal.SIGKILL)
            await asyncio.wait_for(asyncio.shield(self.status), DRAIN_AFTER_KILL)
        except WireError:
            pass

    async def cleanup(self) -> None:
        if not self.status.done():
            self._kill(signal.SIGKILL)
            try:
                await asyncio.wait_for(asyncio.shield(self.status), DRAIN_AFTER_KILL)
            except asyncio.TimeoutError:
                log.warning("warm process group %d did not exit after SIGKILL", self.pid)
            except WireError:
                pass
        if self.status.done() and not self.status.cancelled():
            self.status.exception()  # retrieved: a lost run already failed its job
        for transport in self._transports:
            transport.close()
        self._transports = []
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.parent.running.pop(self.job, None)
        self.parent.last_used = time.monotonic()
        if self.guard is not None:
            self.guard.forget(self.pid)
            self.guard = None


# ---------------------------------------------------------------- the pool

async def _stop_quietly(parent: _Parent) -> None:
    """Stop a parent; a failure is logged, never the end of the pool's reaper or of the executor's stop."""
    try:
        await parent.stop()
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("warm parent for %s did not stop cleanly: %r", parent.interpreter, exc)


def warm_stats(local: "WarmPool", ssh: "WarmPool") -> Dict[str, Any]:
    """The executor's warm counters ($SRV STATS): runs on this host and on SSH targets together; ``warm_parents``
    counts both kinds, ``warm_runners`` the ones on targets."""
    stats = local.stats()
    for name, value in ssh.stats().items():
        if name == "warm_cold_reasons":
            for reason, count in value.items():
                stats[name][reason] = stats[name].get(reason, 0) + count
        else:
            stats[name] += value
    stats["warm_runners"] = len(ssh.parents)
    return stats


class WarmPool:
    """The executor's warm parents, at most ``max_parents``; counts warm hits, misses and each cold reason."""

    def __init__(self, guard: Optional[JobGuard] = None, max_parents: int = MAX_PARENTS,
                 allowlist: Optional[Mapping[str, str]] = None) -> None:
        self.guard = guard
        self.max_parents = max_parents
        self.allowlist = dict(load_allowlist() if allowlist is None else allowlist)
        self.parents: Dict[str, _Parent] = {}
        self.retiring: Set[_Parent] = set()
        self.hits = 0
        self.reasons: "collections.Counter[str]" = collections.Counter()
        self.parents_started = 0
        self._failed: Dict[str, float] = {}  # key -> when its warm parent failed to start
        self._closing = False
        self._reaper: Optional["asyncio.Task[None]"] = None
        self._starting: Set["asyncio.Task[None]"] = set()

    def stats(self) -> Dict[str, Any]:
        """For the executor's $SRV STATS: warm hits, cold runs (misses) and how many for each reason."""
        return {"warm_hits": self.hits, "warm_misses": sum(self.reasons.values()),
                "warm_cold_reasons": dict(self.reasons), "warm_parents": len(self.parents),
                "warm_parents_started": self.parents_started}

    def _cold(self, cold: Cold) -> None:
        self.reasons[cold.reason] += 1
        log.debug("cold run: %s (%s)", cold.reason, cold.detail)

    async def spawn(self, req: ExecRequest, stdin: bytes, site: Optional["RemoteSite"] = None) -> Optional[Process]:
        """A WarmProcess for a recognised module run, or None (counted, with its reason): run it cold. On this
        host, or with ``site`` on a target reached over SSH (warm_remote.py)."""
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self._reap())
        if site is None:  # on this host it looks at the file system: in the loop only for the executor's own directory
            verdict = await self._recognised(not req.cwd, recognise, req, stdin, self.allowlist)
        else:
            verdict = await self._recognised(True, recognise_remote, req, stdin, self.allowlist, site.where)
        if isinstance(verdict, Cold):
            self._cold(verdict)
            return None
        parent = self.parents.get(verdict.key)
        if parent is not None and not parent.usable and parent.ready.done():
            if parent.ready.exception() is not None:
                self._failed[parent.key] = time.monotonic()
            self._retire(parent)
            parent = None
        if parent is None:
            failed = self._failed.get(verdict.key)
            if failed is not None and time.monotonic() - failed < RETRY_AFTER:
                self._cold(Cold(COLD_PARENT_FAILED, "the warm parent for this interpreter failed to start recently"))
                return None
            self._cold(self._start(verdict, site))
            return None
        if not parent.ready.done():
            self._cold(Cold(COLD_WARMING, "the warm parent is still importing module_utils"))
            return None
        if not parent.matches(verdict.zip_token, verdict.zip_data):
            self._cold(Cold(COLD_MODULE_UTILS, "module_utils files the warm parent imported differ in this payload"))
            return None
        try:
            process = await parent.run(verdict)
        except _ForkRefused as exc:
            if exc.reason != COLD_CWD:  # a directory it cannot enter says nothing about the parent
                self._retire(parent)
            self._cold(Cold(exc.reason, str(exc)))
            return None
        except _ParentGone as exc:
            self._retire(parent)
            self._cold(Cold(COLD_PARENT_LOST, str(exc)))
            return None
        self.hits += 1
        return process

    @staticmethod
    async def _recognised(here: bool, how: Callable[..., Union[Recognised, Cold]], req: ExecRequest, stdin: bytes,
                          *args: Any) -> Union[Recognised, Cold]:
        """``how(req, stdin, *args)``: in the event loop when ``here`` and for a payload's size (INLINE_RECOGNITION),
        else in the file threads (a working directory the request names may be on a mount that hangs)."""
        if here and len(stdin) <= INLINE_RECOGNITION:
            return how(req, stdin, *args)
        return cast(Union[Recognised, Cold], await run_blocking(how, req, stdin, *args))

    def _start(self, verdict: Recognised, site: Optional["RemoteSite"]) -> Cold:
        """Start a warm parent for this key in the background (this run goes cold)."""
        if site is not None:
            there = [p for p in self.parents.values() if p.place == site.where]
            if len(there) >= MAX_RUNNERS_PER_TARGET:
                idle = [p for p in there if not p.running and not p.pending and p.ready.done()]
                if not idle:
                    return Cold(COLD_LIMIT, "%d warm runners run on this target already" % len(there))
                self._retire(min(idle, key=lambda p: p.last_used))
        if len(self.parents) >= self.max_parents:
            idle = [p for p in self.parents.values() if not p.running and not p.pending and p.ready.done()]
            if not idle:
                return Cold(COLD_LIMIT, "%d warm parents run already" % self.max_parents)
            self._retire(min(idle, key=lambda p: p.last_used))
        parent = _Parent(verdict.key, verdict, self.guard) if site is None else site.parent(verdict.key, verdict)
        self.parents[verdict.key] = parent
        self.parents_started += 1
        task = asyncio.ensure_future(parent.start(verdict.zip_data))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        return Cold(COLD_WARMING, "a warm parent for this interpreter and environment is starting")

    def _retire(self, parent: _Parent) -> None:
        if self.parents.get(parent.key) is parent:
            del self.parents[parent.key]
        self.retiring.add(parent)
        if parent.ready.done() and not parent.ready.cancelled():
            parent.ready.exception()

    async def _reap(self) -> None:
        """Stop parents that are idle too long, too old or used up, once nothing runs on them."""
        while not self._closing:
            await asyncio.sleep(min(IDLE_TIMEOUT, 10.0))
            if self._closing:
                return
            now = time.monotonic()
            for key, failed in list(self._failed.items()):
                if now - failed > RETRY_AFTER:
                    del self._failed[key]
            for parent in list(self.parents.values()):
                idle = not parent.running and not parent.pending and now - parent.last_used > IDLE_TIMEOUT
                if parent.ready.done() and (not parent.usable or idle):
                    self._retire(parent)
            for parent in list(self.retiring):
                if not parent.running and not parent.pending:  # nothing runs or is starting on it
                    self.retiring.discard(parent)
                    await _stop_quietly(parent)

    async def close(self) -> None:
        """Stop every warm parent (their children die with them)."""
        self._closing = True
        if self._reaper is not None:
            # cancelled, and told to stop (Python 3.11's wait_for can swallow a cancellation that races with the
            # end of what it waits for); never waited for longer than one parent's stop
            self._reaper.cancel()
            await asyncio.wait([self._reaper], timeout=KILL_GRACE + DRAIN_AFTER_KILL + 1)
            self._reaper = None
        if self._starting:
            await asyncio.wait(list(self._starting), timeout=START_TIMEOUT)
        for parent in list(self.parents.values()) + list(self.retiring):
            await _stop_quietly(parent)
        self.parents.clear()
        self.retiring.clear()
