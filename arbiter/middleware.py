"""The Content-Security-Policy header, from settings shaped as Django 6.0's own (SECURE_CSP, SECURE_CSP_REPORT_ONLY).

Django 5.2 has no CSP support. On 6.0 this module goes: MIDDLEWARE names
django.middleware.csp.ContentSecurityPolicyMiddleware instead, and the settings stay as they are.
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def policy(directives: dict[str, list[str] | bool]) -> str:
    """`{"img-src": ["'self'", "data:"], "upgrade-insecure-requests": True}` as a header value."""
    return "; ".join(
        name if value is True else f"{name} {' '.join(value)}" for name, value in directives.items() if value
    )


class ContentSecurityPolicyMiddleware:
    """Adds the enforced and the report-only policy to every response, unless the view set that header itself."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        for header, directives in (
            ("Content-Security-Policy", settings.SECURE_CSP),
            ("Content-Security-Policy-Report-Only", settings.SECURE_CSP_REPORT_ONLY),
        ):
            if directives:
                response.headers.setdefault(header, policy(directives))
        return response
