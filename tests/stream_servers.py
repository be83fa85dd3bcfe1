"""Two small real HTTP servers that answer through ``aiops.inference.streaming`` (tests and bench).

Both run in a background thread of the calling process (so a test's generator can share
``threading.Event`` objects with it) on a real 127.0.0.1 socket, and route as the serving
container and the Runtime API do:

- ``POST /invocations``: chunked when the response is a stream (whole body for HTTP/1.0);
- ``POST /endpoints/{name}/invocations-response-stream``: event-stream frames;
- ``POST /endpoints/{name}/invocations``: the whole body (what InvokeEndpoint gets).

``respond(path, body, content_type, accept)`` -> ``(bytes | iterator, content_type)`` decides the
answer; it runs on a worker thread. An exception before the first chunk is a JSON 500 (or the
exception's ``status_code`` when it has a 4xx one).

``kind="asgi"`` is a raw ASGI app on uvicorn (what ``aiops serve`` is) using
``streaming.respond_asgi``; ``kind="asyncio"`` is ``asyncio.start_server`` with
``streaming.StreamWriterSink`` and hand-written HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time
from typing import Any, Callable

from aiops.inference import streaming
from aiops.inference.serving.http.responses import TransportSink, stream_head_lines

Respond = Callable[[str, bytes, str, str], tuple[Any, str]]


def _error_body(err: BaseException) -> tuple[int, bytes]:
    status = getattr(err, "status_code", None)
    if not (isinstance(status, int) and 400 <= status < 500):
        status = 500
    message = str(err) if status < 500 else f"the inference handler raised {type(err).__name__}"
    return status, json.dumps({"error": message, "status": status}).encode() + b"\n"


def _route(path: str) -> bool:
    return path == "/invocations" or (path.startswith("/endpoints/") and (
        path.endswith("/invocations") or path.endswith(streaming.STREAM_ROUTE_SUFFIX)))


class _Base:
    def __init__(self, respond: Respond, timeout_s: float | None = None) -> None:
        self.respond = respond
        self.timeout_s = timeout_s
        self.outcomes: queue.Queue = queue.Queue()  # one StreamOutcome per streamed response, once it ended
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def next_outcome(self, timeout: float = 30) -> streaming.StreamOutcome:
        """The next streamed response's outcome (waits until that response has ended)."""
        return self.outcomes.get(timeout=timeout)

    async def _call(self, path: str, body: bytes, ctype: str, accept: str):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.respond, path, body, ctype, accept)


class AsgiStreamServer(_Base):
    kind = "asgi"

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] != "POST" or not _route(path):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        accept = headers.get("x-amzn-sagemaker-accept") or headers.get("accept") or ""
        try:
            out, ctype = await self._call(path, b"".join(chunks), headers.get("content-type", ""), accept)
            if streaming.is_stream(out):
                stream = streaming.ChunkStream(out)
                await stream.start()
                mode = streaming.mode_for(scope)
                if mode != streaming.BUFFERED:
                    self.outcomes.put(await streaming.respond_asgi(
                        stream, receive, send, mode=mode, content_type=ctype, request_id="test",
                        variant="AllTraffic", timeout_s=self.timeout_s))
                    return
                out = await stream.collect()
        except Exception as err:  # noqa: BLE001 - nothing sent yet: an ordinary error response
            status, body = _error_body(err)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    def start(self) -> None:
        import uvicorn

        try:
            import httptools  # noqa: F401 - what aiops serve uses when it is there

            http = "httptools"
        except ImportError:
            http = "h11"  # the tests pass with either
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, log_config=None, loop="asyncio",
                                http=http, timeout_graceful_shutdown=1,
                                interface="asgi3", proxy_headers=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        pause = threading.Event()
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            pause.wait(0.01)  # uvicorn has no start callback; poll its flag
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self.sock.close()


