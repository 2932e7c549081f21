"""One model, four endpoints: the same tickets under each of DRF's pagination
classes, and once without pagination (the whole source, for comparisons)."""

from rest_framework.routers import SimpleRouter

from tickets import views

router = SimpleRouter()
router.register("pages/tickets", views.PageNumberTickets, basename="pages")
router.register("offsets/tickets", views.LimitOffsetTickets, basename="offsets")
router.register("cursor/tickets", views.CursorTickets, basename="cursor")
router.register("all/tickets", views.AllTickets, basename="all")

urlpatterns = [*router.urls]
