"""The classes settings.REST_FRAMEWORK names: bearer-token authentication, cursor pagination and the throttle.

They live apart from arbiter/api.py because DRF imports them while its own views module loads; a module
that imports rest_framework.views (as api.py does) would be a circular import here.
"""

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle

from annotate.models import ApiToken


def client_address(request: Any) -> str:
    """The client's address as the throttles see it (behind ARBITER_NUM_PROXIES proxies); also django-axes'."""
    return BaseThrottle().get_ident(request)


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer arb_…`, checked by ApiToken.objects.authenticate."""

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        words = get_authorization_header(request).split()
        if not words or words[0].lower() != b"bearer":
            return None  # not a bearer request: the session may still authenticate it
        if len(words) != 2:
            raise exceptions.AuthenticationFailed("Send the token as `Authorization: Bearer <token>`.")
        token = ApiToken.objects.authenticate(words[1].decode("latin-1"))
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class IdCursorPagination(CursorPagination):
    """Every list: a cursor over the primary key, so pages stay exact while rows are added."""

    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def get_page_size(self, request: Request) -> int:
        # DRF falls back to the default on a bad value; a client asking for "null" or 5000 rows should hear so.
        value = request.query_params.get(self.page_size_query_param)
        if value is None:
            return self.page_size
        if not (value.isascii() and value.isdecimal() and 1 <= int(value) <= self.max_page_size):
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"Must be a whole number from 1 to {self.max_page_size}."]}
            )
        return int(value)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters

    def decode_cursor(self, request: Request) -> Cursor | None:
        cursor = super().decode_cursor(request)
        # DRF filters on the cursor's position unchecked: a made-up one ("p=abc") would be a 500, not a 404.
        if cursor is not None and cursor.position is not None:
            try:
                in_range = abs(int(cursor.position)) < 2**63
            except ValueError:
                in_range = False
            if not in_range:
                raise exceptions.NotFound(self.invalid_cursor_message)
        return cursor


class NewestFirstPagination(IdCursorPagination):
    ordering = "-id"


class WriteThrottle(ScopedRateThrottle):
    """The view's throttle_scope, counted on writes only: listing rounds or exports is not launching them."""

    def allow_request(self, request: Request, view: Any) -> bool:
        return request.method in ("GET", "HEAD", "OPTIONS") or super().allow_request(request, view)
