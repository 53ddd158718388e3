"""The API plumbing every app's views share: the error handler and error shapes, input checks, lookups.

The classes settings.REST_FRAMEWORK names (authentication, pagination, the throttle) are in arbiter/api_defaults.py.
"""

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.db.models import QuerySet
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotate.importing import ImportFailed
from annotate.models import AnswerLocked, LeaseError, QuotaReached
from arbiter.api_defaults import BearerTokenAuthentication

logger = logging.getLogger(__name__)


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """The bearer token in the OpenAPI schema (drf-spectacular finds extensions by subclassing)."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "arb_<prefix>_<secret>",
            "description": "A token from /tokens/ or POST /api/v1/auth/token/.",
        }


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus the domain's errors, so that views make one model call and no try/except."""
    if isinstance(exc, ImportFailed):
        return Response({"detail": str(exc), "line": exc.line, "field": exc.field}, status=400)
    if isinstance(exc, LeaseError | QuotaReached | AnswerLocked):
        return Response({"detail": str(exc)}, status=409)
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is down or unreachable: the client may retry; what failed where is for the log alone.
        logger.error("The database failed under %s", context["request"].path, exc_info=exc)
        detail = "The database is unavailable: try again in a minute."
        return Response({"detail": detail}, status=503, headers={"Retry-After": "60"})
    if isinstance(exc, DjangoValidationError):
        # By field, as the models raise it: {"score": ["Choose a score from 1 to 5."]}.
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    return drf_exception_handler(exc, context)


class Conflict(exceptions.APIException):
    """409: the thing asked for is not in a state that allows it (an export not ready, a round already finished)."""

    status_code = 409


_ERROR_TEXT = {
    401: "No credentials, or a token that is wrong or revoked.",
    403: "A member of the project without the role this needs (leads only).",
    404: "Not found, or in a project you are not a member of.",
    409: "The lease, export or quality report is not in a state that allows this.",
    415: "The body is not of a media type this endpoint reads (a file upload: multipart/form-data).",
    429: "Too many requests: wait for the number of seconds in Retry-After.",
}
_FIELD_ERRORS = OpenApiResponse(OpenApiTypes.OBJECT, description='Invalid input, by field: {"score": ["…"]}.')


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    return {
        code: _FIELD_ERRORS if code == 400 else OpenApiResponse(ErrorSerializer, _ERROR_TEXT[code]) for code in codes
    }


def get_or_404(queryset: QuerySet, **lookup: Any) -> Any:
    found = queryset.filter(**lookup).first()
    if found is None:
        raise exceptions.NotFound()
    return found


def validated(serializer_class: type, data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


MAX_ID = 2**63 - 1  # ids are bigints: a larger filter value could only fail in the database


class JsonBooleanField(serializers.BooleanField):
    """true or false, as JSON has them: not 0, 1, "true" or "no", which a client meaning something else sends."""

    default_error_messages = {"invalid": "Must be true or false (a JSON boolean)."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class QueryFilter(serializers.Serializer):
    """A list's query parameters: an empty value is refused, not taken as no filter (leave the parameter out)."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        for name in self.fields:
            if name in data and data[name] == "":
                raise serializers.ValidationError({name: ["May not be empty: leave the parameter out instead."]})
        return super().to_internal_value(data)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
