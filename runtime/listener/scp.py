"""The Storage SCP: accepts associations from allowed callers only, answers C-ECHO, and writes each instance of a
CT, RT Structure Set, RT Plan or RT Dose into the store, telling the tracker a study received an instance.

Association rules (pynetdicom): the caller must address the node by its AE title (``require_called_aet``) and call
from one of ``listen.allowed_callers`` (``require_calling_aet``); a refused association is written to the audit log
with the caller's AE title and address. Other object kinds (MR, secondary captures, ...) are refused at
presentation-context negotiation, since the node can do nothing with them.
"""

from __future__ import annotations

from collections.abc import Callable

from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    RTDoseStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from protocols.errors import DeploymentError
from runtime.listener.audit import AuditLog
from runtime.listener.settings import ListenerSettings
from runtime.listener.store import StudyStore, study_key
from runtime.listener.tracker import State, StudyTracker

ACCEPTED_STORAGE = (CTImageStorage, RTStructureSetStorage, RTPlanStorage, RTDoseStorage)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # the instance could not be stored (disk full, store not writable)
STATUS_CANNOT_UNDERSTAND = 0xC000  # no StudyInstanceUID or SOPInstanceUID: not an instance the node can file


class StorageScp:
    """The receiving side of the node; :meth:`start` binds the port, :meth:`stop` closes it."""

    def __init__(self, settings: ListenerSettings, store: StudyStore, tracker: StudyTracker, audit: AuditLog,
                 say: Callable[[str], None]) -> None:
        self.settings, self.store, self.tracker, self.audit, self.say = settings, store, tracker, audit, say
        self._server: ThreadedAssociationServer | None = None

    def build_ae(self) -> AE:
        """The application entity with the node's title, contexts and caller rules."""
        ae = AE(ae_title=self.settings.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.settings.allowed_callers)
        ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_STORAGE:
            ae.add_supported_context(sop_class)
        return ae

    def start(self) -> int:
        """Listen on ``host:port``; returns the port (the chosen one when the setting is 0)."""
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REJECTED, self._on_rejected)]
        address = (self.settings.host, self.settings.port)
        try:
            self._server = self.build_ae().start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            raise DeploymentError(f"fedrt listen cannot listen on {address[0]}:{address[1]} ({exc}); choose a free "
                                  "port (listen.port=...) or stop what uses it, and an address of this machine "
                                  "(listen.host=...)") from exc
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting associations (ones in progress are closed)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_echo(self, event: evt.Event) -> int:
        """C-ECHO: the association was accepted, so the caller is allowed; answer success."""
        return STATUS_SUCCESS

    def _on_rejected(self, event: evt.Event) -> None:
        """A refused association: who called, from where, and for which AE title."""
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        self.audit.write("refused", caller=str(requestor.ae_title).strip(), address=requestor.address,
                         called=called, reason="calling AE title not allowed"
                         if str(requestor.ae_title).strip() not in self.settings.allowed_callers
                         else f"called AE title is not {self.settings.ae_title}")
        self.say(f"refused an association from {str(requestor.ae_title).strip()!r} at {requestor.address}")

    def _on_store(self, event: evt.Event) -> int:
        """C-STORE: file the instance under its study, then tell the tracker (the study's quiet period restarts)."""
        try:
            ds = event.dataset
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
            sop_uid = str(event.request.AffectedSOPInstanceUID or ds.get("SOPInstanceUID", "") or "")
        except Exception:  # an undecodable dataset is refused, never kills the node
            return STATUS_CANNOT_UNDERSTAND
        if not study_uid or not sop_uid:
            return STATUS_CANNOT_UNDERSTAND
        key = study_key(study_uid)
        before = self.tracker.state(key)
        if before in (State.READY, State.FAILED):
            self.store.reopen(key)
        try:
            self.store.save_instance(key, sop_uid, event.encoded_dataset())
        except OSError as exc:
            self.say(f"study {key}: cannot store an instance ({exc}); the sender was told to retry")
            return STATUS_OUT_OF_RESOURCES
        caller = str(event.assoc.requestor.ae_title).strip()
        if self.tracker.arrived(key, caller) in (None, State.READY, State.FAILED):
            self.say(f"study {key}: receiving from {caller}")
        return STATUS_SUCCESS
