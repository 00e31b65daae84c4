# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A BK-Lite server's executor RPC client, written from the brief (../shared/briefs/bklite-executor.md),
NOT from our wire/bklite.py: the tests drive natsops-executor --bklite-compat the way an unmodified
BK-Lite server does, so a drift of our contract from theirs fails a test.

Like BK-Lite's server: one NATS connection per call, subject ``<op>.<method>.<instance_id>``, body
``json.dumps({"args": [request], "kwargs": {}})`` (Python's default separators, ASCII escapes),
request timeout = execute_timeout (+1 s for SSH work, 5 s for health.check); a reply with
``success`` false raises with ``error`` and the output, otherwise ``result`` comes back.
"""

import asyncio
import json

import nats

RPC_TIMEOUT_GRACE_SECONDS = 1


class BkliteCallFailed(Exception):
    def __init__(self, reply):
        text = reply.get("error") or "Unknown error occurred"
        if reply.get("result"):
            text += " | Output: " + reply["result"]
        super().__init__(text)
        self.reply = reply


class BkliteServerClient:
    def __init__(self, servers, instance_id):
        self.servers = servers if isinstance(servers, list) else [servers]
        self.instance_id = instance_id

    async def _request(self, subject_prefix, request, timeout, raw=False, body=None):
        nc = await nats.connect(servers=self.servers, connect_timeout=5, max_reconnect_attempts=1)
        try:
            payload = body if body is not None else json.dumps({"args": [request], "kwargs": {}}).encode()
            msg = await asyncio.wait_for(nc.request("%s.%s" % (subject_prefix, self.instance_id), payload,
                                                    timeout=timeout), timeout)
        finally:
            await nc.close()
        reply = json.loads(msg.data)
        if raw:
            return reply
        if not reply.get("success"):
            raise BkliteCallFailed(reply)
        return reply["result"] if "result" in reply else reply

    def call(self, subject_prefix, request, timeout, raw=False, body=None):
        return asyncio.run(self._request(subject_prefix, request, timeout, raw=raw, body=body))

    # the server's own helpers, as the brief lists them
    def health_check(self, raw=False):
        return self.call("health.check", {"execute_timeout": 5}, 5, raw=raw)

    def execute_local(self, command, timeout=60, shell=None, env=None, raw=False, **stream):
        request = {"command": command, "execute_timeout": timeout}
        if shell:
            request["shell"] = shell
        if env:
            request["env"] = env
        request.update(stream)
        return self.call("local.execute", request, timeout + RPC_TIMEOUT_GRACE_SECONDS, raw=raw)

    def execute_ssh(self, command, host, user, port=22, timeout=60, password=None, private_key=None, passphrase=None,
                    connection_test=False, raw=False, **stream):
        request = {"command": command, "host": host, "port": port, "user": user, "execute_timeout": timeout}
        for name, value in (("password", password), ("private_key", private_key), ("passphrase", passphrase)):
            if value:
                request[name] = value
        if connection_test:
            request["connection_test"] = True
        request.update(stream)
        return self.call("ssh.execute", request, timeout + RPC_TIMEOUT_GRACE_SECONDS, raw=raw)

    def download_to_local(self, bucket_name, file_key, file_name, target_path, timeout=60, raw=False):
        request = {"bucket_name": bucket_name, "file_key": file_key, "file_name": file_name, "target_path": target_path,
                   "execute_timeout": timeout, "overwrite": True}
        return self.call("download.local", request, timeout, raw=raw)

    def download_to_remote(self, bucket_name, file_key, file_name, target_path, host, user, port=22, local_path="/tmp",
                           timeout=60, password=None, private_key=None, fast_fail=False, raw=False):
        request = {"bucket_name": bucket_name, "file_key": file_key, "file_name": file_name, "target_path": target_path,
                   "local_path": local_path, "host": host, "port": port, "user": user, "execute_timeout": timeout,
                   "overwrite": True}
        for name, value in (("password", password), ("private_key", private_key)):
            if value:
                request[name] = value
        if fast_fail:
            request["fast_fail"] = True
        return self.call("download.remote", request, timeout + RPC_TIMEOUT_GRACE_SECONDS, raw=raw)

    def transfer_file_to_remote(self, source_path, target_path, host, user, port=22, timeout=60, password=None,
                                private_key=None, raw=False):
        request = {"source_path": source_path, "target_path": target_path, "host": host, "port": port, "user": user,
                   "execute_timeout": timeout}
        for name, value in (("password", password), ("private_key", private_key)):
            if value:
                request[name] = value
        return self.call("upload.remote", request, timeout + RPC_TIMEOUT_GRACE_SECONDS, raw=raw)

    def unzip_local(self, zip_path, dest_dir, timeout=60, raw=False):
        return self.call("unzip.local", {"zip_path": zip_path, "dest_dir": dest_dir}, timeout, raw=raw)
