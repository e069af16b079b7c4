"""`huatuo serve` end to end: the real `huatuo serve` process on the tiny bundle, on 127.0.0.1 only,
spoken to with the real `openai` client (and httpx for what that client cannot send)."""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

KEY = "test-key-0123456789abcdef"
QUESTION = "Describe the findings."
NOTICE_START = "Not for diagnostic use"
PATIENT = "CompressedSamples^CT1"  # CT_small.dcm's PatientName


def _env(home: Path, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HUATUO_API_KEY", "HUATUO_MODEL")}
    env["HUATUO_VISION_PRECISION"] = "fp32"  # answers compared with ask's (conftest pins it per test)
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        env[var] = str(home / var.lower())
    if key:
        env["HUATUO_API_KEY"] = key
    return env


class Server:
    def __init__(self, bundle: Path, home: Path, *args: str, key: str | None = KEY) -> None:
        self.home = home
        self.env = _env(home, key)
        self.log = home / "serve.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "huatuo_cli", "serve", "--model", str(bundle),
                                      "--port", "0", *args], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("w"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            match = re.search(r"listening on (https?)://127\.0\.0\.1:(\d+)", self.log.read_text())
            if match:
                self.base = f"{match.group(1)}://127.0.0.1:{match.group(2)}"
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"huatuo serve exited: {self.log.read_text()}")
            time.sleep(0.1)
        raise AssertionError("huatuo serve did not start")

    def client(self, key: str | None = KEY, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key or "none", max_retries=0, timeout=120, **kwargs)

    def audit(self) -> list[dict]:
        path = self.home / "xdg_data_home" / "huatuo" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(30)
        return self.log.read_text()


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def image_message(url: str, question: str = QUESTION, count: int = 1) -> list[dict]:
    return [{"role": "user", "content": [*[{"type": "image_url", "image_url": {"url": url}}] * count,
                                         {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("serve-inputs")
    png = folder / "cxr.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8")).save(png)
    return {"png": png, "dicom": Path(get_testdata_file("CT_small.dcm", download=False))}


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    srv = Server(tiny_bundle, tmp_path_factory.mktemp("serve-home"), "--max-body-mb", "1")
    yield srv
    srv.stop()


def ask_json(server: Server, bundle: Path, *args: str, stdin: str | None = None) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "huatuo_cli", "ask", "--json", "--model", str(bundle), *args],
                         env=server.env, capture_output=True, text=True, input=stdin, timeout=300, check=True)
    decoder, text, records = json.JSONDecoder(), out.stdout.strip(), []
    while text:
        record, end = decoder.raw_decode(text)
        records.append(record)
        text = text[end:].strip()
    return records


def test_image_and_dicom_answers_equal_ask_and_streaming_equals_non_streaming(server, tiny_bundle, files):
    client = server.client()
    models = client.models.list().data
    assert [m.id for m in models] == [tiny_bundle.name] and len(models[0].model_sha256) == 64
    for kind, mime, extra, ask_args in (("png", "image/png", {}, []),
                                        ("dicom", "application/dicom", {}, []),
                                        ("dicom", "application/dicom", {"window": "lung"}, ["--window", "lung"])):
        expected = ask_json(server, tiny_bundle, "--max-tokens", "24", *ask_args, str(files[kind]), QUESTION)[0]
        messages = image_message(data_url(files[kind], mime))
        raw = client.chat.completions.with_raw_response.create(
            model=tiny_bundle.name, messages=messages, max_tokens=24, temperature=0, extra_body=extra)
        assert raw.headers["x-huatuo-notice"].startswith(NOTICE_START)
        reply = raw.parse()
        assert reply.choices[0].message.content == expected["answer"], kind
        assert reply.usage.completion_tokens == expected["tokens"] and reply.usage.prompt_tokens == expected["prompt_tokens"]
        assert reply.usage.total_tokens == expected["tokens"] + expected["prompt_tokens"]
        assert reply.choices[0].finish_reason == ("length" if expected["stopped_by"] == "max-tokens" else "stop")
        body = reply.model_dump()
        assert body["notice"].startswith(NOTICE_START) and body["huatuo"]["window"] == expected["window"]
        assert body["huatuo"]["inputs"] == expected["inputs"]
        stream = client.chat.completions.create(model=tiny_bundle.name, messages=messages, max_tokens=24, temperature=0,
                                                stream=True, stream_options={"include_usage": True}, extra_body=extra)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected["answer"], kind
        assert chunks[-1].usage.completion_tokens == expected["tokens"]
        assert all(c.model_dump()["notice"].startswith(NOTICE_START) for c in chunks)


def test_follow_up_with_history_equals_ask_interactive(server, tiny_bundle, files):
    first, second = ask_json(server, tiny_bundle, "-i", "--max-tokens", "12", str(files["png"]), QUESTION,
                             stdin="Is it normal?\n\n")
    client = server.client()
    messages = [*image_message(data_url(files["png"], "image/png")),
                {"role": "assistant", "content": first["answer"]},
                {"role": "user", "content": "Is it normal?"}]
    reply = client.chat.completions.create(model=tiny_bundle.name, messages=messages, max_tokens=12)
    assert reply.choices[0].message.content == second["answer"]


