# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The typed messages of the natsops protocol: every request, reply and file summary as a dataclass.

Each class below is the one definition of its message. Its fields say what the wire carries: the type
annotation gives the JSON types accepted (``float`` takes any JSON number, never a boolean), a field whose
default is ``REQUIRED`` must be present, and a field of another message class holds that message as a JSON
object. ``SCHEMAS`` is derived from these declarations for documentation and tests.

A message is validated when it is constructed, wherever it is constructed: ``from_dict`` (what arrives from
NATS) and direct construction (what a caller is about to send) both raise ``WireError(bad_request)`` listing
every problem, or ``unsupported_version`` for a request of another protocol version. ``to_dict`` gives the wire
form, leaving out fields that are not set. Standard library only, Python 3.8+ syntax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import typing
import uuid
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar

from .names import (
    E_BAD_REQUEST, E_UNSUPPORTED_VERSION, OP_EXEC, OP_FETCH, OP_PUT, OP_TRANSFER, PROTOCOL_VERSION, WireError,
    bucket_problems,
)

DEFAULT_KEEPALIVE = 1.0                # seconds between executor keepalives
MAX_EXEC_STDIN = 256 * 1024 * 1024     # module payloads; files go through put
MAX_FILE_SIZE = 1 << 50                # what any size field may say
MAX_TIMEOUT = 30 * 86400               # seconds an exec may be given
MAX_TEXTS = 64                         # entries of a list of literal texts (become prompts, ...)
MAX_MODE = 0o7777
MAX_SUBJECT = 512
MAX_STDIN_BLOBS = 4                    # byte ranges of an exec's stdin named by digest (stdin_blobs)
MAX_STDIN_BLOB = 8 * 1024 * 1024       # bytes of one such range

_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_NONCE_RE = re.compile(r"^[0-9a-f]{32,64}$")
_M = TypeVar("_M", bound="Message")


class _Required:
    """The default of a field that the wire requires (construction reports it missing)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def path_problems(path: str, where: str) -> List[str]:
    """Paths on the wire are absolute, normalised and free of '..' and NUL: no traversal tricks."""
    if not path.startswith("/"):
        return ["%s must be an absolute path, got %r" % (where, path)]
    if "\x00" in path:
        return ["%s contains a NUL byte" % where]
    parts = path.split("/")
    if ".." in parts or "." in parts[1:]:
        return ["%s must not contain '.' or '..' components: %r" % (where, path)]
    return []


def _sha256_problems(value: Optional[str], where: str) -> List[str]:
    if value is not None and not _HEX64_RE.match(value):
        return ["%s must be 64 lowercase hex digits" % where]
    return []


def _destination_problems(where: str, path: str, sha256: Optional[str], mode: Optional[int]) -> List[str]:
    """A file's destination (put, transfer): an absolute clean path, a hex digest, permission bits."""
    problems = path_problems(path, "%s: 'path'" % where) + _sha256_problems(sha256, "%s: 'sha256'" % where)
    if mode is not None and not 0 <= mode <= MAX_MODE:
        problems.append("%s: 'mode' must be between 0 and 0o7777" % where)
    return problems


def _text_problems(value: Any) -> List[str]:
    """Strings on the wire (also inside lists and maps) hold no NUL and no lone surrogate: they end up in argv,
    environments, paths and log lines, where either would fail (or lie) far from here."""
    if isinstance(value, dict):
        texts = [t for item in value.items() for t in item]
    elif isinstance(value, list):
        texts = value
    else:
        texts = [value]
    for text in texts:
        if isinstance(text, str):
            if "\x00" in text:
                return ["contains a NUL character"]
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return ["is not valid Unicode (a lone surrogate)"]
    return []


def subject_problems(value: str, where: str) -> List[str]:
    """A subject something is published to: dot-separated tokens of printable non-space characters, no wildcards,
    nothing below '$' (the server's own APIs: JetStream, KV, micro services)."""
    if not value or len(value) > MAX_SUBJECT or value.startswith("$"):
        return ["%s must be a subject of up to %d characters outside '$' APIs" % (where, MAX_SUBJECT)]
    for token in value.split("."):
        if not token or token in ("*", ">") or any(c.isspace() or not c.isprintable() for c in token):
            return ["%s must be a plain subject: dot-separated tokens without whitespace, control characters or "
                    "wildcards" % where]
    return []


