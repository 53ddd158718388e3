"""Error answers: JSON under /api/ (clients parse every body), Django's own pages everywhere else.

Django calls these for errors no view handled (settings.DEBUG off): a failure in middleware, a 404 raised outside
DRF. Inside the API's views DRF's exception handler answers (arbiter/api.py); a path under /api/ that no route
matches reaches `api_not_found`, the API's last route, whatever DEBUG says.
"""

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def api_not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    return JsonResponse({"detail": f"No API endpoint at {request.path} (see /api/docs/)."}, status=404)


def bad_request(request: HttpRequest, exception: Any) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "Bad request."}, status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Any) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "You do not have permission to do this."}, status=403)
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Any) -> HttpResponse:
    if _is_api(request):
        return api_not_found(request)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "The server failed to answer: the error is in its log."}, status=500)
    return defaults.server_error(request)
