"""`huatuo serve`: an OpenAI-compatible HTTP API over one verified bundle (docs/serve.md).

The bundle is verified and loaded, and the audit trail proven writable, before the socket is
bound: nothing is accepted that could not be answered and audited. Options, logs and errors
never carry a key or a patient detail.
"""

from __future__ import annotations

import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from huatuo_cli.answering.model_options import device_option, model_option, sampling_options
from huatuo_cli.errors import HuatuoError
from huatuo_cli.privacy import NOTICE

if TYPE_CHECKING:
    from huatuo_cli.engine.llm import Sampling

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_QUEUE = 8
DEFAULT_MAX_BODY_MB = 64


@click.command()
@model_option
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="address to listen on; anything but loopback needs an API key")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="TCP port (0: any free port, printed at start)")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="file holding the API key clients must send as 'Authorization: Bearer' "
                   "(or set HUATUO_API_KEY; never on the command line)")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM certificate: serve HTTPS (with --tls-key)")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="PEM private key of --tls-cert")
@click.option("--queue", "queue_size", type=click.IntRange(0, 1024), default=DEFAULT_QUEUE, show_default=True,
              help="requests that may wait for the model; more get 429 with Retry-After")
@click.option("--max-body-mb", type=click.IntRange(1, 1024), default=DEFAULT_MAX_BODY_MB, show_default=True,
              help="largest request body in MiB (images travel base64-encoded)")
@sampling_options
@device_option
def serve(model_path: str | None, host: str, port: int, api_key_file: Path | None, tls_cert: Path | None,
          tls_key: Path | None, queue_size: int, max_body_mb: int, sampling: Sampling, vision: str,
          threads: int | None, device: str) -> None:
    """Serve the bundle over an OpenAI-compatible HTTP API (chat completions with images and DICOM).

    Requests that leave decoding open get the defaults below (greedy, repetition penalty 1.2), so a
    request with temperature 0 answers as `huatuo ask` does. Every answer is audited (command
    serve). The server never fetches anything: images come in the request as data URLs.

    \b
    Examples:
      huatuo serve --model /srv/bundles/huatuo-7b-q4_k_m
      HUATUO_API_KEY=$(cat /etc/huatuo/key) huatuo serve --host 0.0.0.0 \\
          --tls-cert server.pem --tls-key server.key
    """
    from huatuo_cli.extras import require
    from huatuo_cli.serve.security import check_bind, read_api_key

    require("starlette"), require("uvicorn")  # a broken install says what to reinstall, not a traceback
    api_key, warnings = read_api_key(api_key_file)
    if (tls_cert is None) != (tls_key is None):
        raise HuatuoError("--tls-cert and --tls-key go together")
    warnings += check_bind(host, api_key, tls=tls_cert is not None)
    if tls_cert is not None and tls_key is not None:
        _check_tls(tls_cert, tls_key)
    sock = _bind(host, port)  # before the model loads: a taken port fails fast, but nothing is accepted yet
    try:
        _serve(sock, model_path=model_path, host=host, api_key=api_key, warnings=warnings, tls=(tls_cert, tls_key),
               queue_size=queue_size, max_body=max_body_mb * 1024 * 1024, sampling=sampling, vision=vision,
               threads=threads, device=device)
    finally:
        sock.close()


def _serve(sock: socket.socket, *, model_path: str | None, host: str, api_key: str | None, warnings: list[str],
           tls: tuple[Path | None, Path | None], queue_size: int, max_body: int, sampling: Sampling, vision: str,
           threads: int | None, device: str) -> None:
    import logging

    import uvicorn

    from huatuo_cli.answering.service import AnswerService
    from huatuo_cli.engine.quant_probe import find_model
    from huatuo_cli.serve.app import LOG, create_app
    from huatuo_cli.serve.worker import Worker

    bundle = find_model(model_path)
    service = AnswerService.open(bundle, command="serve", sampling=sampling, device=device, vision=vision,
                                 threads=threads)  # verifies the bundle, checks the audit trail
    worker = Worker(service, queue_size=queue_size)
    try:
        info = service.model.info
        name = service.model.bundle.manifest.bundle_name
        app = create_app(worker, model_name=name, model_sha256=info.model_sha256, api_key=api_key, max_body=max_body)
        LOG.setLevel(logging.INFO)
        for warning in warnings:
            click.echo(f"huatuo serve: warning: {warning}", err=True)
        address, bound_port = sock.getsockname()[:2]
        scheme = "https" if tls[0] else "http"
        shown = f"[{address}]" if ":" in address else address
        click.echo(NOTICE, err=True)
        click.echo(f"huatuo serve: model {name} (sha256 {info.model_sha256[:12]}), "
                   f"{'API key required' if api_key else 'no API key'}, queue {queue_size}", err=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, lifespan="on",
                                ssl_certfile=tls[0], ssl_keyfile=tls[1], timeout_graceful_shutdown=5,
                                proxy_headers=False)
        sock.listen(config.backlog)  # before saying so: a client told the port may connect at once
        click.echo(f"huatuo serve: listening on {scheme}://{shown}:{bound_port}", err=True)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        worker.close()
    click.echo("huatuo serve: stopped", err=True)


def _check_tls(cert: Path, key: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise HuatuoError(f"cannot use --tls-cert/--tls-key: {type(exc).__name__} ({getattr(exc, 'reason', None) or 'unreadable'})",
                          hint="give a PEM certificate and its private key") from None


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise HuatuoError(f"--host {host}: not an address of this machine") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)  # listen() comes from uvicorn, once the model is loaded
    except OSError as exc:
        sock.close()
        raise HuatuoError(f"cannot listen on {host}:{port}: {exc.strerror or type(exc).__name__}") from None
    sock.set_inheritable(False)
    return sock


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve())