# ---------------------------------------------------------------- the machinery

def _accepted_types(hint: Any) -> Tuple[Tuple[type, ...], Optional[type]]:
    """(JSON types accepted, nested message class or None) for a field's type annotation."""
    if getattr(hint, "__origin__", None) is typing.Union:  # Optional[X]
        hint = next(arg for arg in hint.__args__ if arg is not type(None))
    origin = getattr(hint, "__origin__", None)
    if origin in (list, List):
        item = (getattr(hint, "__args__", None) or (None,))[0]
        return (list,), item if isinstance(item, type) and issubclass(item, Message) else None
    if origin in (dict, Dict):
        return (dict,), None
    if isinstance(hint, type) and issubclass(hint, Message):
        return (dict,), hint
    if hint is float:
        return (int, float), None
    if hint in (str, int, bool):
        return (hint,), None
    raise TypeError("a wire message field cannot be of type %r" % (hint,))


class Message:
    """Base of every wire message class (each is a frozen dataclass)."""

    WHERE: ClassVar[str] = "message"   # how problem messages name it ("exec", "target", ...)
    _wire_fields: ClassVar[Dict[str, Tuple[Tuple[type, ...], Optional[type]]]]

    @classmethod
    def wire_fields(cls) -> Dict[str, Tuple[Tuple[type, ...], Optional[type]]]:
        """{field name: (accepted JSON types, nested message class)} from the class's annotations."""
        if "_wire_fields" not in cls.__dict__:
            hints = typing.get_type_hints(cls)
            cls._wire_fields = {f.name: _accepted_types(hints[f.name]) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls._wire_fields

    def __post_init__(self) -> None:
        problems = self._field_problems()
        if not problems:
            problems = self.problems()
        if problems:
            raise WireError(E_BAD_REQUEST, "; ".join(problems), {"problems": problems})

    def _field_problems(self) -> List[str]:
        """Missing fields, values of the wrong JSON type; nested messages given as dicts are converted here."""
        problems: List[str] = []
        required = self._required()
        for name, (types, nested) in self.wire_fields().items():
            value = getattr(self, name)
            if value is REQUIRED or (value is None and name in required):
                problems.append("%s: missing field %r" % (self.WHERE, name))
            elif value is None:
                continue
            elif nested is not None and list in types:  # a list of messages
                problems.extend(self._convert_items(name, nested, value) if isinstance(value, list) else [
                    "%s: field %r must be list, got %s" % (self.WHERE, name, type(value).__name__)])
            elif nested is not None and isinstance(value, dict):
                try:
                    object.__setattr__(self, name, nested.from_dict(value))
                except WireError as exc:
                    # the nested message names itself by its class ("summary: ..."); here it is this field
                    prefix = "%s.%s" % (self.WHERE, name)
                    problems.extend(prefix + p[len(nested.WHERE):] if p.startswith(nested.WHERE) else "%s: %s" % (prefix, p)
                                    for p in exc.details.get("problems", [exc.message]))
            elif nested is not None and isinstance(value, nested):
                continue
            elif not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                # bool is an int in Python: never accept it where a number is meant
                problems.append("%s: field %r must be %s, got %s" % (
                    self.WHERE, name, "/".join(t.__name__ for t in types), type(value).__name__))
            else:
                problems.extend("%s: field %r %s" % (self.WHERE, name, p) for p in _text_problems(value))
        return problems

    def _convert_items(self, name: str, nested: Type["Message"], items: List[Any]) -> List[str]:
        """A field holding a list of messages: each given as a dict is converted (``name[i]: ...`` problems)."""
        problems: List[str] = []
        converted: List[Message] = []
        for index, item in enumerate(items):
            where = "%s.%s[%d]" % (self.WHERE, name, index)
            if isinstance(item, nested):
                converted.append(item)
            elif not isinstance(item, dict):
                problems.append("%s must be an object, got %s" % (where, type(item).__name__))
            else:
                try:
                    converted.append(nested.from_dict(item))
                except WireError as exc:
                    problems.extend(where + p[len(nested.WHERE):] if p.startswith(nested.WHERE) else "%s: %s" % (where, p)
                                    for p in exc.details.get("problems", [exc.message]))
        if not problems:
            object.__setattr__(self, name, converted)
        return problems

    @classmethod
    def _required(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.default is REQUIRED)  # type: ignore[arg-type]

    def problems(self) -> List[str]:
        """Problems with the values (the types are right); overridden by messages with rules."""
        return []

    @classmethod
    def from_dict(cls: Type[_M], doc: Any) -> _M:
        """The message from its wire form; raises WireError listing every problem (unknown fields included)."""
        if not isinstance(doc, dict):
            raise WireError(E_BAD_REQUEST, "%s must be a JSON object, got %s" % (cls.WHERE, type(doc).__name__))
        known = cls.wire_fields()
        unknown = ["%s: unknown field %r" % (cls.WHERE, key) for key in doc if key not in known]
        try:
            message = cls(**{k: v for k, v in doc.items() if k in known})
        except WireError as exc:
            if exc.code != E_BAD_REQUEST:
                raise
            problems = unknown + exc.details.get("problems", [exc.message])
            raise WireError(E_BAD_REQUEST, "; ".join(problems), {"problems": problems}) from None
        if unknown:
            raise WireError(E_BAD_REQUEST, "; ".join(unknown), {"problems": unknown})
        return message

    def to_dict(self) -> Dict[str, Any]:
        """The wire form: fields that are not set (None) are left out."""
        out: Dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, list):
                out[field.name] = [v.to_dict() if isinstance(v, Message) else v for v in value]
            elif value is not None:
                out[field.name] = value.to_dict() if isinstance(value, Message) else value
        return out


