# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): what request signatures and pinned executors cost per task (issue 16's target: under
1 ms). Run by ``make bench`` (or alone: ``python bench/trust_bench.py``); writes bench/results/trust.md, which
bench/run_bench.py puts into docs/performance.md.

Two measurements, on real keys:
  crypto      the signature work of one task: the caller signs its request and checks the executor's acceptance
              and result; the executor checks the request and signs the acceptance and the result
  round trip  `true` through a real executor on loopback, signed and pinned against unsigned, interleaved
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time

from _paths import RESULTS as _RESULTS
import devenv  # after _paths, which puts tools/ on sys.path

RESULTS = os.path.join(_RESULTS, "trust.md")
CRYPTO_TASKS = 2000
ROUNDS = 10
PER_ROUND = 50


def _keys(folder):
    from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing  # pylint: disable=import-outside-toplevel
    paths = {}
    for name in ("controller", "executor"):
        paths[name] = os.path.join(folder, "%s.nk" % name)
        with open(paths[name], "wb") as handle:
            handle.write(signing.generate_seed() + b"\n")
    return paths


def crypto(paths):
    """Median microseconds of one task's signature work, both sides together."""
    from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract, signing  # pylint: disable=import-outside-toplevel
    from ansible_collections.natsops.fleet.plugins.module_utils.wire.messages import ExecRequest  # pylint: disable=import-outside-toplevel
    caller = signing.SigningKey.from_file(paths["controller"])
    executor = signing.SigningKey.from_file(paths["executor"])
    trusts_caller = signing.Verifier([caller.public_key])
    pins_executor = signing.Verifier([executor.public_key])
    subject = "natsops.exec.bench-host"
    times = []
    for _task in range(CRYPTO_TASKS):
        started = time.perf_counter()
        req = ExecRequest.new("_INBOX.x.%s" % signing.new_nonce(), command="true", expires=time.time() + 10)
        headers, body = contract.pack(contract.KIND_REQUEST, req.to_dict())
        headers.update(caller.sign(signing.signed_bytes(signing.REQUEST_TAG, subject, body)))
        trusts_caller.verify(signing.signed_bytes(signing.REQUEST_TAG, subject, body), headers, "request")
        for reply in (b'{"v":1,"id":"x","executor":{"name":"n","service_id":"s","version":"0"}}', b'{"rc":0}'):
            reply_headers = executor.sign(signing.signed_bytes(signing.RESULT_TAG, req.binding(), reply))
            pins_executor.verify(signing.signed_bytes(signing.RESULT_TAG, req.binding(), reply), reply_headers, "reply")
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


async def _round_trips(url, instance, trust, count):
    import nats  # pylint: disable=import-outside-toplevel
    from ansible_collections.natsops.fleet.plugins.module_utils._client import AsyncExecutorClient  # pylint: disable=import-outside-toplevel
    nc = await nats.connect(url)
    try:
        client = AsyncExecutorClient(nc, instance, trust=trust)
        times = []
        for _call in range(count):
            started = time.perf_counter()
            rc, _out, _err = await client.exec_command(command="true")
            times.append(time.perf_counter() - started)
            assert rc == 0
        return times
    finally:
        await nc.close()


def round_trips(paths, folder):
    """Medians (ms) of `true` through an executor that requires signatures and signs its replies, called by a
    caller that signs and pins it, and through an executor without trust, called unsigned; interleaved."""
    from ansible_collections.natsops.fleet.plugins.module_utils._client import CallerTrust  # pylint: disable=import-outside-toplevel
    from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing  # pylint: disable=import-outside-toplevel
    known = os.path.join(folder, "known_executors")
    with open(known, "w", encoding="utf-8") as handle:
        handle.write("bench-signed %s\n" % signing.SigningKey.from_file(paths["executor"]).public_key)
    nats = devenv.NatsServer()
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    signed = plain = None
    try:
        signed = devenv.ExecutorProcess(nats.url, ["bench-signed"], log_dir=folder, env=clean_env, inherit_env=False, extra_args=[
            "--trusted-signer", signing.SigningKey.from_file(paths["controller"]).public_key, "--signing-key", paths["executor"]])
        plain = devenv.ExecutorProcess(nats.url, ["bench-plain"], log_dir=folder, env=clean_env, inherit_env=False)
        results = {"signed": [], "plain": []}
        empty = os.path.join(folder, "nothing-pinned")
        for _round in range(ROUNDS):
            results["signed"] += asyncio.run(_round_trips(nats.url, "bench-signed", CallerTrust(paths["controller"], known), PER_ROUND))
            results["plain"] += asyncio.run(_round_trips(nats.url, "bench-plain", CallerTrust(None, empty), PER_ROUND))
        return {name: statistics.median(times) * 1000 for name, times in results.items()}
    finally:
        for proc in (signed, plain):
            if proc is not None:
                proc.stop()
        nats.stop()


def main():
    folder = tempfile.mkdtemp(prefix="natsops-trust-bench-")
    paths = _keys(folder)
    micro = crypto(paths)
    medians = round_trips(paths, folder)
    added = medians["signed"] - medians["plain"]
    text = ("### Signed requests and pinned executors (issue 16 target: under 1 ms per task)\n\n"
            "| measurement | median |\n|---|---|\n"
            "| signature work of one task (sign and check the request; sign and check the acceptance and the result), %d tasks | %.0f µs |\n"
            "| `true` through a real executor, signed and pinned (%d calls, %d interleaved rounds) | %.2f ms |\n"
            "| `true` through a real executor, unsigned | %.2f ms |\n"
            "| difference | %+.2f ms |\n\n"
            "**Target under 1 ms per task: %s** (the signature work itself: %.2f ms; the round trips differ by %+.2f ms). "
            "Measured %s.\n"
            % (CRYPTO_TASKS, micro, ROUNDS * PER_ROUND, ROUNDS, medians["signed"], medians["plain"], added,
               "met" if micro / 1000 < 1.0 and added < 1.0 else "not met", micro / 1000, added,
               time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
