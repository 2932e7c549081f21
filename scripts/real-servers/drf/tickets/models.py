"""A help-desk ticket: the record apisync archives from the DRF server."""

from django.db import models
from django.utils import timezone


class Ticket(models.Model):
    subject = models.CharField(max_length=200)
    status = models.CharField(max_length=20)
    priority = models.CharField(max_length=20)
    requester = models.CharField(max_length=200)
    assignee = models.CharField(max_length=100, null=True, blank=True)
    tags = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    # Not auto_now: bulk_create (the seed) would stamp the clock into the
    # template; save() stamps it instead, so every PATCH moves it as a real
    # API's would, and the seed stays deterministic.
    updated_at = models.DateTimeField(default=timezone.now)

    def save(self, *args, **kwargs):
        self.updated_at = timezone.now()
        super().save(*args, **kwargs)
