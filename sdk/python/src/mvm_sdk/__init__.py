"""Python SDK of the MicroVM Service (sync; httpx for REST, websockets for exec streams and port tunnels)."""
from .client import ExecResult, ExecSession, Files, MicroVMs, Mvm, PortForward, Tunnel
from .errors import MvmApiError, MvmConnectionError, MvmError, MvmTimeoutError

__all__ = [
    "Mvm", "MicroVMs", "Files", "ExecResult", "ExecSession", "Tunnel", "PortForward",
    "MvmError", "MvmApiError", "MvmConnectionError", "MvmTimeoutError",
]
__version__ = "0.1.0"
