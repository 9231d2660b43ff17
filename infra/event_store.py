"""The one eventsourcing application whose notification log orders every crm event."""

from __future__ import annotations

from datetime import date
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, Transcoding

from crm.infra.postgres import eventsourcing_env


class DateAsISO(Transcoding):
    """Calendar dates (birthdays, due dates) in events, as ISO strings."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class CrmEventStore(Application[Any]):
    """All aggregates of crm in one application, so one notification log gives the total order."""

    name = "crm"

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    def position(self) -> int:
        """The global position of the newest stored event (0 when empty)."""
        return self.recorder.max_notification_id() or 0


def open_event_store(database_url: str) -> CrmEventStore:
    return CrmEventStore(env=eventsourcing_env(database_url))