# ---------------------------------------------------------------- parts

def _secret() -> Any:
    """An optional field holding a secret: never part of the message's repr (so never of a log line)."""
    return dataclasses.field(default=None, repr=False)  # pylint: disable=invalid-field-call  # called in class bodies


@dataclasses.dataclass(frozen=True)
class FileSummary(Message):
    """Size and SHA-256 of some bytes: a file, a stream of output, an exec's stdin."""

    WHERE: ClassVar[str] = "summary"
    size: int = REQUIRED
    sha256: str = REQUIRED

    def problems(self) -> List[str]:
        problems = [] if 0 <= self.size <= MAX_FILE_SIZE else ["%s: size must be 0..%d" % (self.WHERE, MAX_FILE_SIZE)]
        return problems + _sha256_problems(self.sha256, "%s: sha256" % self.WHERE)


class Digest:
    """Size and SHA-256 of bytes as they go by; the one way every part computes a FileSummary."""

    def __init__(self) -> None:
        self.size = 0
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def summary(self) -> FileSummary:
        return FileSummary(size=self.size, sha256=self._hash.hexdigest())

    @classmethod
    def of(cls, data: bytes) -> FileSummary:
        digest = cls()
        digest.update(data)
        return digest.summary()


@dataclasses.dataclass(frozen=True)
class StdinBlob(Message):
    """A byte range of an exec's whole stdin, named by its SHA-256 so that an executor can keep it (a pipelined
    module's payload zip, the same for every run of that module). ``sent``: the range is part of the bytes sent
    (verify it, keep it); else it was left out of them and the executor fills it from its cache."""

    WHERE: ClassVar[str] = "blob"
    offset: int = REQUIRED
    size: int = REQUIRED
    sha256: str = REQUIRED
    sent: bool = REQUIRED

    def problems(self) -> List[str]:
        problems = [] if 0 <= self.offset <= MAX_EXEC_STDIN else ["%s: offset must be 0..%d" % (self.WHERE, MAX_EXEC_STDIN)]
        if not 0 < self.size <= MAX_STDIN_BLOB:
            problems.append("%s: size must be 1..%d" % (self.WHERE, MAX_STDIN_BLOB))
        return problems + _sha256_problems(self.sha256, "%s: sha256" % self.WHERE)

    def end(self) -> int:
        return self.offset + self.size


