"""The answers of auth: no or a bad credential, not allowed, too many failures."""

from __future__ import annotations

from http import HTTPStatus

from modelhost.errors import ModelhostError


class Unauthenticated(ModelhostError):
    status = HTTPStatus.UNAUTHORIZED
    error_code = "UNAUTHENTICATED"


class PermissionDenied(ModelhostError):
    status = HTTPStatus.FORBIDDEN
    error_code = "PERMISSION_DENIED"


class TooManyFailures(ModelhostError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    error_code = "REQUEST_LIMIT_EXCEEDED"
