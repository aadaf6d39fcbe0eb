"""Which destinations a job may export to: configuration checked at start, requests checked at the door."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import ApiKey, Settings
from app.errors import Forbidden, InvalidRequest
from app.export.policy import ExportPolicy, parse_export_to
from app.security.keys import Principal

DESTINATIONS = [{"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "pacs.local", "port": 104},
                {"name": "vna", "kind": "dicomweb", "url": "https://vna.local/dicom-web"}]
KEY = ApiKey(name="ris", sha256="0" * 64, export_to=["pacs"], may_export_to=["vna"])


def test_settings_refuse_unknown_or_repeated_destination_names() -> None:
    with pytest.raises(ValidationError, match=r"MEDIMG_ROUTING_RULES\[0\].export_to names unknown .*'archive'"):
        Settings(export_destinations=DESTINATIONS, routing_rules=[{"task": "dr-grading", "export_to": ["archive"]}])
    with pytest.raises(ValidationError, match="names must be unique"):
        Settings(export_destinations=[*DESTINATIONS, DESTINATIONS[0]])


def test_production_refuses_credentials_over_plain_http(tmp_path) -> None:
    insecure = [{"name": "vna", "kind": "dicomweb", "url": "http://vna.local/dicom-web",
                 "auth_header_file": str(tmp_path / "token")}]
    with pytest.raises(ValidationError, match="unencrypted"):
        Settings(environment="production", export_destinations=insecure)
    assert Settings(environment="development", export_destinations=insecure).export_destination("vna")


def test_request_may_add_what_its_key_allows() -> None:
    policy = ExportPolicy(Settings(export_destinations=DESTINATIONS), [KEY])
    ris = Principal("ris", frozenset({"submit", "read"}), authenticated=True)
    assert policy.destinations(ris, []) == ["pacs"]  # the key's default
    assert policy.destinations(ris, parse_export_to('["vna"]'), routed=["pacs"]) == ["pacs", "vna"]
    other = Principal("other", frozenset({"submit"}), authenticated=True)
    with pytest.raises(Forbidden, match="may not export to \\['pacs'\\]"):
        policy.destinations(other, parse_export_to("pacs"))
    admin = Principal("ops", frozenset({"admin"}), authenticated=True)
    assert policy.destinations(admin, parse_export_to("vna, pacs")) == ["vna", "pacs"]
    with pytest.raises(InvalidRequest, match="unknown destination"):
        policy.destinations(admin, ["nowhere"])
    with pytest.raises(InvalidRequest, match="JSON list"):
        parse_export_to("[pacs")


def test_key_file_naming_an_unknown_destination_stops_the_start() -> None:
    with pytest.raises(ValueError, match="API key 'ris' names unknown export destination"):
        ExportPolicy(Settings(), [KEY])