@dataclasses.dataclass(frozen=True)
class Become(Message):
    """Privilege escalation of an exec, as the caller's become plugin defines it: the success marker, the password
    prompt, its answer, and what the escalation command prints for a wrong or a missing password.

    Everything is literal text (the executor builds its own patterns from it), so no caller can make the executor
    run an expensive regular expression. The prompt is either ``prompt_prefix`` (a line starting with it: sudo and
    most become plugins) or ``prompt_words`` (one of these words followed by a colon, anywhere, in any case: su and
    its translations)."""

    WHERE: ClassVar[str] = "become"
    SECRETS: ClassVar[Tuple[str, ...]] = ("password",)
    success: str = REQUIRED
    prompt_prefix: Optional[str] = None
    prompt_words: Optional[List[str]] = None
    fail: Optional[List[str]] = None       # printed after a wrong password ("Sorry, try again.")
    missing: Optional[List[str]] = None    # printed when a password is needed but none was given
    password: Optional[str] = _secret()
    timeout: float = 10

    def problems(self) -> List[str]:
        problems = []
        if not self.success.strip():
            problems.append("%s: success must not be empty" % self.WHERE)
        if self.prompt_prefix is not None and self.prompt_words is not None:
            problems.append("%s: give prompt_prefix or prompt_words, not both" % self.WHERE)
        for name in ("prompt_words", "fail", "missing"):
            texts = getattr(self, name)
            if texts is not None and (len(texts) > MAX_TEXTS or not all(isinstance(t, str) and 0 < len(t) <= 256 for t in texts)):
                problems.append("%s: %s must be at most %d non-empty strings of up to 256 characters"
                                % (self.WHERE, name, MAX_TEXTS))
        if not 0 < self.timeout <= 600:
            problems.append("%s: timeout must be in (0, 600] seconds" % self.WHERE)
        return problems


@dataclasses.dataclass(frozen=True)
class Target(Message):
    """SSH mode: the host a zone executor reaches, and how it logs in.

    Credentials: an identity configured on the executor, by name (preferred: no secret travels), or a password /
    PEM private key in the request (BK-Lite parity); none = the executor's default identity."""

    WHERE: ClassVar[str] = "target"
    SECRETS: ClassVar[Tuple[str, ...]] = ("password", "private_key", "passphrase")
    host: str = REQUIRED
    user: str = REQUIRED
    port: int = 22
    identity: Optional[str] = None
    password: Optional[str] = _secret()
    private_key: Optional[str] = _secret()
    passphrase: Optional[str] = _secret()

    def problems(self) -> List[str]:
        problems = []
        host = self.host
        if not host or len(host) > 255 or any(c.isspace() or ord(c) < 32 for c in host) or host.startswith("-"):
            problems.append("%s: 'host' must be a host name or address, got %r" % (self.WHERE, host))
        if not 0 < self.port < 65536:
            problems.append("%s: 'port' must be 1..65535" % self.WHERE)
        if not self.user or any(c.isspace() or ord(c) < 32 for c in self.user):
            problems.append("%s: 'user' must be a user name" % self.WHERE)
        if self.identity is not None and (self.password is not None or self.private_key is not None):
            problems.append("%s: give an executor 'identity' or a password/private_key, not both" % self.WHERE)
        return problems

    def redacted(self) -> Dict[str, Any]:
        """The target as it may be logged: secrets replaced by a marker."""
        return {k: "<redacted>" if k in self.SECRETS and v is not None else v
                for k, v in dataclasses.asdict(self).items()}

    def where(self) -> str:
        """user@host:port, for log lines and messages (never credentials)."""
        return "%s@%s:%d" % (self.user, self.host, self.port)


