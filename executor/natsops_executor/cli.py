# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Entry point of the ``natsops-executor`` command."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import List, Optional

from natsops_executor import __version__
from natsops_executor import config as config_mod
from natsops_executor._wire.connect import SERVICE, describe

log = logging.getLogger("natsops_executor")

EXIT_CONFIG = 2
EXIT_CONNECT = 3


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--version" in argv:
        print("natsops-executor %s" % __version__)
        return 0
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s natsops-executor[%(process)d] %(levelname)s %(message)s")
    try:
        cfg = config_mod.load(argv)
    except config_mod.ConfigError as exc:
        log.error("configuration error: %s", exc)
        sys.exit(EXIT_CONFIG)
    logging.getLogger().setLevel(cfg.log_level)
    if "--check-config" in argv:
        print("natsops-executor %s: configuration is usable: instance id(s) %s, %s" % (
            __version__, ", ".join(cfg.instances), describe(cfg.nats_options(), SERVICE)))
        return 0
    sys.exit(asyncio.run(_run(cfg)))


async def _run(cfg: config_mod.Config) -> int:
    # imported here so --help and configuration errors work without nats-py installed
    import nats.errors  # pylint: disable=import-outside-toplevel
    from natsops_executor.service import Executor  # pylint: disable=import-outside-toplevel
    from natsops_executor._wire.connect import NatsConnectError  # pylint: disable=import-outside-toplevel

    executor = Executor(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await executor.start()
    except NatsConnectError as exc:
        log.error("%s", exc)
        return EXIT_CONNECT
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
        log.error("cannot connect to NATS (%s): %s", describe(cfg.nats_options(), SERVICE), exc or type(exc).__name__)
        return EXIT_CONNECT
    await stop.wait()
    log.info("signal received; shutting down")
    await executor.stop()
    return 0
