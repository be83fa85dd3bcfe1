"""Send one request to a local server (stdlib HTTP) or a deployed endpoint (boto3 sagemaker-runtime)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from aiops.errors import AiopsError, UsageError

_BY_SUFFIX = {".json": "application/json", ".csv": "text/csv", ".npy": "application/x-npy",
              ".npz": "application/x-npz"}


@dataclass
class InvokeResult:
    status: int
    content_type: str | None
    body: bytes
    latency_ms: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _looks_like_a_path(data: str) -> bool:
    """A file name rather than inline data: one word that ends in a payload suffix or starts like a
    path (`missing.json`, `./x`, `~/x`, `/x`), and does not start like JSON."""
    text = data.strip()
    if not text or len(text) > 1024 or any(c.isspace() for c in text) or text[0] in "[{\"":
        return False
    suffix = Path(text).suffix.lower()
    return suffix in _BY_SUFFIX or suffix in (".txt", ".bin") or text.startswith(("./", "../", "~/", "/"))


def load_payload(data: str, content_type: str | None) -> tuple[bytes, str]:
    """``data`` is ``@file``, a file path, or inline text (JSON by default)."""
    name = data[1:] if data.startswith("@") else data
    path = Path(name).expanduser()
    is_file = data.startswith("@") or (len(name) < 4096 and "\n" not in name and path.is_file())
    if not is_file and _looks_like_a_path(data) and not path.exists():
        # `--data missing.json`: say the file is missing, not that it is bad JSON
        raise UsageError(f"--data {data}: no such file")
    if is_file:
        if not path.is_file():
            raise UsageError(f"--data {data}: no such file")
        body = path.read_bytes()
        return body, content_type or _BY_SUFFIX.get(path.suffix.lower(), "application/json")
    ctype = content_type or "application/json"
    if ctype == "application/json":
        try:
            json.loads(data)
        except ValueError as err:
            raise UsageError(f"--data is neither a file nor valid JSON ({err})") from None
    return data.encode("utf-8"), ctype


def connect(url: str, *, content_type: str, accept: str | None = None, api_key: str | None = None,
            custom_attributes: str | None = None, timeout: float = 70.0
            ) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """The connection, the /invocations path and the headers of one request to a local server
    (plain and streamed invocations build it the same way)."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"--url {url}: expected http://HOST:PORT")
    path = parsed.path.rstrip("/")
    if not path.endswith("/invocations"):
        path = path + "/invocations"
    conn_cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80), timeout=timeout)
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    if api_key:
        headers["X-Api-Key"] = api_key
    if custom_attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = custom_attributes
    return conn, path, headers


def invoke_url(url: str, body: bytes, *, content_type: str, accept: str | None = None,
               api_key: str | None = None, custom_attributes: str | None = None,
               timeout: float = 70.0) -> InvokeResult:
    conn, path, headers = connect(url, content_type=content_type, accept=accept, api_key=api_key,
                                  custom_attributes=custom_attributes, timeout=timeout)
    try:
        start = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        latency = (time.perf_counter() - start) * 1000
    except (OSError, http.client.HTTPException) as err:
        raise AiopsError(f"cannot reach {url}: {err}") from None
    finally:
        conn.close()
    return InvokeResult(resp.status, resp.getheader("Content-Type"), data, latency,
                        {k.lower(): v for k, v in resp.getheaders()})


def invoke_endpoint(name: str, body: bytes, *, content_type: str, accept: str | None = None,
                    custom_attributes: str | None = None, region: str | None = None,
                    inference_component: str | None = None) -> InvokeResult:
    """One InvokeEndpoint call through boto3 `sagemaker-runtime` (standard retries);
    ``inference_component``: the ``InferenceComponentName`` an endpoint of inference components
    routes the request by."""
    from aiops import aws

    client = aws.client("sagemaker-runtime", region)
    kwargs = {"EndpointName": name, "Body": body, "ContentType": content_type}
    if accept:
        kwargs["Accept"] = accept
    if custom_attributes:
        kwargs["CustomAttributes"] = custom_attributes
    if inference_component:
        kwargs["InferenceComponentName"] = inference_component
    with aws.translate_errors(f"invoking endpoint {name}"):  # one line that says what to do
        start = time.perf_counter()
        resp = client.invoke_endpoint(**kwargs)
        data = resp["Body"].read()
        latency = (time.perf_counter() - start) * 1000
    return InvokeResult(200, resp.get("ContentType"), data, latency)


def error_message(result: InvokeResult) -> str:
    try:
        doc = json.loads(result.body)
        message = doc.get("error") or doc
        rid = doc.get("request_id")
    except (ValueError, AttributeError):
        message, rid = result.body[:300].decode("utf-8", "replace"), None
    # the server's message may already name the request ("see the server log for request X"): once only
    named = rid and str(rid) in str(message)
    return f"HTTP {result.status}: {message}" + (f" (request {rid})" if rid and not named else "")