def test_concurrent_clients_get_their_own_answers(server, tiny_bundle, files):
    client = server.client()
    url = data_url(files["png"], "image/png")
    questions = [f"Question {i}: what do you see?" for i in range(6)]

    def one(question: str) -> str:
        reply = client.chat.completions.create(model=tiny_bundle.name, messages=image_message(url, question),
                                               max_tokens=16)
        return reply.choices[0].message.content

    alone = [one(q) for q in questions]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(one, questions))
    assert together == alone and len(set(alone)) > 1


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, tiny_bundle, files):
    url = data_url(files["png"], "image/png")
    headers = {"Authorization": f"Bearer {KEY}"}
    post = f"{server.base}/v1/chat/completions"
    big = "data:image/png;base64," + "A" * (1024 * 1024 + 10)
    cases = [
        ("not an image", {"messages": image_message("data:image/png;base64," + base64.b64encode(b"hello").decode())},
         400, "invalid_image"),
        ("remote URL", {"messages": image_message("https://example.org/cxr.png")}, 400, "remote_image_refused"),
        ("seven images", {"messages": image_message(url, count=7)}, 400, "too_many_images"),
        ("prompt too long", {"messages": image_message(url), "max_tokens": 4096}, 400, "context_length_exceeded"),
        ("empty question", {"messages": image_message(url, question="  ")}, 400, "invalid_question"),
        ("no messages", {"messages": []}, 400, None),
        ("bad window", {"messages": image_message(url), "window": "nonsense"}, 400, "invalid_window"),
        ("bad temperature", {"messages": image_message(url), "temperature": 9}, 400, None),
        ("other model", {"model": "gpt-4o", "messages": image_message(url)}, 404, "model_not_found"),
        ("too large", {"messages": image_message(big)}, 413, "body_too_large"),
    ]
    for name, body, status, code in cases:
        res = httpx.post(post, json=body, headers=headers, timeout=60)
        assert res.status_code == status, (name, res.text)
        error = res.json()["error"]
        assert error["message"] and error["type"] and (code is None or error["code"] == code), (name, error)
        assert res.headers["x-huatuo-notice"].startswith(NOTICE_START)
    for name, content in (("empty body", b""), ("malformed JSON", b"{\"messages\": [")):
        res = httpx.post(post, content=content, headers=headers, timeout=60)
        assert res.status_code == 400 and res.json()["error"]["message"], name
    # sent chunked, without Content-Length: the limit is enforced while the body is read
    oversized = json.dumps({"messages": image_message(big)}).encode()
    pieces = (oversized[i:i + 65536] for i in range(0, len(oversized), 65536))
    res = httpx.post(post, content=pieces, headers=headers, timeout=60)
    assert "content-length" not in res.request.headers and res.status_code == 413
    assert res.json()["error"]["code"] == "body_too_large"
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model=tiny_bundle.name, messages=image_message("http://10.0.0.1/a.png"))
    reply = server.client().chat.completions.create(model=tiny_bundle.name, messages=image_message(url), max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_api_key_on_every_endpoint_but_health(server, tiny_bundle, files):
    assert httpx.get(f"{server.base}/health").status_code == 200
    for path in ("/v1/models", f"/v1/models/{tiny_bundle.name}"):
        assert httpx.get(server.base + path).status_code == 401
        assert httpx.get(server.base + path, headers={"Authorization": "Bearer wrong-key-0123456789"}).status_code == 401
        assert httpx.get(server.base + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    res = httpx.post(f"{server.base}/v1/chat/completions", json={"messages": image_message("x")})
    assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong-key-0123456789").models.list()
    assert server.client().models.list().data


def test_disconnect_mid_stream_stops_the_generation_and_audit_lines(server, tiny_bundle, files):
    before = len(server.audit())
    question = "Write a long report."
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": [{"role": "user", "content": question}], "max_tokens": 3500, "stream": True},
                      timeout=60) as res:
        lines = res.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(e["question"] == question for e in server.audit()[before:]):
        time.sleep(0.2)
    entry = next(e for e in server.audit()[before:] if e["question"] == question)
    assert entry["outcome"] == "stopped" and entry["command"] == "serve"
    entries = [e for e in server.audit() if e["command"] == "serve"]  # `huatuo ask` runs share the log
    assert len(entries) > 20
    sha = server.client().models.list().data[0].model_sha256
    assert {e["model_sha256"] for e in entries} == {sha}
    assert {"ok", "error", "stopped"} <= {e["outcome"] for e in entries}  # the prompt too long is an error
    audit_text = (server.home / "xdg_data_home" / "huatuo" / "audit.jsonl").read_text()
    assert PATIENT not in audit_text and "1CT1" not in audit_text
    assert PATIENT not in server.log.read_text() and "/tmp" not in server.log.read_text()


def test_full_queue_is_429_with_retry_after_and_tls(tiny_bundle, files, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    srv = Server(tiny_bundle, tmp_path, "--queue", "0", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert srv.base.startswith("https://")
        with pytest.raises(httpx.ConnectError):  # self-signed: refused unless trusted
            httpx.get(f"{srv.base}/health")
        client = srv.client(http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(cert))))
        url = data_url(files["png"], "image/png")

        def one(i: int) -> tuple[int, str | None]:
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=tiny_bundle.name, messages=image_message(url), max_tokens=1500)
                return 200, raw.parse().choices[0].message.content
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"].isdigit()
                assert exc.body["code"] == "queue_full"
                return 429, None

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(one, range(6)))
        codes = [c for c, _ in outcomes]
        assert 429 in codes and 200 in codes, codes
        assert len({text for c, text in outcomes if c == 200}) == 1
        assert client.chat.completions.create(model=tiny_bundle.name, messages=image_message(url), max_tokens=4)
    finally:
        srv.stop()


