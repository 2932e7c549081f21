"""The same writable ticket collection under each DRF pagination class, with the
settings real deployments use (and whose quirks apisync must survive):

- PageNumberPagination, 100 a page: `{"count", "next", "previous", "results"}`,
  and 404 `{"detail": "Invalid page."}` for a page past the last.
- LimitOffsetPagination with max_limit 500: a larger `limit` is cut to 500
  without a word, and the `next` link then carries `limit=500`.
- CursorPagination, 100 a page, ordered by id: `{"next", "previous",
  "results"}`, opaque `?cursor=` in the links, no count.
"""

from oauth2_provider.contrib.rest_framework import OAuth2Authentication, TokenHasScope
from rest_framework import pagination, viewsets

from .models import Ticket
from .serializers import TicketSerializer


class TicketPages(pagination.PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 500


class TicketOffsets(pagination.LimitOffsetPagination):
    default_limit = 100
    max_limit = 500


class TicketCursor(pagination.CursorPagination):
    page_size = 100
    # Cursor pagination needs a unique, unchanging order; the default
    # "-created" would not be unique here.
    ordering = "id"


class Tickets(viewsets.ModelViewSet):
    # Ordered, so page boundaries are stable (and Django does not warn about
    # paginating an unordered queryset).
    queryset = Ticket.objects.order_by("id")
    serializer_class = TicketSerializer


class PageNumberTickets(Tickets):
    pagination_class = TicketPages


class LimitOffsetTickets(Tickets):
    pagination_class = TicketOffsets


class CursorTickets(Tickets):
    pagination_class = TicketCursor


class AllTickets(Tickets):
    """Everything in one response: what the tests compare the table with."""

    pagination_class = None


class SecureTickets(Tickets):
    """The paged tickets, only for a valid OAuth2 access token with the `read`
    scope (401 without one): a service account's token has no user, so the
    scope is what is checked."""

    pagination_class = TicketPages
    authentication_classes = [OAuth2Authentication]
    permission_classes = [TokenHasScope]
    required_scopes = ["read"]
    http_method_names = ["get"]
