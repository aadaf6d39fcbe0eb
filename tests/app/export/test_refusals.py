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
from tests.utils.services import free_port


@pytest.fixture
def scripted_peer():
    """A storage SCP whose answers are the statuses in `answers`, one per C-STORE, then success."""
    answers: list[int] = []
    stored: list[str] = []

    def on_store(event) -> int:
        status = answers.pop(0) if answers else 0x0000
        if status == 0x0000:
            stored.append(str(event.dataset.SOPInstanceUID))
        return status

    ae = AE(ae_title="SCRIPTED")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    sender = DimseSender(DimseDestination.model_validate(
        {"name": "scripted", "kind": "dimse", "ae_title": "SCRIPTED", "host": "127.0.0.1", "port": port}), 10)
    yield sender, answers, stored
    server.shutdown()


def _instance(seed: int) -> Instance:
    data = us_instance(seed)
    return Instance(str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID), data)


def test_out_of_resources_is_transient_and_a_retry_succeeds(scripted_peer) -> None:
    sender, answers, stored = scripted_peer
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
    sender, answers, stored = scripted_peer
    answers.append(status)
    with pytest.raises(SendFailed) as refused:
        sender.send([_instance(22)])
    assert not refused.value.transient
    assert f"C-STORE status 0x{status:04X}" in refused.value.reason and "SCRIPTED@127.0.0.1" in refused.value.reason
    assert stored == []
