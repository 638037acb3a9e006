"""Status-code mapping for gRPC handlers: input errors never reach a client as UNKNOWN.

``grpc.aio`` answers any exception that escapes a handler with ``UNKNOWN`` and the exception
text. :func:`grpc_errors` wraps a handler (unary or server-streaming) and maps instead:

- :class:`ServiceError` subclasses -> their ``code`` (``InvalidArgumentError``,
  ``ResourceExhaustedError``, ``UnavailableError``), details = the message;
- any other ``ValueError`` -> ``INVALID_ARGUMENT``, details = the message (so messages must say
  which field failed, show the value and say how to fix it);
- anything else -> ``INTERNAL``, details = the method and the exception type only; the
  traceback goes to the server log, never to the client.

``asyncio.CancelledError`` (client cancel/deadline) and aborts done by the handler itself pass
through unchanged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

log = logging.getLogger("gptforge.api")

F = TypeVar("F", bound=Callable[..., Any])


class ServiceError(Exception):
    """An error with an explicit gRPC status code; raise a subclass from a handler."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgumentError(ServiceError, ValueError):
    """Bad input: answered with ``INVALID_ARGUMENT`` (any ``ValueError`` is, too)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhaustedError(ServiceError):
    """The request is over a size limit or the server is full: ``RESOURCE_EXHAUSTED``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(ServiceError):
    """The server cannot take the call now (shutting down, not warmed up): ``UNAVAILABLE``."""

    code = grpc.StatusCode.UNAVAILABLE


def status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """Return the status code and client-visible details for an exception raised by ``method``.

    Args:
        exc: the exception a handler raised.
        method: the handler's name, used in the INTERNAL message.
    """
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc) or type(exc).__name__
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} ({type(exc).__name__}); the server log has the details",
    )


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, details = status_for(exc, method)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("unhandled error in %s", method, exc_info=exc)
    await context.abort(code, details)


def grpc_errors(func: F) -> F:
    """Decorate an async handler (unary or async-generator) with the status mapping.

    Works on servicer methods ``(self, request, context)`` and plain functions
    ``(request, context)``; the context is always the last argument.

    >>> class Servicer:
    ...     @grpc_errors
    ...     async def Encode(self, request, context):
    ...         raise ValueError("texts[0]: ...")  # -> INVALID_ARGUMENT "texts[0]: ..."
    """
    method = func.__qualname__
    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def stream_wrapper(*args: Any) -> AsyncIterator[Any]:
            context = args[-1]  # (self,) request, context
            try:
                async for item in func(*args):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, method)

        return stream_wrapper  # type: ignore[return-value]
    if not inspect.iscoroutinefunction(func):
        raise TypeError(
            f"grpc_errors wraps async handlers only; {method} is {type(func).__name__!r}. "
            "Make it `async def` (grpc.aio server)."
        )

    @functools.wraps(func)
    async def unary_wrapper(*args: Any) -> Any:
        context = args[-1]  # (self,) request, context
        try:
            return await func(*args)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return unary_wrapper  # type: ignore[return-value]