@dataclasses.dataclass(frozen=True)
class Source(Message):
    """What a transfer places: an Object Store object (bucket + object) or a file of the executor host (path)."""

    WHERE: ClassVar[str] = "source"
    bucket: Optional[str] = None
    object: Optional[str] = None
    path: Optional[str] = None

    def problems(self) -> List[str]:
        if (self.object is None) == (self.path is None):
            return ["%s: give exactly one of 'object' (with 'bucket') or 'path'" % self.WHERE]
        if self.path is not None:
            return path_problems(self.path, "%s: 'path'" % self.WHERE)
        problems = bucket_problems(self.bucket or "", "%s: 'bucket'" % self.WHERE)
        if not self.object or "\x00" in self.object:
            problems.append("%s: 'object' must be a non-empty name" % self.WHERE)
        return problems


# ---------------------------------------------------------------- requests

@dataclasses.dataclass(frozen=True)
class Request(Message):
    """What every request carries: protocol version, operation, a job id, where the job's events go, and (SSH
    mode) the target host. Requests of the protocol are the subclasses, one per operation."""

    OP: ClassVar[str] = ""
    v: int = REQUIRED
    op: str = REQUIRED
    id: str = REQUIRED
    reply_to: str = REQUIRED
    keepalive: float = DEFAULT_KEEPALIVE
    target: Optional[Target] = None
    expires: Optional[float] = None        # unix time after which the caller no longer waits: never start it then
    nonce: Optional[str] = None            # random, once per request: a signed request is refused when seen again

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("OP"):
            cls.WHERE = cls.OP  # problems name a request by its operation

    @classmethod
    def new(cls: Type[_M], reply_to: str, **fields: Any) -> _M:
        """A new request of this operation (a fresh job id and nonce) whose events go to ``reply_to``."""
        fields.setdefault("nonce", secrets.token_hex(16))
        return cls(v=PROTOCOL_VERSION, op=cls.OP, id=uuid.uuid4().hex, reply_to=reply_to, **fields)  # type: ignore[attr-defined]

    def binding(self) -> str:
        """What ties a reply to this request in the executor's signature: its job id (random, one per job; a job
        sent again after a lost reply keeps it, so the executor's answer fits whichever copy it answers)."""
        return self.id

    def __post_init__(self) -> None:
        if isinstance(self.v, int) and not isinstance(self.v, bool) and self.v != PROTOCOL_VERSION:
            raise WireError(E_UNSUPPORTED_VERSION, "protocol version %r is not supported; this side speaks %d"
                            % (self.v, PROTOCOL_VERSION))
        super().__post_init__()

    def problems(self) -> List[str]:
        problems = []
        if self.op != self.OP:
            problems.append("field 'op' is %r but the request was sent to the %r subject" % (self.op, self.OP))
        if not self.id or len(self.id) > 128 or not self.id.isprintable():
            problems.append("field 'id' must be 1-128 printable characters")
        problems.extend(subject_problems(self.reply_to, "field 'reply_to'"))
        if not 0.1 <= self.keepalive <= 60:
            problems.append("field 'keepalive' must be between 0.1 and 60 seconds")
        if self.expires is not None and not 0 < self.expires < 1e11:
            problems.append("field 'expires' must be a unix time")
        if self.nonce is not None and not _NONCE_RE.match(self.nonce):
            problems.append("field 'nonce' must be 32 to 64 lowercase hex digits")
        return problems

    def on(self) -> str:
        """' on user@host:port' for SSH-mode log lines (never credentials), else ''."""
        return " on %s" % self.target.where() if self.target else ""


