"""A DIMSE peer that refuses: a scripted pynetdicom C-STORE SCP answers with a chosen status, and the sender
says whether trying again can help (out of resources: yes; cannot understand: no), in words a person can act on."""

from __future__ import annotations

import io

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from app.config import DimseDestination
from app.export.senders import DimseSender, Instance, SendFailed
from tests.utils.exports import us_instance
from devkit.services import free_port


@pytest.fixture
def scripted_peer():
    """(sender, answers, stored, peer AE): the SCP answers the statuses in `answers`, one per C-STORE, then success."""
    answers: list[int] = []
    stored: list[str] = []

    def on_store(event) -> int:
        status = answers.pop(0) if answers else 0x0000
        if status == 0x0000:
            stored.append(str(event.dataset.SOPInstanceUID))
        return status

    ae = AE(ae_title="SCRIPTED")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.require_called_aet = True  # a sender calling it by another AE title is rejected, permanently
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    sender = DimseSender(DimseDestination.model_validate(
        {"name": "scripted", "kind": "dimse", "ae_title": "SCRIPTED", "host": "127.0.0.1", "port": port}), 10)
    yield sender, answers, stored, ae
    server.shutdown()


def _instance(seed: int) -> Instance:
    data = us_instance(seed)
    return Instance(str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID), data)


def test_out_of_resources_is_transient_and_a_retry_succeeds(scripted_peer) -> None:
    sender, answers, stored, _ = scripted_peer
    instance = _instance(21)
    answers.append(0xA700)
    with pytest.raises(SendFailed) as refused:
        sender.send([instance])
    assert refused.value.transient and refused.value.stored == []
    assert "refused an instance with C-STORE status 0xA700" in refused.value.reason
    assert sender.send([instance]) == [instance.sop_instance_uid]  # the peer has room again
    assert stored == [instance.sop_instance_uid]


@pytest.mark.parametrize("status", [0xA900, 0xC000])  # data set does not match SOP class; cannot understand
def test_permanent_refusal_is_not_worth_retrying(scripted_peer, status: int) -> None:
    sender, answers, stored, _ = scripted_peer
    answers.append(status)
    with pytest.raises(SendFailed) as refused:
        sender.send([_instance(22)])
    assert not refused.value.transient
    assert f"C-STORE status 0x{status:04X}" in refused.value.reason and "SCRIPTED@127.0.0.1" in refused.value.reason
    assert stored == []


def test_association_rejected_permanently_is_not_worth_retrying(scripted_peer) -> None:
    sender, _, stored, _ = scripted_peer
    misnamed = DimseSender(sender.destination.model_copy(update={"ae_title": "NOT-SCRIPTED"}), 10)
    with pytest.raises(SendFailed) as refused:
        misnamed.send([_instance(23)])
    assert not refused.value.transient
    assert "NOT-SCRIPTED@127.0.0.1" in refused.value.reason and "rejected permanently" in refused.value.reason
    assert "Called AE title not recognised" in refused.value.reason  # the peer's own reason, for a person to fix
    assert stored == []


def test_association_rejected_for_now_is_worth_retrying(scripted_peer) -> None:
    sender, _, stored, peer = scripted_peer
    peer.maximum_associations = 1
    held = AE(ae_title="OTHER")
    held.add_requested_context("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage, one the peer takes
    holding = held.associate("127.0.0.1", sender.destination.port, ae_title="SCRIPTED")
    assert holding.is_established  # the peer's one association is taken
    try:
        with pytest.raises(SendFailed) as refused:
            sender.send([_instance(24)])
    finally:
        holding.release()
    assert refused.value.transient and "rejected for now" in refused.value.reason
    assert "limit exceeded" in refused.value.reason
    instance = _instance(24)
    assert sender.send([instance]) == [instance.sop_instance_uid]  # free again: the retry goes through
    assert stored == [instance.sop_instance_uid]