class AsyncioStreamServer(_Base):
    kind = "asyncio"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method != "POST" or not _route(path):
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        accept = headers.get("x-amzn-sagemaker-accept") or headers.get("accept") or ""
        scope = {"path": path, "http_version": version.split("/", 1)[1]}
        try:
            out, ctype = await self._call(path, body, headers.get("content-type", ""), accept)
            if streaming.is_stream(out):
                stream = streaming.ChunkStream(out)
                await stream.start()
                mode = streaming.mode_for(scope)
                if mode != streaming.BUFFERED:
                    sink = streaming.StreamWriterSink(reader, writer)
                    start_headers = [("Content-Type", streaming.eventstream.CONTENT_TYPE if mode == streaming.EVENTS
                                      else ctype), ("Connection", "close")]
                    if mode == streaming.EVENTS:
                        start_headers.append(("X-Amzn-SageMaker-Content-Type", ctype))
                    await sink.start(200, start_headers)
                    try:
                        self.outcomes.put(await streaming.stream_to(stream, sink, mode=mode, request_id="test",
                                                                       timeout_s=self.timeout_s))
                    finally:
                        sink.close()
                    writer.close()
                    return
                out = await stream.collect()
            status, reason = 200, "OK"
        except Exception as err:  # noqa: BLE001
            (status, out), ctype, reason = _error_body(err), "application/json", "Error"
        writer.write(f"HTTP/{'1.0' if version.endswith('1.0') else '1.1'} {status} {reason}\r\nContent-Type: {ctype}"
                     f"\r\nContent-Length: {len(out)}\r\nConnection: close\r\n\r\n".encode() + out)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def _open(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._handle, sock=self.sock)

    def start(self) -> None:
        """The server's loop on its own thread (``_open`` says which kind of server it runs)."""
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)

            async def serve():
                self.server = await self._open()
                started.set()

            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"the {self.kind} server did not start")

    def stop(self) -> None:
        def shutdown():
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)
        self.sock.close()


class _Connection(asyncio.Protocol):
    """httptools parsing on an asyncio.Protocol, as aiops serve's worker does: the
    handler is called on the loop thread, reading pauses while a request is answered, and the
    protocol forwards its transport callbacks to the active TransportSink."""

    def __init__(self, server: "ProtocolStreamServer") -> None:
        self.server = server
        self.sink: TransportSink | None = None

    def connection_made(self, transport) -> None:
        import httptools

        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url, self.headers, self.body = b"", {}, []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.transport.pause_reading()
        request = (self.url.decode(), self.parser.get_http_version(), dict(self.headers), b"".join(self.body))
        self.url, self.headers, self.body = b"", {}, []
        asyncio.ensure_future(self.answer(*request))

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.resume_writing()

    def connection_lost(self, exc) -> None:
        if self.sink is not None:
            self.sink.connection_lost(exc)

    def write_whole(self, status: int, ctype: str, out: bytes, close: bool = False) -> None:
        self.transport.write(f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(out)}\r\n\r\n"
                             .encode() + out)
        if close:  # HTTP/1.0: one request per connection
            self.transport.close()
        else:
            self.transport.resume_reading()

    async def answer(self, path: str, version: str, headers: dict, body: bytes) -> None:
        if not _route(path):
            return self.write_whole(404, "text/plain", b"")
        accept = headers.get("x-amzn-sagemaker-accept") or headers.get("accept") or ""
        try:
            out, ctype = self.server.respond(path, body, headers.get("content-type", ""), accept)  # on the loop
            if streaming.is_stream(out):
                stream = streaming.ChunkStream(out)
                await stream.start(inline_first=True)  # the handler runs on the loop here anyway
                mode = streaming.mode_for({"path": path, "http_version": version})
                if mode != streaming.BUFFERED:
                    self.sink = sink = TransportSink(self.transport)
                    sink.start(b"HTTP/1.1 200 OK\r\n" + stream_head_lines(mode, ctype) + b"x-amzn-requestid: test\r\n\r\n")
                    outcome = await streaming.stream_to(stream, sink, mode=mode, request_id="test",
                                                        timeout_s=self.server.timeout_s)
                    self.sink = None
                    self.server.outcomes.put(outcome)
                    if outcome.completed:
                        self.transport.resume_reading()  # keep-alive: the next request
                    elif not self.transport.is_closing():
                        self.transport.close()
                    return
                out = await stream.collect()
        except Exception as err:  # noqa: BLE001
            status, out = _error_body(err)
            return self.write_whole(status, "application/json", out)
        self.write_whole(200, ctype, out, close=version == "1.0")


class ProtocolStreamServer(AsyncioStreamServer):
    kind = "protocol"

    async def _open(self) -> asyncio.AbstractServer:
        return await self.loop.create_server(lambda: _Connection(self), sock=self.sock)


SERVERS = {"asgi": AsgiStreamServer, "asyncio": AsyncioStreamServer, "protocol": ProtocolStreamServer}


def runtime_client(url: str):
    """An unmodified boto3 ``sagemaker-runtime`` client pointed at ``url`` (dummy credentials)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name="us-east-1").client(
        "sagemaker-runtime", endpoint_url=url, config=Config(retries={"max_attempts": 1}, read_timeout=60))