@dataclasses.dataclass(frozen=True)
class ExecRequest(Request):
    """Run a command (``command`` through ``shell -c``, or an argument vector) with optional stdin, become, pty."""

    OP: ClassVar[str] = OP_EXEC
    command: Optional[str] = None
    argv: Optional[List[str]] = None
    shell: str = "/bin/sh"
    cwd: Optional[str] = None
    env: Optional[Dict[str, str]] = None
    timeout: float = 0                     # seconds; 0 = no limit
    stdin: Optional[FileSummary] = None    # inline bytes ride as the request's attachment, else an upload stream
    become: Optional[Become] = None
    pty: bool = False
    no_log: bool = False                   # the task is no_log: its command line is never recorded (audit, logs)
    run_as: Optional[str] = None           # the account the caller expects the command to start as (before any
    #                                        become); an executor whose host runs it as another refuses (E_ACCOUNT)
    warm: Optional[bool] = None            # False: never from a warm interpreter (the caller opted out); else the
    #                                        executor decides (its own warm option, and only for what it recognises)
    stdin_blobs: Optional[List[StdinBlob]] = None  # ranges of the whole stdin (``stdin``) named by digest; those not
    #                                        ``sent`` are left out of the bytes sent and come from the executor's cache

    def problems(self) -> List[str]:
        problems = super().problems()
        where = self.WHERE
        if self.run_as is not None and not (0 < len(self.run_as) <= 64 and self.run_as.isprintable()
                                            and not any(c.isspace() or c in ":/" for c in self.run_as)):
            problems.append("%s: 'run_as' must be an account name (1-64 printable characters, no spaces)" % where)
        if (self.command is None) == (self.argv is None):
            problems.append("%s: give exactly one of 'command' or 'argv'" % where)
        if self.argv is not None and (not self.argv or not all(isinstance(a, str) for a in self.argv)):
            problems.append("%s: 'argv' must be a non-empty list of strings" % where)
        if self.env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            problems.append("%s: 'env' must map strings to strings" % where)
        elif self.env is not None and not all(k and "=" not in k for k in self.env):
            problems.append("%s: 'env' names must be non-empty and without '='" % where)
        if self.timeout < 0:
            problems.append("%s: 'timeout' must be >= 0" % where)
        elif self.timeout > MAX_TIMEOUT:
            problems.append("%s: 'timeout' must be at most %d seconds" % (where, MAX_TIMEOUT))
        if self.cwd is not None:
            problems.extend(path_problems(self.cwd, "%s: 'cwd'" % where))
        if self.stdin is not None and self.stdin.size > MAX_EXEC_STDIN:
            problems.append("%s.stdin: size must be 0..%d" % (where, MAX_EXEC_STDIN))
        return problems + self._blob_problems()

    def _blob_problems(self) -> List[str]:
        """stdin_blobs: 1..MAX_STDIN_BLOBS ranges of the announced stdin, in order, not overlapping."""
        if self.stdin_blobs is None:
            return []
        where = "%s.stdin_blobs" % self.WHERE
        if self.stdin is None:
            return ["%s needs 'stdin' (the size and sha256 of the whole stdin)" % where]
        if not 0 < len(self.stdin_blobs) <= MAX_STDIN_BLOBS:
            return ["%s must hold 1 to %d ranges" % (where, MAX_STDIN_BLOBS)]
        end = 0
        for index, blob in enumerate(self.stdin_blobs):
            if blob.offset < end:
                return ["%s[%d] starts before the end of the range before it (sorted, not overlapping)" % (where, index)]
            end = blob.end()
        if end > self.stdin.size:
            return ["%s: the ranges end at %d, beyond the %d bytes of stdin" % (where, end, self.stdin.size)]
        return []

    def sent_size(self) -> int:
        """How many bytes of stdin are sent (inline or uploaded): all of it but the ranges left to the cache."""
        if self.stdin is None:
            return 0
        return self.stdin.size - sum(b.size for b in self.stdin_blobs or () if not b.sent)

    def argv_or_shell(self) -> List[str]:
        """The argument vector to run: ``argv``, or ``[shell, '-c', command]``."""
        return list(self.argv) if self.argv else [self.shell, "-c", self.command or ""]


@dataclasses.dataclass(frozen=True)
class PutRequest(Request):
    """Receive ``size`` bytes (inline, or as an upload stream) into ``path``: verified, then renamed into place."""

    OP: ClassVar[str] = OP_PUT
    path: str = REQUIRED
    size: int = REQUIRED
    sha256: str = REQUIRED
    mode: Optional[int] = None

    def problems(self) -> List[str]:
        problems = super().problems() + _destination_problems(self.WHERE, self.path, self.sha256, self.mode)
        if not 0 <= self.size <= MAX_FILE_SIZE:
            problems.append("%s: 'size' must be >= 0 (and at most %d)" % (self.WHERE, MAX_FILE_SIZE))
        return problems

    def summary(self) -> FileSummary:
        """The size and digest the caller announced."""
        return FileSummary(size=self.size, sha256=self.sha256)


