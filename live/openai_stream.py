"""One streamed ``/v1/completions`` request, timed token by token.

Standard library only (``http.client``), so it runs anywhere. Every failure mode ends
as a :class:`StreamResult` with a ``status`` instead of an exception: the caller
records it and goes on. A request (or a GET such as a ``/metrics`` scrape) never
outlives its ``timeout_s``, whatever the server does: a watchdog shuts the socket at
the deadline (:class:`_Watchdog`), so a server that dribbles a byte a second, or sends
one endless line, ends as a ``timeout`` like a silent one. A line or a body is read
up to a size limit, so a fast endless line ends as ``malformed``, not as memory.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from calibration.errors import ComemInputError

#: Every status a request can end with.
STATUSES = ("ok", "timeout", "refused", "http_error", "malformed", "error")

#: The longest server-sent event line read (a completion chunk is ~200 bytes; a final
#: usage event a few hundred): past it the stream is ``malformed``.
MAX_EVENT_BYTES = 1 << 20
#: The largest body a GET reads (vLLM's ``/metrics`` is ~100 kB).
MAX_GET_BYTES = 16 << 20
#: The largest token count a usage block may report (calibration.inputs.MAX_TOKENS);
#: a negative or larger count makes the request ``malformed``, not ``ok``.
MAX_USAGE_TOKENS = 10**9


class _Watchdog:
    """Shut a connection's socket at a deadline, from a timer thread: every blocked
    read then returns at once (EOF or an error), whatever the server is sending. The
    socket timeout alone bounds each wait, not the whole exchange."""

    def __init__(self, conn: http.client.HTTPConnection, timeout_s: float) -> None:
        self.conn = conn
        self.fired = False
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def connect(self) -> None:
        """Connect (bounded by the socket timeout) and keep the socket: a response read
        to EOF outlives ``conn.sock`` (http.client drops it once the response is open)."""
        self.conn.connect()
        self._sock = self.conn.sock
        if self.fired:
            self._fire()

    def _fire(self) -> None:
        self.fired = True
        sock = self._sock or self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


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
            port = 80 if parts.port is None else parts.port
        except ValueError:
            raise ComemInputError(f"{where}: bad port in {url!r}") from None
        if port == 0:  # no server listens on port 0 (it is not "the default port")
            raise ComemInputError(f"{where}: port 0 in {url!r}: expected a port 1 to 65535")
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v1"):
            prefix = prefix[: -len("/v1")]
        return cls(parts.hostname, port, prefix)

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """A plain GET, all of it (connect, headers, body) within ``timeout_s``, the body
        at most :data:`MAX_GET_BYTES`; raises TimeoutError past the deadline, OSError /
        http.client.HTTPException on other failures."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        watchdog = _Watchdog(conn, timeout_s)
        try:
            watchdog.connect()
            conn.request("GET", self.prefix + path)
            resp = conn.getresponse()
            body = resp.read(MAX_GET_BYTES + 1)
            if watchdog.fired:
                raise TimeoutError(f"GET {path}: not finished within {timeout_s:g} s")
            if len(body) > MAX_GET_BYTES:
                raise http.client.HTTPException(
                    f"GET {path}: body larger than {MAX_GET_BYTES >> 20} MiB"
                )
            return resp.status, body
        except (OSError, http.client.HTTPException):
            if watchdog.fired:
                raise TimeoutError(f"GET {path}: not finished within {timeout_s:g} s") from None
            raise
        finally:
            watchdog.cancel()
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
    watchdog = _Watchdog(conn, timeout_s)
    try:
        watchdog.connect()
        conn.request(
            "POST",
            endpoint.prefix + "/v1/completions",
            body=payload,
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        resp = conn.getresponse()
        res.http_status = resp.status
        if resp.status != 200:
            detail = resp.read(300).decode("utf-8", "replace").strip()
            res.status, res.error = "http_error", f"HTTP {resp.status}: {detail}"
        else:
            _read_events(resp, res, start, deadline)
            if watchdog.fired:  # the socket was shut under a read: what came is cut short
                raise _Deadline
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
        watchdog.cancel()
        conn.close()
    if watchdog.fired and res.status not in ("ok", "http_error"):
        res.status, res.error = "timeout", f"not finished within {timeout_s:g} s"
    res.error = one_line(res.error)
    return res


def one_line(text: str, limit: int = 300) -> str:
    """What a server sent, made fit for one line of a message or a CSV cell: control
    characters become spaces, runs of spaces one, at most ``limit`` characters."""
    clean = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _count(value: Any, name: str) -> int:
    """A token count from a usage block; -1 when absent. A count that is no whole number
    in [0, :data:`MAX_USAGE_TOKENS`] is a malformed reply (recording it as ``ok`` would
    feed a fit nonsense)."""
    if value is None:
        return -1
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (0 <= value <= MAX_USAGE_TOKENS)
    ):
        raise _Malformed(f"usage {name} is not a token count: {str(value)[:40]!r}")
    return value


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
        line = resp.readline(MAX_EVENT_BYTES + 1)
        now = time.perf_counter()
        if now > deadline:
            raise _Deadline
        if not line:
            break
        if len(line) > MAX_EVENT_BYTES:
            raise _Malformed(f"an event line longer than {MAX_EVENT_BYTES >> 20} MiB")
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
                # a server's text goes into CSV cells: one printable line
                res.finish_reason = one_line(str(choice["finish_reason"]), 40)
        usage = event.get("usage")
        if isinstance(usage, dict):
            res.prompt_tokens = _count(usage.get("prompt_tokens"), "prompt_tokens")
            res.completion_tokens = _count(usage.get("completion_tokens"), "completion_tokens")
    end = time.perf_counter()
    res.text = "".join(parts)
    if not res.token_s:
        raise _Malformed("stream ended without any generated text")
    if not done and not res.finish_reason:
        raise _Malformed("stream ended before a finish_reason or [DONE]")
    res.ttft_s = res.token_s[0]
    res.e2e_s = end - start
    res.status = "ok"
