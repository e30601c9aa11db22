"""Python SDK of the MicroVM Service (sync; httpx for REST, websockets for exec streams and port tunnels)."""
from .client import ExecResult, ExecSession, Files, MicroVMs, Mvm, PortForward, Tunnel
from .errors import MvmApiError, MvmConnectionError, MvmError, MvmTimeoutError
from .models import CreateMicroVMRequest, ExecRequest, ExecResponse, GuestFileStat, MicroVM, MicroVMList

__all__ = [
    "Mvm", "MicroVMs", "Files", "ExecResult", "ExecSession", "Tunnel", "PortForward",
    "MvmError", "MvmApiError", "MvmConnectionError", "MvmTimeoutError",
    "MicroVM", "MicroVMList", "CreateMicroVMRequest", "ExecRequest", "ExecResponse", "GuestFileStat",
]
__version__ = "0.1.0"
