"""One streamed ``/v1/completions`` request, timed token by token.

Standard library only (``http.client``), so it runs anywhere. Every failure mode ends
as a :class:`StreamResult` with a ``status`` instead of an exception: the caller
records it and goes on. A request never outlives ``timeout_s``: the socket read
timeout bounds a silent server and a deadline check after every line bounds one that
dribbles.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from calibration.errors import ComemInputError

#: Every status a request can end with.
STATUSES = ("ok", "timeout", "refused", "http_error", "malformed", "error")


@dataclass
class StreamResult:
    """What one request measured. Times are seconds; ``token_s`` are arrival times of
    the streamed chunks that carried text, relative to ``start_s``."""

    status: str
    start_s: float
    error: str = ""
    http_status: int = 0
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    token_s: list[float] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = -1  # from the server's usage block; -1 when it sent none
    completion_tokens: int = -1
    finish_reason: str = ""

    @property
    def token_counts_from(self) -> str:
        """Where :meth:`counts` come from: ``usage`` (the server's usage block gave both)
        or ``client`` (it sent none, although asked: the prompt as sent, the completion as
        the streamed text chunks, which is one token per chunk on vLLM and transformers
        serve, and may undercount on a server that batches tokens into a chunk)."""
        return "usage" if self.prompt_tokens >= 0 and self.completion_tokens >= 0 else "client"

    def counts(self, prompt_sent: int) -> tuple[int, int]:
        """(prompt, completion) tokens: the server's when it reported them, else what the
        client knows (``prompt_sent`` and the streamed chunks); never -1."""
        if self.token_counts_from == "usage":
            return self.prompt_tokens, self.completion_tokens
        return prompt_sent, len(self.token_s)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def output_tokens(self) -> int:
        """Tokens generated: the server's count when it gave one, else streamed chunks."""
        return self.completion_tokens if self.completion_tokens >= 0 else len(self.token_s)

    @property
    def mean_itl_s(self) -> float:
        """Mean inter-token latency: (last - first token) / (tokens - 1)."""
        n = len(self.token_s)
        if n < 2:
            return float("nan")
        return (self.token_s[-1] - self.token_s[0]) / (n - 1)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server: ``http://host:port`` plus an optional path prefix."""

    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str, where: str = "--endpoint") -> Endpoint:
        if not url.strip() or any(c.isspace() or not c.isprintable() for c in url):
            raise ComemInputError(
                f"{where}: not a URL: {url!r} (spaces or control characters);"
                " expected http://HOST:PORT[/PREFIX]"
            )
        try:
            parts = urlsplit(url if "://" in url else f"http://{url}")
        except ValueError as exc:
            raise ComemInputError(f"{where}: not a URL: {url!r} ({exc})") from None
        if parts.scheme == "https":
            raise ComemInputError(
                f"{where}: {url!r}: https is not supported (the client speaks plain HTTP);"
                " expected http://HOST:PORT[/PREFIX]"
            )
        if parts.scheme != "http" or not parts.hostname:
            raise ComemInputError(f"{where}: expected http://HOST:PORT[/PREFIX], got {url!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise ComemInputError(f"{where}: bad port in {url!r}") from None
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v1"):
            prefix = prefix[: -len("/v1")]
        return cls(parts.hostname, port, prefix)

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """A plain GET; raises OSError / http.client.HTTPException on failure."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        try:
            conn.request("GET", self.prefix + path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def stream_completion(
    endpoint: Endpoint,
    model: str,
    prompt: str,
    max_tokens: int,
    timeout_s: float = 60.0,
    extra_body: dict[str, Any] | None = None,
) -> StreamResult:
    """POST a streamed completion and time every chunk; never raises for server faults."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": int(max_tokens),
        "stream": True,
        "temperature": 0.0,
        # without it vLLM (and transformers serve >= 5.25) stream no usage at all
        "stream_options": {"include_usage": True},
        **(extra_body or {}),
    }
    payload = json.dumps(body).encode()
    start = time.perf_counter()
    deadline = start + timeout_s
    res = StreamResult(status="error", start_s=start)
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    try:
        conn.request(
            "POST",
            endpoint.prefix + "/v1/completions",
            body=payload,
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        resp = conn.getresponse()
        res.http_status = resp.status
        if resp.status != 200:
            detail = resp.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            res.status, res.error = "http_error", f"HTTP {resp.status}: {detail}"
            return res
        _read_events(resp, res, start, deadline)
    except ConnectionRefusedError as exc:
        res.status, res.error = "refused", f"connection refused ({exc})"
    except TimeoutError:
        res.status, res.error = "timeout", f"no data for {timeout_s:g} s"
    except _Deadline:
        res.status, res.error = "timeout", f"not finished within {timeout_s:g} s"
    except _Malformed as exc:
        res.status, res.error = "malformed", str(exc)
    except (OSError, http.client.HTTPException) as exc:
        res.status, res.error = "error", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a server fault must be a row, never a crash of the run
        res.status, res.error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    res.error = one_line(res.error)
    return res


def one_line(text: str, limit: int = 300) -> str:
    """What a server sent, made fit for one line of a message or a CSV cell: control
    characters become spaces, runs of spaces one, at most ``limit`` characters."""
    clean = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _count(value: Any) -> int:
    """A token count from a usage block; -1 when absent or not a whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


class _Deadline(Exception):
    pass


class _Malformed(Exception):
    pass


def _read_events(
    resp: http.client.HTTPResponse, res: StreamResult, start: float, deadline: float
) -> None:
    """Server-sent events: ``data: {json}`` lines, ended by ``data: [DONE]`` or EOF."""
    parts: list[str] = []
    done = False
    while True:
        line = resp.readline()
        now = time.perf_counter()
        if not line:
            break
        if now > deadline:
            raise _Deadline
        text = line.decode("utf-8", "replace").strip()
        if not text or text.startswith(":"):
            continue
        if not text.startswith("data:"):
            if text.startswith(("event:", "id:", "retry:")):
                continue
            raise _Malformed(f"not a server-sent event line: {text[:80]!r}")
        data = text[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise _Malformed(f"event is not JSON: {data[:80]!r}") from None
        if not isinstance(event, dict):
            raise _Malformed(f"event is not an object: {data[:80]!r}")
        if "error" in event:
            raise _Malformed(f"server error event: {str(event['error'])[:120]}")
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                raise _Malformed(f"a choice is not an object: {data[:80]!r}")
            piece = choice.get("text") or ""
            if piece:
                res.token_s.append(now - start)
                parts.append(piece)
            if choice.get("finish_reason"):
                res.finish_reason = str(choice["finish_reason"])
        usage = event.get("usage")
        if isinstance(usage, dict):
            res.prompt_tokens = _count(usage.get("prompt_tokens"))
            res.completion_tokens = _count(usage.get("completion_tokens"))
    end = time.perf_counter()
    res.text = "".join(parts)
    if not res.token_s:
        raise _Malformed("stream ended without any generated text")
    if not done and not res.finish_reason:
        raise _Malformed("stream ended before a finish_reason or [DONE]")
    res.ttft_s = res.token_s[0]
    res.e2e_s = end - start
    res.status = "ok"
