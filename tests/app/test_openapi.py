"""The OpenAPI document describes the v1 contract, generated from the pydantic schemas."""

from app.main import create_app


def test_openapi_documents_job_contract() -> None:
    schema = create_app().openapi()
    post = schema["paths"]["/v1/jobs"]["post"]
    assert {"202", "413", "415", "422", "503"} <= set(post["responses"])
    form = schema["components"]["schemas"][post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"task", "files", "options"} <= set(form["properties"])
    job = schema["components"]["schemas"]["JobPublic"]
    assert {"id", "task", "status", "created_at", "started_at", "finished_at", "model", "result", "error",
            "artifacts"} <= set(job["properties"])
    assert "DRGradingResult" in schema["components"]["schemas"]
    assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/artifacts/{name}", "/v1/models", "/healthz", "/readyz",
            "/metrics"} <= set(schema["paths"])


def test_openapi_documents_job_listing() -> None:
    schema = create_app().openapi()
    listing = schema["paths"]["/v1/jobs"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"status", "task", "created_after", "created_before",
                                                          "limit", "cursor"}
    assert listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobsPublic")
    page = schema["components"]["schemas"]["JobsPublic"]
    assert set(page["properties"]) == {"data", "count", "next"}


def test_job_form_fields_are_never_null() -> None:
    # A form part is text or absent: a schema offering null is answered by clients (and schemathesis) sending the
    # text "null", which `priority` refuses with a 422.
    schema = create_app().openapi()
    ref = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"options", "callback_url", "priority", "export_to"} <= set(form["properties"])
    nullable = [name for name, field in form["properties"].items() if {"type": "null"} in field.get("anyOf", [])]
    assert nullable == []
    assert set(form["required"]) == {"task", "files"}
