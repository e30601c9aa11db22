"""Synchronous client of the MicroVM Service REST API (httpx) and its WebSockets (websockets.sync)."""
from __future__ import annotations

import base64
import inspect
import json
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote, urlencode

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidHandshake
from websockets.sync.client import ClientConnection, connect as ws_connect
from websockets.typing import Subprotocol

from .errors import MvmApiError, MvmConnectionError, MvmError, MvmTimeoutError
from .models import CreateMicroVMRequest, GuestFileStat, MicroVM, MicroVMList

__all__ = ["Mvm", "ExecResult", "ExecSession", "Tunnel", "PortForward"]

UploadBody = Union[bytes, str, BinaryIO, Iterable[bytes]]
_CHUNK = 256 * 1024
_UA = "mvm-sdk-python/0.1.0"
# websockets >= 17.1 warns unless connect() is used as a context manager or told legacy=True: the
# SDK keeps its connections beyond one block (sessions, tunnels) and closes them itself.
_WS_LEGACY: Dict[str, Any] = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}


def _enc(s: str) -> str:
    return quote(s, safe="")


def _problem_from(status: int, body: bytes) -> MvmApiError:
    text = body.decode("utf-8", "replace") if body else ""
    if text.lstrip().startswith("{"):
        try:
            p = json.loads(text)
            if isinstance(p, dict):
                return MvmApiError(status, p)
        except ValueError:
            pass
    return MvmApiError(status, {"detail": text.strip()[:500] or f"HTTP {status}"})


def _ws_problem(msg: Dict[str, Any]) -> MvmApiError:
    status = msg.get("status") if isinstance(msg.get("status"), int) else 500
    problem = dict(msg.get("problem") or {})
    problem.setdefault("code", msg.get("code"))
    problem.setdefault("detail", msg.get("message"))
    return MvmApiError(status, {k: v for k, v in problem.items() if v is not None})


def _closed_error(e: ConnectionClosed) -> MvmApiError:
    code = e.rcvd.code if e.rcvd is not None else 1006
    reason = (e.rcvd.reason if e.rcvd is not None else "") or f"code {code}"
    if 4000 <= code < 5000:
        problem: Dict[str, Any] = {"detail": f"the service closed the connection: {reason}"}
        if reason.replace("_", "").isalpha() and reason.isupper():
            problem["code"] = reason
        return MvmApiError(code - 4000, problem)
    return MvmApiError(502, {"code": "DISCONNECTED", "detail": f"the connection closed unexpectedly ({reason})"})


def _chunks(data: UploadBody) -> Union[bytes, Iterator[bytes]]:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "read"):
        f = data

        def gen() -> Iterator[bytes]:
            while True:
                b = f.read(_CHUNK)  # type: ignore[union-attr]
                if not b:
                    return
                yield b

        return gen()
    return iter(data)  # type: ignore[arg-type]


@dataclass
class ExecResult:
    """How a command ended. ``exit_code`` is 128+n after signal n; 127: not found; 126: not executable."""

    exit_code: int
    signal: Optional[str] = None
    timed_out: bool = False
    duration_ms: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, o: Dict[str, Any]) -> "ExecResult":
        return cls(
            exit_code=int(o.get("exitCode", -1)),
            signal=o.get("signal"),
            timed_out=bool(o.get("timedOut", False)),
            duration_ms=o.get("durationMs"),
            stdout=o.get("stdout", ""),
            stderr=o.get("stderr", ""),
            truncated=bool(o.get("truncated", False)),
            raw=o,
        )


