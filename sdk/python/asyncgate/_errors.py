"""The exceptions of the SDK: one class per gRPC code, each carrying the code and the gateway's message.

Every failed call raises a subclass of `AsyncgateError` (never a bare
`grpc.aio.AioRpcError`), so callers catch by meaning (`NotFound`,
`InvalidArgument`, ...) or branch on `error.code`. `from_rpc_error` is the one
place where gRPC errors are translated. `is_transient` is the one rule that
decides whether a failure is worth a reconnect (the watch resume and the
worker's reconnect loop share it), mirroring the Rust SDK's
`is_transient_status`.
"""

from __future__ import annotations

import grpc

__all__ = [
    "AsyncgateError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "ProtocolError",
    "from_rpc_error",
    "is_transient",
]


class AsyncgateError(Exception):
    """A call failed. `code` is the gRPC status code, `message` the gateway's words."""

    #: The code of this class; instances may carry another one (see `code`).
    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(AsyncgateError):
    """The call was cancelled (usually by this side)."""

    default_code = grpc.StatusCode.CANCELLED


class Unknown(AsyncgateError):
    """An error without a more precise code."""

    default_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(AsyncgateError):
    """The request was refused as invalid; the message names the field. Fix the request."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(AsyncgateError):
    """The call's own timeout passed before the gateway answered."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(AsyncgateError):
    """No such ticket (or it belongs to another tenant)."""

    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AsyncgateError):
    """The thing to create exists already."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(AsyncgateError):
    """The API key is valid but its role or queues do not allow this call."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(AsyncgateError):
    """A limit was reached (queue full, message too large); retry later or send less."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(AsyncgateError):
    """The ticket is in a state that does not allow the call (e.g. already finished)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(AsyncgateError):
    """The call was aborted by a conflict."""

    default_code = grpc.StatusCode.ABORTED


class OutOfRange(AsyncgateError):
    """A value was out of range."""

    default_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(AsyncgateError):
    """The gateway does not offer this call."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(AsyncgateError):
    """The gateway failed internally; its message is deliberately generic."""

    default_code = grpc.StatusCode.INTERNAL


class Unavailable(AsyncgateError):
    """The gateway could not be reached or is shutting down: transient, retry."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(AsyncgateError):
    """Unrecoverable data loss."""

    default_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(AsyncgateError):
    """No API key, or an unknown or revoked one."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class ProtocolError(AsyncgateError):
    """The gateway broke the contract (a bug on one side); never retried."""

    default_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[AsyncgateError]] = {
    cls.default_code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def from_rpc_error(error: grpc.RpcError) -> AsyncgateError:
    """The typed exception for a failed gRPC call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    cls = _BY_CODE.get(code, Unknown)
    return cls(details or code.name.lower().replace("_", " "), code)


def from_code(code: int, message: str) -> AsyncgateError:
    """The typed exception for a numeric gRPC code and message (an item of a stream)."""
    status = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(status, Unknown)(message or status.name.lower().replace("_", " "), status)


def is_transient(error: BaseException) -> bool:
    """Whether the same call may succeed on a new connection.

    UNAVAILABLE always is (the gateway restarts, a connection broke). grpcio
    reports some broken connections as UNKNOWN or INTERNAL with a transport
    message ("Stream removed", "RST_STREAM", "Socket closed"); those are too.
    Anything else is the gateway's answer and is final.
    """
    if isinstance(error, AsyncgateError):
        code, message = error.code, error.message
    elif isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code, message = error.code(), error.details() or ""
    else:
        return isinstance(error, (ConnectionError, TimeoutError))
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        lowered = message.lower()
        return any(
            marker in lowered
            for marker in ("stream removed", "rst_stream", "socket closed", "connection reset", "goaway", "eof")
        )
    return False
