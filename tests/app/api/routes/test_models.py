"""GET /v1/models says what is served, for what, and how well it measured."""

import httpx

from devkit.services import Service


def test_list_models_reports_dr_reference(embedded_service: Service) -> None:
    body = httpx.get(f"{embedded_service.url}/v1/models").json()
    assert body["count"] == len(body["data"]) >= 1
    model = next(m for m in body["data"] if m["task"] == "dr-grading")
    assert model["id"] == "dr-grading-reference" and model["version"] >= 1
    assert model["research_use_only"] is True
    assert "research use" in model["intended_use"].lower()
    assert set(model["accepts"]["formats"]) == {"png", "jpeg", "dicom"}
    assert len(model["class_names"]) == 5


def test_read_model_card_is_markdown(embedded_service: Service) -> None:
    response = httpx.get(f"{embedded_service.url}/v1/models/dr-grading-reference/card")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    assert "research" in response.text.lower()


def test_read_model_card_unknown_model(embedded_service: Service) -> None:
    response = httpx.get(f"{embedded_service.url}/v1/models/nope/card")
    assert response.status_code == 404 and response.json()["code"] == "model-not-found"