def test_non_loopback_needs_a_key_and_the_key_never_comes_from_argv(tiny_bundle, tmp_path):
    env = _env(tmp_path)
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        res = subprocess.run([sys.executable, "-m", "huatuo_cli", "serve", "--model", str(tiny_bundle), "--host", host],
                             env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 1 and "API key is required" in res.stderr and "listening" not in res.stderr, host
    res = subprocess.run([sys.executable, "-m", "huatuo_cli", "serve", "--api-key", KEY], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "No such option" in res.stderr
    short = tmp_path / "key"
    short.write_text("abc\n")
    res = subprocess.run([sys.executable, "-m", "huatuo_cli", "serve", "--model", str(tiny_bundle), "--api-key-file",
                          str(short)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "too short" in res.stderr and "abc" not in res.stderr


def test_security_rules():
    from huatuo_cli.commands.serve_cmd import DEFAULT_HOST, DEFAULT_PORT
    from huatuo_cli.doctor import SERVE_DEFAULT_BIND, serve_check
    from huatuo_cli.errors import HuatuoError
    from huatuo_cli.serve.security import check_bind, is_loopback

    assert (DEFAULT_HOST, DEFAULT_PORT) == SERVE_DEFAULT_BIND and is_loopback(DEFAULT_HOST)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "workstation.local"))
    with pytest.raises(HuatuoError):
        check_bind("0.0.0.0", None, tls=True)
    assert check_bind("0.0.0.0", KEY, tls=False)  # allowed, with a warning about clear text
    check = serve_check()
    assert check.status == "ok" and "127.0.0.1:8765" in check.detail


def test_streaming_pieces_join_to_the_stripped_answer():
    from huatuo_cli.serve.app import _Trim

    for pieces in ([" ", " Hello", " world", " \n", ""], ["\n", "a", " ", " ", "b  "], ["  "]):
        trim = _Trim()
        assert "".join(trim.feed(p) for p in pieces) == "".join(pieces).strip()


def test_protocol_reads_history_and_refuses_images_after_the_first_message():
    from huatuo_cli.serve.protocol import ApiError, read_chat_request

    png = "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()
    req = read_chat_request({"messages": [{"role": "system", "content": "be brief"}, *image_message(png, "q1"),
                                          {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}],
                             "seed": 3, "top_p": 0.5}, max_images=6)
    assert req.question == "q2" and len(req.images) == 1 and req.sampling == {"seed": 3, "top_p": 0.5}
    assert [(t.question, t.images, t.answer) for t in req.history] == [("q1", 1, "a1")]
    with pytest.raises(ApiError) as err:
        read_chat_request({"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                        *image_message(png, "q2")]}, max_images=6)
    assert err.value.status == 400 and err.value.code == "image_not_first"


def test_an_unexpected_exception_is_a_500_logged_by_type_without_its_message(caplog):
    """Starlette re-raises an unexpected exception after its 500 handler so that the server logs it; uvicorn
    would print the traceback and the message (here a patient's name). The Guard ends it: type only."""
    import asyncio
    import logging
    import socket
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    from huatuo_cli.logs import setup
    from huatuo_cli.serve.app import Guard

    setup()  # as `huatuo serve` configures logging (huatuo's logger stops propagating)

    async def broken(request):
        raise RuntimeError(f"cannot read /studies/{PATIENT}/1.dcm")

    from starlette.responses import JSONResponse

    async def internal(request, exc):
        return JSONResponse({"error": "internal"}, status_code=500)

    app = Guard(Starlette(routes=[Route("/v1/chat/completions", broken, methods=["POST"])],
                          exception_handlers={Exception: internal}), api_key=None)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", log_config=None))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    # whatever an earlier test configured (huatuo's logger does not propagate): both loggers straight to caplog
    loggers = [logging.getLogger(name) for name in ("huatuo.serve", "uvicorn.error", "uvicorn")]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="huatuo.serve"):
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={})
        server.should_exit = True
        thread.join(30)
    for logger in loggers:
        logger.removeHandler(caplog.handler)
    assert response.status_code == 500 and response.headers["x-huatuo-notice"].startswith(NOTICE_START)
    logged = "\n".join(r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records)
    assert "RuntimeError" in logged
    assert PATIENT not in logged and "Traceback" not in logged and not any(r.exc_info for r in caplog.records)