class Mvm:
    """A client of the MicroVM Service.

    >>> mvm = Mvm("http://127.0.0.1:8080", token="...")
    >>> vm = mvm.microvms.create({"name": "demo"})
    >>> mvm.microvms.wait_for(vm["id"])
    >>> mvm.exec(vm["id"], ["uname", "-a"]).stdout
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0, ca: Optional[str] = None):
        """``ca``: a CA certificate file (PEM) to trust for an https:// service (a private CA, or the
        service's self-signed development certificate, MVM_TLS_SELF_SIGNED)."""
        base = url.strip().rstrip("/")
        if base.endswith("/api/v1"):
            base = base[: -len("/api/v1")]
        self.url = base
        self._token = token or None
        self._timeout = timeout
        headers = {"user-agent": _UA, "accept": "application/json"}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        self._ssl = ssl.create_default_context(cafile=ca) if ca else None
        self._http = httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=timeout,
                                  verify=self._ssl if self._ssl is not None else True)
        self.microvms = MicroVMs(self)
        self.files = Files(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Mvm":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- transport ----

    def _send(self, method: str, path: str, *, stream: bool = False, timeout: Any = None, **kw: Any) -> httpx.Response:
        req = self._http.build_request(method, path, timeout=self._timeout if timeout is None else timeout, **kw)
        try:
            res = self._http.send(req, stream=stream)
        except httpx.TimeoutException as e:
            raise MvmConnectionError(f"{method} {path}: no answer in time ({e})") from e
        except httpx.TransportError as e:
            raise MvmConnectionError(f"cannot reach {self.url}: {e}") from e
        if res.status_code >= 400:
            body = res.read()
            res.close()
            raise _problem_from(res.status_code, body)
        return res

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        res = self._send(method, path, **kw)
        if not res.content:
            return None
        try:
            return res.json()
        except ValueError:
            raise MvmApiError(res.status_code, {"code": "BAD_RESPONSE", "detail": f"invalid JSON from {method} {path}"})

    def _socket(self, path: str) -> ClientConnection:
        url = self.url.replace("http", "ws", 1) + "/api/v1" + path
        protocols = [Subprotocol("mvm.v1")]
        if self._token:
            b64 = base64.urlsafe_b64encode(self._token.encode()).decode().rstrip("=")
            protocols.append(Subprotocol(f"bearer.{b64}"))
        try:
            tls: Dict[str, Any] = {"ssl": self._ssl} if self._ssl is not None and url.startswith("wss:") else {}
            return ws_connect(url, subprotocols=protocols, compression=None, max_size=None,
                              open_timeout=self._timeout, user_agent_header=_UA, **tls, **_WS_LEGACY)
        except InvalidStatus as e:
            raise _problem_from(e.response.status_code, e.response.body or b"") from None
        except (OSError, InvalidHandshake, TimeoutError) as e:
            raise MvmConnectionError(f"cannot reach {self.url}: {e}") from e

    # ---- inside the guest ----

    def exec(self, vm: str, cmd: List[str], *, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
             user: Union[str, int, None] = None, timeout: Optional[str] = None, stdin: Union[str, bytes, None] = None,
             max_output_bytes: Optional[int] = None) -> ExecResult:
        """Run a command to completion; its output is buffered (capped by ``max_output_bytes``)."""
        body: Dict[str, Any] = {"cmd": list(cmd)}
        if env is not None:
            body["env"] = env
        if cwd is not None:
            body["cwd"] = cwd
        if user is not None:
            body["user"] = user
        if timeout is not None:
            body["timeout"] = timeout
        if max_output_bytes is not None:
            body["maxOutputBytes"] = max_output_bytes
        if isinstance(stdin, bytes):
            body["stdin"] = base64.b64encode(stdin).decode()
            body["stdinEncoding"] = "base64"
        elif stdin is not None:
            body["stdin"] = stdin
        return ExecResult.from_json(self._json("POST", f"/microvms/{_enc(vm)}/exec", json=body, timeout=httpx.Timeout(self._timeout, read=None)))

    def exec_stream(self, vm: str, cmd: List[str], *, tty: bool = False, cols: Optional[int] = None,
                    rows: Optional[int] = None, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                    user: Union[str, int, None] = None, timeout: Optional[str] = None, stdin: bool = True) -> "ExecSession":
        """A streaming exec over WebSocket; returns once the command started."""
        req: Dict[str, Any] = {"cmd": list(cmd), "tty": tty, "stdin": stdin}
        for k, v in (("cols", cols), ("rows", rows), ("env", env), ("cwd", cwd), ("user", user), ("timeout", timeout)):
            if v is not None:
                req[k] = v
        ws = self._socket(f"/microvms/{_enc(vm)}/exec")
        session = ExecSession(ws)
        try:
            ws.send(json.dumps(req))
            session._wait_started()
        except BaseException:
            session.close()
            raise
        return session

    def connect_port(self, vm: str, port: int) -> "Tunnel":
        """One TCP connection to ``port`` inside the guest, tunnelled over WebSocket."""
        ws = self._socket(f"/microvms/{_enc(vm)}/ports/{int(port)}/connect")
        try:
            while True:
                m = ws.recv()
                if isinstance(m, bytes):
                    continue
                msg = json.loads(m)
                if msg.get("type") == "connected":
                    return Tunnel(ws)
                if msg.get("type") == "error":
                    raise _ws_problem(msg)
        except ConnectionClosed as e:
            raise _closed_error(e) from None
        except BaseException:
            ws.close()
            raise

    def port_forward(self, vm: str, remote_port: int, local_port: int = 0, host: str = "127.0.0.1",
                     on_error: Optional[Callable[[Exception], None]] = None) -> "PortForward":
        """Listen on ``host:local_port`` (0: any free port) and tunnel each connection to ``remote_port`` in the guest."""
        return PortForward(self, vm, remote_port, local_port, host, on_error)


class MicroVMs:
    """``mvm.microvms``: create, get, list, delete, wait_for."""

    def __init__(self, c: Mvm):
        self._c = c

    def create(self, spec: CreateMicroVMRequest) -> MicroVM:
        return self._c._json("POST", "/microvms", json=spec)

    def get(self, vm: str) -> MicroVM:
        return self._c._json("GET", f"/microvms/{_enc(vm)}")

    def list(self, **params: Any) -> MicroVMList:
        """One page: ``{"items": [...], "next_cursor"?: ...}``. Params: limit, cursor, phase, label, tenant."""
        return self._c._json("GET", "/microvms", params={k: v for k, v in params.items() if v is not None})

    def delete(self, vm: str, wait: bool = False, timeout: float = 120.0) -> MicroVM:
        out = self._c._json("DELETE", f"/microvms/{_enc(vm)}")
        if wait:
            self.wait_deleted(vm, timeout=timeout)
        return out

    def wait_for(self, vm: str, phase: str = "Running", ready: bool = True, timeout: float = 300.0) -> MicroVM:
        """Wait until the VM is in ``phase`` and (``ready``) its guest agent answers. Long-polls /wait."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MvmTimeoutError(f"{vm} not {phase}{' and ready' if ready else ''} after {timeout:g}s", self._last(vm))
            secs = max(1, min(20, int(remaining)))
            params = {"phase": phase, "timeout": f"{secs}s"}
            if ready:
                params["ready"] = "true"
            try:
                return self._c._json("GET", f"/microvms/{_enc(vm)}/wait", params=params, timeout=secs + 15.0)
            except MvmApiError as e:
                if e.code != "TIMEOUT":
                    raise

    def wait_deleted(self, vm: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = self.get(vm)
            except MvmApiError as e:
                if e.status == 404:
                    return
                raise
            if time.monotonic() > deadline:
                raise MvmTimeoutError(f"{vm} still present after {timeout:g}s", last)
            time.sleep(0.25)

    def _last(self, vm: str) -> Optional[MicroVM]:
        try:
            return self.get(vm)
        except MvmError:
            return None


class Files:
    """``mvm.files``: files of a running guest (absolute paths)."""

    def __init__(self, c: Mvm):
        self._c = c

    @staticmethod
    def _q(path: str, user: Optional[str], **extra: Any) -> Dict[str, str]:
        q = {"path": path}
        if user:
            q["user"] = user
        q.update({k: str(v) for k, v in extra.items() if v is not None})
        return q

    def read(self, vm: str, path: str, user: Optional[str] = None) -> bytes:
        """A whole file in memory (use ``read_iter`` or ``download`` for big ones)."""
        return b"".join(self.read_iter(vm, path, user=user))

    def read_iter(self, vm: str, path: str, user: Optional[str] = None, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """A file's bytes, streamed in chunks (constant memory)."""
        res = self._c._send("GET", f"/microvms/{_enc(vm)}/files", params=self._q(path, user), stream=True,
                            headers={"accept": "application/octet-stream"}, timeout=httpx.Timeout(self._c._timeout, read=None))
        try:
            if "json" in res.headers.get("content-type", ""):
                raise MvmApiError(400, {"code": "IS_A_DIRECTORY", "detail": f"{path} is a directory in the guest (use list or read_tar)"})
            yield from res.iter_bytes(chunk_size)
        finally:
            res.close()

    def download(self, vm: str, path: str, dest: BinaryIO, user: Optional[str] = None) -> int:
        """Stream a file into ``dest`` (an open binary file); returns the byte count."""
        n = 0
        for b in self.read_iter(vm, path, user=user):
            dest.write(b)
            n += len(b)
        return n

    def write(self, vm: str, path: str, data: UploadBody, mode: Optional[int] = None, user: Optional[str] = None) -> Dict[str, Any]:
        """Write a file, streamed (bytes, str, an open binary file or an iterable of bytes). Parents are created."""
        q = self._q(path, user, mode=format(mode & 0o7777, "03o") if mode is not None else None)
        return self._c._json("PUT", f"/microvms/{_enc(vm)}/files", params=q, content=_chunks(data),
                             headers={"content-type": "application/octet-stream"}, timeout=httpx.Timeout(self._c._timeout, write=None, read=None))

    def read_tar(self, vm: str, path: str, user: Optional[str] = None) -> Iterator[bytes]:
        """A directory as a tar stream (chunks)."""
        res = self._c._send("GET", f"/microvms/{_enc(vm)}/files", params=self._q(path, user, archive="tar"), stream=True,
                            headers={"accept": "application/x-tar"}, timeout=httpx.Timeout(self._c._timeout, read=None))
        try:
            yield from res.iter_bytes(_CHUNK)
        finally:
            res.close()

    def write_tar(self, vm: str, path: str, tar: UploadBody, user: Optional[str] = None) -> Dict[str, Any]:
        """Extract a tar stream beneath the directory ``path`` (created if missing)."""
        return self._c._json("PUT", f"/microvms/{_enc(vm)}/files", params=self._q(path, user, archive="tar"), content=_chunks(tar),
                             headers={"content-type": "application/x-tar"}, timeout=httpx.Timeout(self._c._timeout, write=None, read=None))

    def list(self, vm: str, path: str, user: Optional[str] = None) -> List[GuestFileStat]:
        r = self._c._json("GET", f"/microvms/{_enc(vm)}/files", params=self._q(path, user))
        if not isinstance(r, dict) or not isinstance(r.get("entries"), list):
            raise MvmApiError(400, {"code": "NOT_A_DIRECTORY", "detail": f"{path} is not a directory in the guest"})
        return r["entries"]

    def stat(self, vm: str, path: str, user: Optional[str] = None) -> GuestFileStat:
        return self._c._json("GET", f"/microvms/{_enc(vm)}/files/stat", params=self._q(path, user))

    def mkdir(self, vm: str, path: str, parents: bool = True, mode: Optional[int] = None, user: Optional[str] = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"path": path, "parents": parents}
        if mode is not None:
            body["mode"] = mode
        if user:
            body["user"] = user
        return self._c._json("POST", f"/microvms/{_enc(vm)}/files/mkdir", json=body)

    def move(self, vm: str, src: str, dst: str, overwrite: bool = False, user: Optional[str] = None) -> None:
        body: Dict[str, Any] = {"from": src, "to": dst, "overwrite": overwrite}
        if user:
            body["user"] = user
        self._c._json("POST", f"/microvms/{_enc(vm)}/files/move", json=body)

    def remove(self, vm: str, path: str, recursive: bool = False, user: Optional[str] = None) -> None:
        self._c._json("DELETE", f"/microvms/{_enc(vm)}/files", params=self._q(path, user, recursive="true" if recursive else None))


_EOF = object()


class ExecSession:
    """A streaming exec: binary frames ``[stream byte][data]`` (0 stdin, 1 stdout, 2 stderr) and JSON control messages.

    Read output with ``for name, data in session:`` (``name`` is ``"stdout"`` or ``"stderr"``) or
    ``session.wait()``; feed stdin with ``write`` / ``close_stdin``.
    """

    def __init__(self, ws: ClientConnection):
        self._ws = ws
        self._events: "queue.Queue[Any]" = queue.Queue()
        self._started = threading.Event()
        self.pid: Optional[int] = None
        self.result: Optional[ExecResult] = None
        self.error: Optional[MvmApiError] = None
        self._done = False
        self._reader = threading.Thread(target=self._read_loop, name="mvm-exec-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        try:
            while True:
                m = self._ws.recv()
                if isinstance(m, bytes):
                    if len(m) > 1 and m[0] in (1, 2):
                        self._events.put(("stdout" if m[0] == 1 else "stderr", m[1:]))
                    continue
                try:
                    msg = json.loads(m)
                except ValueError:
                    continue
                t = msg.get("type")
                if t == "started":
                    self.pid = msg.get("pid")
                    self._started.set()
                elif t == "exit":
                    self.result = ExecResult.from_json(msg)
                    break
                elif t == "error":
                    self.error = _ws_problem(msg)
                    break
        except ConnectionClosed as e:
            if self.result is None and self.error is None:
                self.error = _closed_error(e)
        except Exception as e:  # noqa: BLE001 — reported to the caller through wait()
            if self.result is None and self.error is None:
                self.error = MvmApiError(502, {"code": "DISCONNECTED", "detail": str(e)})
        finally:
            self._started.set()
            self._events.put(_EOF)

    def _wait_started(self) -> None:
        self._started.wait()
        if self.error is not None and self.result is None:
            raise self.error

    def __iter__(self) -> Iterator[Tuple[str, bytes]]:
        while not self._done:
            ev = self._events.get()
            if ev is _EOF:
                self._done = True
                break
            yield ev

    def write(self, data: Union[bytes, str]) -> None:
        """Send bytes to the command's stdin."""
        if isinstance(data, str):
            data = data.encode()
        self._ws.send(b"\x00" + data)

    def close_stdin(self) -> None:
        """EOF on the command's stdin (on a tty: ^D)."""
        self._ws.send(json.dumps({"type": "eof"}))

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def signal(self, sig: str) -> None:
        """A signal to the command's process group: ``"INT"``, ``"TERM"``, ``"KILL"``…"""
        self._ws.send(json.dumps({"type": "signal", "signal": sig}))

    def wait(self, timeout: Optional[float] = None) -> ExecResult:
        """Wait for the exit; output not yet consumed is collected into ``stdout``/``stderr`` (decoded UTF-8)."""
        out: List[bytes] = []
        err: List[bytes] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            try:
                ev = self._events.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise MvmTimeoutError(f"the command did not end within {timeout:g}s") from None
            if ev is _EOF:
                self._done = True
                break
            (out if ev[0] == "stdout" else err).append(ev[1])
        self._reader.join(5)
        self.close()
        if self.result is None:
            raise self.error or MvmApiError(502, {"code": "DISCONNECTED", "detail": "no exit status"})
        self.result.stdout = b"".join(out).decode("utf-8", "replace")
        self.result.stderr = b"".join(err).decode("utf-8", "replace")
        return self.result

    def close(self) -> None:
        """Hang up (a command still running is killed by the service)."""
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "ExecSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Tunnel:
    """One guest TCP connection over WebSocket: ``send(bytes)``, ``recv()`` (b"" once the guest closed), ``close()``."""

    def __init__(self, ws: ClientConnection):
        self._ws = ws

    def send(self, data: bytes) -> None:
        self._ws.send(bytes(data))

    def recv(self, timeout: Optional[float] = None) -> bytes:
        while True:
            try:
                m = self._ws.recv(timeout)
            except ConnectionClosed as e:
                if e.rcvd is not None and e.rcvd.code in (1000, 1005):
                    return b""
                raise _closed_error(e) from None
            if isinstance(m, bytes):
                return m

    def close(self) -> None:
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "Tunnel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PortForward:
    """A local listener whose every connection is tunnelled to a port in the guest (threads, one pair per connection)."""

    def __init__(self, c: Mvm, vm: str, remote_port: int, local_port: int, host: str,
                 on_error: Optional[Callable[[Exception], None]]):
        self._c, self._vm, self._remote = c, vm, remote_port
        self._on_error = on_error
        self._lsock = socket.create_server((host, local_port))
        self.host: str = host
        self.port: int = self._lsock.getsockname()[1]
        self._closed = False
        self._conns: List[Tuple[socket.socket, Tunnel]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, name="mvm-port-forward", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            tunnel = self._c.connect_port(self._vm, self._remote)
        except Exception as e:  # noqa: BLE001
            if self._on_error:
                self._on_error(e)
            sock.close()
            return
        with self._lock:
            self._conns.append((sock, tunnel))

        def upstream() -> None:  # local → guest; no half-close in the tunnel protocol
            try:
                while True:
                    b = sock.recv(_CHUNK)
                    if not b:
                        return
                    tunnel.send(b)
            except Exception:  # noqa: BLE001
                tunnel.close()

        threading.Thread(target=upstream, daemon=True).start()
        try:
            while True:
                b = tunnel.recv()
                if not b:
                    break
                sock.sendall(b)
        except Exception as e:  # noqa: BLE001
            if self._on_error and not self._closed:
                self._on_error(e)
        finally:
            tunnel.close()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._lsock.close()
        with self._lock:
            for sock, tunnel in self._conns:
                tunnel.close()
                sock.close()
            self._conns.clear()

    def __enter__(self) -> "PortForward":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
