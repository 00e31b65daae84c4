# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The work of a job, whatever host it runs on (hosts/): supervise a command (become handshake, stdin, output,
keepalives, timeout), receive a file, send a file.

Each function talks to its caller only through a StreamSender (events out) and, for uploads, a StreamReceiver
(bytes in); it raises WireError for anything the caller should see as a structured error.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from natsops_executor._wire.contract import (
    E_BECOME, E_BECOME_TIMEOUT, E_CHECKSUM_MISMATCH, E_SIZE_MISMATCH, E_STREAM, E_TIMEOUT, KIND_DATA, KIND_KEEPALIVE, KIND_RESULT,
    STREAM_FILE, STREAM_STDERR, STREAM_STDOUT, WireError, liveness_timeout,
)
from natsops_executor._wire.messages import Become, Digest, ExecRequest, ExecResult, FileSummary
from natsops_executor._wire.streams import StreamReceiver, StreamSender
from natsops_executor.hosts.base import Host, Landing, Process, SourceFile

Write = Callable[[bytes], None]


# ---------------------------------------------------------------- exec

MAX_BECOME_OUTPUT = 1 << 20   # bytes an escalation command may print before it succeeds
BECOME_DRAIN = 1.0            # seconds to wait for the rest of stderr once stdout ended during become

# why privilege escalation failed (details["reason"] of become_failed / become_timeout)
BECOME_ENDED = "premature_end"
BECOME_DUPLICATE_PROMPT = "duplicate_prompt"
BECOME_INCORRECT = "incorrect_password"
BECOME_MISSING = "missing_password"
BECOME_TIMEOUT = "timeout"
BECOME_TOO_MUCH = "too_much_output"


class _Become:
    """The privilege escalation handshake, as ansible-core's own connections run it: watch both streams for the
    password prompt (answer it once) and for the success marker; recognise the become plugin's messages for a
    wrong or missing password. Every pattern is built here from the caller's literal texts."""

    def __init__(self, spec: Become) -> None:
        self.spec = spec
        self.success = spec.success.encode("utf-8")
        self.prefix = spec.prompt_prefix.strip().encode("utf-8") if spec.prompt_prefix else None
        self.words = None
        if spec.prompt_words:
            alternatives = b"|".join(re.escape(w.encode("utf-8")) for w in spec.prompt_words)
            self.words = re.compile(b"(?:" + alternatives + b")\\s*(?::|\xef\xbc\x9a)", re.IGNORECASE)
        self.fail = [f.encode("utf-8") for f in spec.fail or ()]
        self.missing = [m.encode("utf-8") for m in spec.missing or ()]
        self.deadline = time.monotonic() + spec.timeout
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.offsets = {STREAM_STDOUT: 0, STREAM_STDERR: 0}
        self.sent_password = False
        self.matched_prompt = b""

    @property
    def expects_prompt(self) -> bool:
        return self.prefix is not None or self.words is not None

    def add(self, name: str, data: bytes) -> None:
        (self.stdout if name == STREAM_STDOUT else self.stderr).extend(data)
        if len(self.stdout) + len(self.stderr) > MAX_BECOME_OUTPUT:
            raise self.failure(BECOME_TOO_MUCH, "privilege escalation printed more than %d bytes before it succeeded"
                               % MAX_BECOME_OUTPUT)

    def succeeded(self) -> bool:
        return any(self.success in line.rstrip() for line in bytes(self.stdout).splitlines(True))

    def _prompt_in(self, output: bytes) -> bool:
        if self.prefix is not None:
            return any(line.strip().startswith(self.prefix) for line in output.splitlines())
        if self.words is not None:
            match = self.words.search(output)
            if match:
                self.matched_prompt = match.group(0)
            return bool(match)
        return False

    def prompted(self) -> bool:
        """A password prompt appeared since the last one."""
        return any(self._prompt_in(bytes(buf[self.offsets[name]:]))
                   for name, buf in ((STREAM_STDOUT, self.stdout), (STREAM_STDERR, self.stderr)))

    def said(self, texts: List[bytes]) -> bool:
        output = bytes(self.stdout) + bytes(self.stderr)
        return any(text in output for text in texts)

    def mark_prompt_seen(self) -> None:
        self.offsets = {STREAM_STDOUT: len(self.stdout), STREAM_STDERR: len(self.stderr)}

    def leftovers(self) -> Tuple[bytes, bytes]:
        """Output of the become stage past the success marker (stdout) and past the prompt (stderr),
        stripped the way ansible-core strips it."""
        out = re.sub(br"^.*?" + re.escape(self.success) + br"\s*", b"", bytes(self.stdout), count=1, flags=re.DOTALL)
        err = bytes(self.stderr)
        prompt = self.prefix or self.matched_prompt
        if prompt and self.sent_password:
            err = re.sub(br"^.*?" + re.escape(prompt) + br"\s*", b"", err, count=1, flags=re.DOTALL)
        return out, err

    def failure(self, reason: str, message: str) -> WireError:
        """become_failed (become_timeout for a timeout) with the reason and what the escalation command printed
        (never the password)."""
        details = {"reason": reason, "expected_prompt": self.expects_prompt, "sent_password": self.sent_password,
                   "stdout": bytes(self.stdout).decode("utf-8", "replace")[-4096:],
                   "stderr": bytes(self.stderr).decode("utf-8", "replace")[-4096:]}
        said = (details["stderr"].strip() or details["stdout"].strip()).splitlines()[-3:]
        if said:
            message = "%s; it said: %s" % (message, " / ".join(line.strip() for line in said))
        return WireError(E_BECOME_TIMEOUT if reason == BECOME_TIMEOUT else E_BECOME, message, details)

    def check_refusal(self) -> None:
        """Raise when the output so far says the password was wrong or missing."""
        if self.sent_password and self.said(self.fail):
            raise self.failure(BECOME_INCORRECT, "the become password was rejected")
        if self.said(self.missing):
            raise self.failure(BECOME_MISSING, "privilege escalation needs a password and none was given")


