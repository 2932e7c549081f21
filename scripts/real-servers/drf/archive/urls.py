"""One model, five endpoints: the same tickets under each of DRF's pagination
classes, once without pagination (the whole source, for comparisons), and once
behind OAuth2 (django-oauth-toolkit's token endpoint at /o/token/)."""

from django.urls import path
from oauth2_provider.views import TokenView
from rest_framework.routers import SimpleRouter

from tickets import views

router = SimpleRouter()
router.register("pages/tickets", views.PageNumberTickets, basename="pages")
router.register("offsets/tickets", views.LimitOffsetTickets, basename="offsets")
router.register("cursor/tickets", views.CursorTickets, basename="cursor")
router.register("all/tickets", views.AllTickets, basename="all")
router.register("secure/tickets", views.SecureTickets, basename="secure")

# Only the token endpoint of django-oauth-toolkit: its authorize pages need
# sessions and templates, which a machine-to-machine archive never uses.
urlpatterns = [path("o/token/", TokenView.as_view()), *router.urls]
