"""The few error types modelhost raises, each carrying its HTTP status and MLflow error code."""

from __future__ import annotations

from http import HTTPStatus

import orjson


class ModelhostError(Exception):
    """Root error: an HTTP status, an MLflow error code and a message that says what to fix."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    error_code: str = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        """MLflow's error body, the shape MLflow clients parse."""
        return orjson.dumps({"error_code": self.error_code, "message": self.message})


class InvalidInput(ModelhostError):
    status = HTTPStatus.BAD_REQUEST
    error_code = "BAD_REQUEST"


class NotFound(ModelhostError):
    status = HTTPStatus.NOT_FOUND
    error_code = "RESOURCE_DOES_NOT_EXIST"


class Unauthenticated(ModelhostError):
    """No credential, or one that is unknown, revoked or expired."""

    status = HTTPStatus.UNAUTHORIZED
    error_code = "UNAUTHENTICATED"


class PermissionDenied(ModelhostError):
    status = HTTPStatus.FORBIDDEN
    error_code = "PERMISSION_DENIED"


class TooManyFailures(ModelhostError):
    """Too many failed sign-ins from one address."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    error_code = "REQUEST_LIMIT_EXCEEDED"


class MethodNotAllowed(ModelhostError):
    status = HTTPStatus.METHOD_NOT_ALLOWED
    error_code = "BAD_REQUEST"


class Conflict(ModelhostError):
    status = HTTPStatus.CONFLICT
    error_code = "RESOURCE_ALREADY_EXISTS"


class PayloadTooLarge(ModelhostError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    error_code = "REQUEST_LIMIT_EXCEEDED"


class LengthRequired(ModelhostError):
    status = HTTPStatus.LENGTH_REQUIRED
    error_code = "BAD_REQUEST"


class UnsupportedMediaType(ModelhostError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    error_code = "BAD_REQUEST"


class ModelFailed(ModelhostError):
    """The model itself raised while predicting."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    error_code = "INTERNAL_ERROR"


class NotReady(ModelhostError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    error_code = "TEMPORARILY_UNAVAILABLE"


class Timeout(ModelhostError):
    status = HTTPStatus.GATEWAY_TIMEOUT
    error_code = "DEADLINE_EXCEEDED"


class TooManyRequests(ModelhostError):
    """More requests at once from one client than its share."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    error_code = "REQUEST_LIMIT_EXCEEDED"


class RequestTimeout(ModelhostError):
    """A client that did not send its whole request in time."""

    status = HTTPStatus.REQUEST_TIMEOUT
    error_code = "DEADLINE_EXCEEDED"


class HeadersTooLarge(ModelhostError):
    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    error_code = "REQUEST_LIMIT_EXCEEDED"
