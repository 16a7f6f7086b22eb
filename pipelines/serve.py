"""Serve the privacy team's API, the applications' OpenAI-compatible API and the audit page.

    sisa token create --role admin --name ops --config configs/tiny.yaml      # once
    sisa serve --config configs/tiny.yaml                                      # 127.0.0.1:8750

The app is sisa/service/app.py, with one router per audience beside it (privacy.py,
completions.py, audit_page.py). A background worker runs a batch whenever the policy
(`deletion.*`) says one is due. Ctrl-C stops it cleanly; a request acknowledged with 202
is already in the ledger, so a killed server loses none.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from sisa.config import SisaConfig
from sisa.data import open_store
from sisa.forgetting import policy


def run(cfg: SisaConfig) -> None:
    import uvicorn  # the ASGI server; only this verb needs it

    from sisa.service import create_app  # FastAPI and the model stack: only this verb needs them

    open_store(cfg)  # fail early, with the usual message, when there is no store
    policy.load_policy(cfg)  # and when the decision rules (deletion.policy) are not valid
    print(f"sisa serve: http://{cfg.service.host}:{cfg.service.port}  (audit page: /audit; API: /docs)", flush=True)
    app = create_app(cfg)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.sisa.worker.stop.set()  # no batch starts once a stop is asked for
            super().handle_exit(sig, frame)

    # SIGTERM or Ctrl-C: running requests get service.shutdown_timeout_s, then they are cut
    # off (a stream's end cancels its decoding) and the app's shutdown stops the threads and
    # the embedded Ray (sisa/service/worker.py).
    config = uvicorn.Config(
        app,
        host=cfg.service.host,
        port=cfg.service.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=max(1, round(cfg.service.shutdown_timeout_s)),
    )
    server = Server(config)
    # uvicorn raises a Ctrl-C again once it has shut down: a clean stop.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn said why (the port is taken, ...); its own exit code for this


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    run(cfg)
    return 0
