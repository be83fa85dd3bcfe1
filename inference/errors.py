"""Errors that carry an HTTP status to the client.

A handler script may raise :class:`InferenceError` (``status_code``, ``message``), the same shape as
``sagemaker_inference.errors.GenericInferenceToolkitError``. That package's errors are honoured as
the toolkit does (its ``BaseInferenceToolkitError`` and look-alikes: any exception with an integer
``status_code`` in 400..599 answers that status with its ``message``), without importing it. Its
``UnsupportedFormatError``, raised by its ``decoder.decode`` / ``encoder.encode`` for a content type
they do not handle, is a 415 / 406 as aiops' own codecs answer (the toolkit answers 500).
``message`` is shown to the client; anything else a handler raises is a 500 whose traceback stays in
the server log.
"""

from __future__ import annotations


class HttpError(Exception):
    """An error with an HTTP status for the client. ``message`` is safe to show to the client."""

    status_code = 500
    error_type = "InternalFailure"

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class InferenceError(HttpError):
    """Raise from a handler to answer ``status_code`` with ``message`` (a 4xx by default 400).

    Signature as ``GenericInferenceToolkitError(status_code, message)``.
    """

    error_type = "ValidationError"

    def __init__(self, status_code: int = 400, message: str = "") -> None:
        if not isinstance(status_code, int) or not 400 <= status_code <= 599:
            raise ValueError(f"status_code {status_code!r}: must be an HTTP error status 400..599")
        super().__init__(message or f"HTTP {status_code}", status_code)
        if status_code >= 500:
            self.error_type = "ModelError"


class BadRequest(HttpError):
    status_code = 400
    error_type = "ValidationError"


class Unauthorized(HttpError):
    status_code = 401
    error_type = "AccessDeniedException"


class NotFound(HttpError):
    status_code = 404
    error_type = "ValidationError"


class MethodNotAllowed(HttpError):
    status_code = 405
    error_type = "ValidationError"


class NotAcceptable(HttpError):
    status_code = 406
    error_type = "ValidationError"


class PayloadTooLarge(HttpError):
    status_code = 413
    error_type = "ValidationError"


class UnsupportedMediaType(HttpError):
    status_code = 415
    error_type = "ValidationError"


class HeadersTooLarge(HttpError):
    status_code = 431
    error_type = "ValidationError"


class Overloaded(HttpError):
    status_code = 503
    error_type = "ServiceUnavailable"


class Timeout(HttpError):
    status_code = 504
    error_type = "ModelError"


def typed_status(err: BaseException) -> tuple[int, str, str] | None:
    """``(status, message, error type)`` for an error that carries its status, else None (a 500)."""
    if isinstance(err, HttpError):
        return err.status_code, err.message, err.error_type
    kind = type(err)
    if kind.__name__ == "UnsupportedFormatError" and kind.__module__ == "sagemaker_inference.errors":
        return _unsupported_format(err)
    status = getattr(err, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        # sagemaker_inference.errors.BaseInferenceToolkitError and look-alikes
        message = getattr(err, "message", None) or str(err) or f"HTTP {status}"
        return (
            status,
            " ".join(str(message).split())[:1000],
            "ValidationError" if status < 500 else "ModelError",
        )
    return None


def _unsupported_format(err: BaseException) -> tuple[int, str, str]:
    """sagemaker_inference's UnsupportedFormatError: 406 when raised for the response (inside its
    encoder or an output_fn), else 415 (the request's type: its decoder, an input_fn). Its message
    names the type."""
    tb, response_side = err.__traceback__, False
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__") == "sagemaker_inference.encoder" or frame.f_code.co_name.endswith(
            "output_fn"
        ):
            response_side = True
        tb = tb.tb_next
    return 406 if response_side else 415, " ".join(str(err).split())[:1000], "ValidationError"
