"""C-STORE to a DIMSE peer with pynetdicom, one association per instance.

One association per instance keeps every failure local to its file (an aborted association never
takes the next file with it) at a cost of a few milliseconds on a LAN; huatuo sends a handful of
SRs per batch, not whole archives. The presentation context offers the instance's own SOP class
and transfer syntax, so the bytes go as they are, never recompressed. pynetdicom logs through the
`pynetdicom` logger, which has only a NullHandler: nothing it logs reaches the terminal.
"""

from __future__ import annotations

import ssl
from typing import Any

from huatuo_cli.send.destination import Destination, Tls
from huatuo_cli.send.files import Outgoing
from huatuo_cli.send.transport import SendFailure

#: C-STORE statuses that are worth another try (0xA7xx: refused, out of resources)
TRANSIENT_STATUS = range(0xA700, 0xA800)
WARNING_STATUS = {0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007}
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND


def ssl_context(tls: Tls) -> ssl.SSLContext:
    """A client context: the given CA (or the system's), and our certificate when the PACS asks."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return context


class DimseTransport:
    def __init__(self, destination: Destination, *, timeout: float = 30.0) -> None:
        self.destination = destination
        self.timeout = timeout
        self.tls_args = (ssl_context(destination.tls), destination.host) if destination.tls else None

    def _associate(self, contexts: list[tuple[str, str]]) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.destination.ae_title)
        for abstract, syntax in contexts:
            ae.add_requested_context(abstract, syntax)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.timeout
        dest = self.destination
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.called_ae, tls_args=self.tls_args)
        except (OSError, ValueError) as exc:
            raise SendFailure(f"cannot connect to {dest.host}:{dest.port}: {exc}", transient=True) from None
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            result = getattr(getattr(assoc.acceptor, "primitive", None), "result", None)
            raise SendFailure(f"association rejected by {dest.called_ae}@{dest.host}:{dest.port} "
                              f"(check called_ae, and that the PACS knows our AE title {dest.ae_title})",
                              transient=result == 0x02)
        why = "connection refused, timed out, aborted, or the TLS handshake failed: check ca_file and cert_file" \
            if dest.tls else "connection refused, timed out or aborted"
        raise SendFailure(f"no DICOM association with {dest.host}:{dest.port} ({why})", transient=True)

    def store(self, item: Outgoing) -> None:
        ds = item.dataset
        syntax = str(ds.file_meta.TransferSyntaxUID)
        assoc = self._associate([(str(ds.SOPClassUID), syntax)])
        try:
            if not assoc.accepted_contexts:
                raise SendFailure(f"the PACS does not accept {_name(ds.SOPClassUID)} in {_name(syntax)}",
                                  transient=False)
            try:
                status = assoc.send_c_store(ds)
            except (OSError, ValueError, AttributeError) as exc:
                raise SendFailure(f"C-STORE could not be sent: {type(exc).__name__}", transient=False) from None
        finally:
            if assoc.is_established:
                assoc.release()
        code = getattr(status, "Status", None)
        if code is None:
            raise SendFailure("no C-STORE response (the association was aborted or timed out)", transient=True)
        if code == 0x0000 or code in WARNING_STATUS:
            return
        raise SendFailure(f"the PACS refused the instance: C-STORE status 0x{code:04X}",
                          transient=code in TRANSIENT_STATUS)

    def holds(self, item: Outgoing) -> bool | None:
        """C-FIND at IMAGE level for this SOP Instance UID (study and series given, as the
        hierarchical model asks). None when the PACS offers no C-FIND or does not answer."""
        from pydicom.dataset import Dataset

        ds = item.dataset
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = ds.get("StudyInstanceUID", "")
        query.SeriesInstanceUID = ds.get("SeriesInstanceUID", "")
        query.SOPInstanceUID = ds.SOPInstanceUID
        try:
            assoc = self._associate([(FIND_MODEL, "1.2.840.10008.1.2.1"), (FIND_MODEL, "1.2.840.10008.1.2")])
        except SendFailure:
            return None
        found, answered = False, False
        try:
            if not assoc.accepted_contexts:
                return None
            for status, identifier in assoc.send_c_find(query, FIND_MODEL):
                code = getattr(status, "Status", None)
                if code is None:
                    return None
                answered = True
                if code in (0xFF00, 0xFF01) and identifier is not None \
                        and str(identifier.get("SOPInstanceUID", "")) == str(ds.SOPInstanceUID):
                    found = True
        finally:
            if assoc.is_established:
                assoc.release()
        return found if answered else None

    def close(self) -> None:
        return None


def _name(uid: Any) -> str:
    """A standard UID's name (SOP classes and transfer syntaxes are not PHI), else the UID."""
    from pydicom.uid import UID

    value = UID(str(uid))
    return value.name if value.is_valid and value.name != str(value) else "an unknown SOP class"