async def run_command(host: Host, req: ExecRequest, stdin_data: bytes, sender: StreamSender, chunk: int,
                      info: Optional[Dict[str, Any]] = None) -> ExecResult:
    """Run the request's command on ``host``: output and keepalives stream to ``sender``, then the result.
    ``info`` (the job's record for logs and the audit trail) learns whether it ran warm."""
    started = time.monotonic()
    process = await host.spawn(req, stdin_data)
    if info is not None and process.warm:
        info["warm"] = True
    try:
        return await supervise(req, process, stdin_data, sender, chunk, started)
    finally:
        await process.cleanup()


async def supervise(req: ExecRequest, proc: Process, stdin_data: bytes, sender: StreamSender, chunk: int,
                    started: float) -> ExecResult:
    """Drive a started command: become handshake, stdin, output streams, keepalives, timeout; send the result."""
    events: asyncio.Queue = asyncio.Queue(maxsize=8)
    become = _Become(req.become) if req.become else None
    become_done = asyncio.Event()
    if become is None:
        become_done.set()

    async def pump(name: str, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(chunk)
            await events.put((name, data))
            if not data:
                return

    async def feed_stdin() -> None:
        await become_done.wait()
        await proc.feed(stdin_data)

    tasks = [asyncio.ensure_future(pump(STREAM_STDOUT, proc.stdout)),
             asyncio.ensure_future(pump(STREAM_STDERR, proc.stderr)),
             asyncio.ensure_future(feed_stdin())]
    digests = {STREAM_STDOUT: Digest(), STREAM_STDERR: Digest()}
    keepalive = req.keepalive
    deadline = started + req.timeout if req.timeout else None
    open_streams = 2
    last_sent = time.monotonic()
    timed_out = False
    stdout_ended: Optional[float] = None  # when stdout ended during become

    async def forward(name: str, data: bytes) -> None:
        if data:
            digests[name].update(data)
            await sender.send(KIND_DATA, attachment=data, stream=name)

    try:
        while open_streams:
            now = time.monotonic()
            wait = keepalive - (now - last_sent)
            if become is not None and not become_done.is_set():
                wait = min(wait, become.deadline - now)
                if stdout_ended is not None:
                    wait = min(wait, stdout_ended + BECOME_DRAIN - now)
            if deadline is not None:
                wait = min(wait, deadline - now)
            try:
                name, data = await asyncio.wait_for(events.get(), max(wait, 0.01))
            except asyncio.TimeoutError:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    timed_out = True
                    break
                if become is not None and not become_done.is_set():
                    if now >= become.deadline:
                        missing = "no success marker" if become.sent_password else "no success marker and no password prompt"
                        raise become.failure(BECOME_TIMEOUT, "timed out after %.0f s waiting for privilege escalation (%s)"
                                             % (become.spec.timeout, missing)) from None
                    if stdout_ended is not None and now >= stdout_ended + BECOME_DRAIN:
                        raise become.failure(BECOME_ENDED, "privilege escalation ended before it succeeded") from None
                if now - last_sent >= keepalive:
                    await sender.send(KIND_KEEPALIVE)
                    last_sent = now
                continue
            if not data:
                open_streams -= 1
            if become is not None and not become_done.is_set():
                if not data:
                    # stdout ended: whatever stderr still holds says why, so read it (briefly) before failing
                    if open_streams == 0:
                        become.check_refusal()
                        raise become.failure(BECOME_ENDED, "privilege escalation ended before it succeeded")
                    if name == STREAM_STDOUT:
                        stdout_ended = time.monotonic()
                    continue
                become.add(name, data)
                if become.succeeded():
                    become_done.set()
                    out, err = become.leftovers()
                    await forward(STREAM_STDOUT, out)
                    await forward(STREAM_STDERR, err)
                    last_sent = time.monotonic()
                    continue
                become.check_refusal()
                if become.prompted():
                    if become.sent_password:
                        raise become.failure(BECOME_DUPLICATE_PROMPT, "the become password was rejected (prompted again "
                                                                      "after it was sent)")
                    if become.spec.password is None:
                        raise become.failure(BECOME_MISSING, "privilege escalation asks for a password but none was given")
                    become.mark_prompt_seen()
                    proc.write_password(become.spec.password.encode("utf-8") + b"\n")
                    become.sent_password = True
                continue
            await forward(name, data)
            if data:
                last_sent = time.monotonic()
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()

    if timed_out:
        await proc.terminate()
        details = dict(proc.details, timeout=req.timeout, stdout=digests[STREAM_STDOUT].summary().to_dict(),
                       stderr=digests[STREAM_STDERR].summary().to_dict())
        raise WireError(E_TIMEOUT, "command timed out after %s s; its %s was killed" % (req.timeout, proc.label), details)
    # pipes are closed; wait for the exit status while still sending keepalives
    while True:
        try:
            rc = await asyncio.wait_for(proc.wait(), keepalive)
            break
        except asyncio.TimeoutError:
            await sender.send(KIND_KEEPALIVE)
    result = ExecResult(rc=rc, stdout=digests[STREAM_STDOUT].summary(), stderr=digests[STREAM_STDERR].summary(),
                        duration=round(time.monotonic() - started, 6), signal=-rc if rc < 0 else None)
    await sender.send(KIND_RESULT, result.to_dict())
    return result


# ---------------------------------------------------------------- files

async def receive_upload(receiver: StreamReceiver, size: int, keepalive: float, write: Write) -> int:
    """Take exactly ``size`` bytes of data messages from an upload stream, passing each chunk to ``write``."""
    received = 0
    silence = liveness_timeout(keepalive)
    while received < size:
        try:
            msg = await receiver.get(silence)
        except asyncio.TimeoutError:
            raise WireError(E_STREAM, "upload stalled: no data for %.0f s after %d of %d bytes"
                            % (silence, received, size)) from None
        if msg.kind != KIND_DATA:
            raise WireError(E_STREAM, "unexpected %r message in an upload" % msg.kind)
        if received + len(msg.data) > size:
            raise WireError(E_SIZE_MISMATCH, "upload is larger than the announced %d bytes" % size)
        received += len(msg.data)
        write(msg.data)
    return received


def check_summary(received: FileSummary, announced: FileSummary) -> None:
    """Raise size_mismatch / checksum_mismatch when the bytes received are not the bytes announced."""
    if received.size != announced.size:
        raise WireError(E_SIZE_MISMATCH, "received %d bytes, %d were announced" % (received.size, announced.size))
    if received.sha256 != announced.sha256:
        raise WireError(E_CHECKSUM_MISMATCH, "sha256 of the received bytes is %s, the caller announced %s; "
                                             "nothing was written" % (received.sha256, announced.sha256))


async def receive_file(landing: Landing, announced: FileSummary, mode: Optional[int],
                       fill: Callable[[Write], Awaitable[None]]) -> FileSummary:
    """``fill`` writes the bytes into ``landing``; they are checked against ``announced`` and only then put in place
    (``mode`` applied). The caller discards the landing afterwards, so a failure leaves nothing behind."""
    await fill(landing.write)
    summary = landing.summary()
    check_summary(summary, announced)
    await landing.commit(mode)
    return summary


async def send_file(source: SourceFile, sender: StreamSender, chunk: int) -> FileSummary:
    """Stream an open file as data messages, then a result with its size and sha256."""
    digest = Digest()
    while True:
        data = await source.read(chunk)
        if not data:
            break
        digest.update(data)
        await sender.send(KIND_DATA, attachment=data, stream=STREAM_FILE)
    summary = digest.summary()
    await sender.send(KIND_RESULT, summary.to_dict())
    return summary