@dataclasses.dataclass(frozen=True)
class FetchRequest(Request):
    """Send the regular file at ``path``."""

    OP: ClassVar[str] = OP_FETCH
    path: str = REQUIRED

    def problems(self) -> List[str]:
        return super().problems() + path_problems(self.path, "%s: 'path'" % self.WHERE)


@dataclasses.dataclass(frozen=True)
class TransferRequest(Request):
    """Place an Object Store object (or a file of the executor host) at ``path``, checksum-idempotent."""

    OP: ClassVar[str] = OP_TRANSFER
    source: Source = REQUIRED
    path: str = REQUIRED
    sha256: Optional[str] = None           # the content the caller expects; compared before anything is fetched
    mode: Optional[int] = None
    check: bool = False                    # only report whether it would change

    def problems(self) -> List[str]:
        return super().problems() + _destination_problems(self.WHERE, self.path, self.sha256, self.mode)


REQUESTS: Dict[str, Type[Request]] = {cls.OP: cls for cls in (ExecRequest, PutRequest, FetchRequest, TransferRequest)}


def parse_request(op: str, doc: Any) -> Request:
    """The typed request for ``op`` from a decoded JSON document; raises WireError listing every problem."""
    cls = REQUESTS.get(op)
    if cls is None:
        raise WireError(E_BAD_REQUEST, "unknown operation %r" % (op,))
    if isinstance(doc, dict) and isinstance(doc.get("v"), int) and doc["v"] != PROTOCOL_VERSION:
        # another protocol version's request is not judged by this version's fields
        raise WireError(E_UNSUPPORTED_VERSION, "protocol version %r is not supported; this side speaks %d"
                        % (doc["v"], PROTOCOL_VERSION))
    return cls.from_dict(doc)


# ---------------------------------------------------------------- replies

@dataclasses.dataclass(frozen=True)
class ExecutorRef(Message):
    """Which executor accepted a job."""

    WHERE: ClassVar[str] = "executor"
    name: str = REQUIRED
    service_id: str = REQUIRED
    version: str = REQUIRED


@dataclasses.dataclass(frozen=True)
class Accepted(Message):
    """The reply that starts a job: the executor, and for an upload the subject to stream the bytes to, for a
    fetch the file's size and mode."""

    WHERE: ClassVar[str] = "accepted"
    v: int = REQUIRED
    id: str = REQUIRED
    executor: ExecutorRef = REQUIRED
    upload: Optional[str] = None
    size: Optional[int] = None
    mode: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ExecResult(Message):
    """The end of an exec: exit status, the size and digest of each output stream, and how long it ran."""

    WHERE: ClassVar[str] = "result"
    rc: int = REQUIRED
    stdout: FileSummary = REQUIRED
    stderr: FileSummary = REQUIRED
    duration: float = REQUIRED
    signal: Optional[int] = None           # set when the command was killed by a signal (rc = -signal)


@dataclasses.dataclass(frozen=True)
class FileState(Message):
    """What is at a path before a transfer: its content digest and permission bits."""

    WHERE: ClassVar[str] = "before"
    sha256: str = REQUIRED
    mode: int = REQUIRED


@dataclasses.dataclass(frozen=True)
class TransferResult(Message):
    """The end of a transfer: whether the path changed (or would, in check mode), the content, what was there."""

    WHERE: ClassVar[str] = "result"
    changed: bool = REQUIRED
    sha256: str = REQUIRED
    path: str = REQUIRED
    size: Optional[int] = None             # unknown in check mode when the caller named the content by its digest
    before: Optional[FileState] = None


def _schema(cls: Type[Message]) -> Dict[str, Tuple[Tuple[type, ...], bool, Any]]:
    """{field: (accepted JSON types, required, default)} of a message class."""
    types = cls.wire_fields()
    return {f.name: (types[f.name][0], f.default is REQUIRED, None if f.default is REQUIRED else f.default)
            for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


# the request schemas by operation, derived from the classes (docs/protocol.md lists the same fields)
SCHEMAS = {op: _schema(cls) for op, cls in REQUESTS.items()}
