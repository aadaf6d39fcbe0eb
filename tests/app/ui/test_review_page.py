"""The review page at /ui in a real headless Chromium (Debian's, driven by Playwright), against a real gateway.

A person's path through it: enter a key, submit a CT ZIP and a fundus PNG with upload progress, wait for the
results, jump to a nodule's key slice and scroll with the keyboard, list jobs with a filter, read a model card.
Screenshots go to out/browser/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from devkit.covid import covid_case
from devkit.ct import nodule_scan, synthetic_ct, zip_bytes
from devkit.fundus import make_fundus, png_bytes
from tests.utils.keys import KEYS, keys_env
from devkit.reference_models import REPO_ROOT
from devkit.services import Service, service_env
from devkit.ultrasound import dicom_us_bytes, make_frame, ultrasound_region
from devkit.ultrasound import png_bytes as ultrasound_png
from tests.utils.onnx_models import fixed_box_detector
from tests.utils.thyroid_detector import cascade_repository, detector_manifest, letterboxed
from workers.imaging.ultrasound import to_grey

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "out" / "browser"
JOB_TIMEOUT_MS = 150_000
KEY = KEYS["clinic-a"][0]

playwright_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
expect = playwright_api.expect
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")


@pytest.fixture(scope="module")
def keyed_gateway(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("ui")
    service = Service(data_dir, service_env(data_dir, MEDIMG_API_KEYS=keys_env()))
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A small CT series as a ZIP (24 slices of 256 x 256, two nodules) and a fundus photograph as PNG."""
    directory = tmp_path_factory.mktemp("ui-inputs")
    scan = nodule_scan(seed=7, z_extent_mm=60.0, diameters=(9.0, 14.0))
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, directory / "series", shuffle_names=True,
                                           rng=np.random.default_rng(3))
    ct_zip = directory / "chest-ct.zip"
    ct_zip.write_bytes(zip_bytes(paths))
    fundus = directory / "eye.png"
    fundus.write_bytes(png_bytes(make_fundus(seed=12, size=512).rgb))
    # 5 mm: the thickest slices the COVID model's quality gate accepts (10 mm series are refused as ungradable).
    covid = covid_case(seed=4, matrix=96, slice_spacing=5.0)
    covid_paths = synthetic_ct().write_ct_series(covid.hu, covid.grid, directory / "covid")
    covid_zip = directory / "covid-ct.zip"
    covid_zip.write_bytes(zip_bytes(covid_paths))
    frame = directory / "thyroid.png"
    frame.write_bytes(ultrasound_png(make_frame(101, ui=True, margin="smooth").frame))
    return {"ct": ct_zip, "fundus": fundus, "covid": covid_zip, "thyroid": frame}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.console_errors = []  # type: ignore[attr-defined]
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(f"uncaught: {e}"))
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))


def enter_key(page, service: Service, served_task: str = "lung-nodule-detection") -> None:
    """Open the page and give it the key; the calls it made before it had one may answer 401, nothing else."""
    page.goto(f"{service.url}/ui/")
    page.fill("#api-key", KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(f"#task option[value='{served_task}']", state="attached")
    page.wait_for_selector("#readiness.ok")
    before_key = [e for e in page.console_errors if "401" not in e]
    assert before_key == [], before_key
    page.console_errors.clear()


def submit(page, task: str, path: Path) -> str:
    page.select_option("#task", task)
    page.set_input_files("#files", str(path))
    shown_before = page.get_attribute("#job-view", "data-job-id")
    page.click("#submit-button")
    page.wait_for_function(
        "([before]) => { const view = document.getElementById('job-view');"
        " return view.dataset.jobId !== before && ['succeeded', 'failed'].includes(view.dataset.status); }",
        arg=[shown_before], timeout=JOB_TIMEOUT_MS)
    assert page.get_attribute("#job-view", "data-status") == "succeeded", page.inner_text("#job-view")
    job_id = page.get_attribute("#job-view", "data-job-id")
    assert page.inner_text("#upload-status") == f"Submitted {job_id[:8]}"
    return job_id


def assert_accessible_at_1280(page) -> None:
    """Every control has a label, and nothing is wider than the 1280-pixel window."""
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, canvas[tabindex]')]
        .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
        .map((e) => e.id || e.outerHTML)""")
    assert unlabelled == []
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280


def natural_width(page, selector: str) -> int:
    # A function, not an expression: Playwright evaluates expressions with eval, which the page's CSP forbids.
    page.wait_for_function("(selector) => document.querySelector(selector)?.naturalWidth > 0", arg=selector,
                           timeout=20_000)
    return page.eval_on_selector(selector, "image => image.naturalWidth")


def test_page_served_from_the_package_with_a_strict_csp(keyed_gateway: Service) -> None:
    response = httpx.get(f"{keyed_gateway.url}/ui", follow_redirects=True)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in response.text and " style=" not in response.text  # nothing inline for the CSP to block
    script = httpx.get(f"{keyed_gateway.url}/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "http://" not in script.text and "https://" not in script.text  # nothing fetched from elsewhere


def test_review_ct_and_fundus_jobs_in_the_browser(page, keyed_gateway: Service, inputs: dict[str, Path]) -> None:
    enter_key(page, keyed_gateway)

    # CT: a ZIP of DICOM slices, then the first nodule's key slice in the scroller and its overlay.
    ct_job = submit(page, "lung-nodule-detection", inputs["ct"])
    jump = page.locator("button.nodule-jump").first
    key_slice = jump.get_attribute("data-slice")
    jump.click()
    page.wait_for_selector(f"#ct-canvas[data-slice='{key_slice}'][data-drawn='true']")
    assert int(page.get_attribute("#ct-canvas", "data-natural-width")) == 256
    assert natural_width(page, "#key-slice-overlay") >= 256
    page.focus("#ct-canvas")
    page.keyboard.press("ArrowDown")
    page.wait_for_selector(f"#ct-canvas[data-slice='{int(key_slice) + 1}'][data-drawn='true']")
    page.keyboard.press("ArrowUp")
    page.wait_for_selector(f"#ct-canvas[data-slice='{key_slice}'][data-drawn='true']")
    screenshot(page, "ct-nodule-key-slice.png")
    assert_accessible_at_1280(page)

    # DR: a fundus PNG, graded, with the retina shown.
    dr_job = submit(page, "dr-grading", inputs["fundus"])
    assert natural_width(page, "#retina-image") > 0
    assert page.inner_text("#referable") in ("referable", "not referable")
    assert page.locator(".probabilities meter").count() == 5
    screenshot(page, "dr-result.png")
    with page.expect_download() as download:  # artifacts download through the key, as blobs
        page.click("button[aria-label='Download retina.jpg']")
    saved = download.value
    assert saved.suggested_filename == "retina.jpg"
    assert Path(saved.path()).read_bytes()[:3] == b"\xff\xd8\xff"

    # The job list, filtered by task, newest first.
    page.select_option("#filter-task", "dr-grading")
    page.click("#filter-form button[type=submit]")
    expect(page.locator("#job-list .job-row")).to_have_count(1)
    assert page.get_attribute("#job-list .job-row", "data-job-id") == dr_job
    page.select_option("#filter-task", "")
    page.click("#filter-form button[type=submit]")
    expect(page.locator("#job-list .job-row")).to_have_count(2)
    assert [r.get_attribute("data-job-id") for r in page.locator("#job-list .job-row").all()] == [dr_job, ct_job]

    # A model card, rendered from Markdown.
    page.click("#tab-models")
    page.click("#model-list button[data-model-id='dr-grading-reference']")
    page.wait_for_selector("#model-card h4")
    assert page.locator("#model-card table").count() >= 1

    assert page.console_errors == []


def test_review_covid_and_thyroid_results_in_the_browser(page, keyed_gateway: Service, inputs: dict[str, Path]) -> None:
    enter_key(page, keyed_gateway)

    # COVID: the scroller opens on the middle slice with lesion, its mask drawn over the display slice.
    submit(page, "covid-lesion-segmentation", inputs["covid"])
    job = httpx.get(f"{keyed_gateway.url}/v1/jobs/{page.get_attribute('#job-view', 'data-job-id')}",
                    headers={"X-API-Key": KEY}).json()
    affected = job["result"]["affected_slices"]
    assert affected, "the test case must have lesions"
    middle = affected[len(affected) // 2]
    page.wait_for_selector(f"#ct-canvas[data-slice='{middle}'][data-drawn='true'][data-mask='shown']")
    page.focus("#mask-opacity")
    page.keyboard.press("End")
    assert page.input_value("#mask-opacity") == "100"
    expect(page.locator("table.volumes")).to_contain_text(f"{job['result']['lesion_volume_ml']['total']:.1f}")
    screenshot(page, "covid-lesions.png")

    # Thyroid: the outlined frame with its TI-RADS band and size.
    submit(page, "thyroid-malignancy", inputs["thyroid"])
    assert natural_width(page, "#thyroid-overlay") > 0
    job = httpx.get(f"{keyed_gateway.url}/v1/jobs/{page.get_attribute('#job-view', 'data-job-id')}",
                    headers={"X-API-Key": KEY}).json()
    expect(page.locator("#job-view .headline")).to_contain_text(job["result"]["risk_band"])
    screenshot(page, "thyroid-result.png")

    assert page.console_errors == []


def test_review_thyroid_detector_boxes_in_the_browser(page, tmp_path: Path) -> None:
    """A site's 2-D detector as the thyroid localiser: its boxes listed with their sizes in mm, best first."""
    item = make_frame(101, ui=True, margin="smooth")
    size = (192, 320)
    boxes = [(300.0, 165.0, 458.0, 364.0), (150.0, 100.0, 230.0, 160.0)]
    onnx_bytes = fixed_box_detector([letterboxed(box, item.region, size) for box in boxes], [0.9, 0.6], [0, 1],
                                    [1, 3, *size])
    repository = cascade_repository(tmp_path / "models", onnx_bytes,
                                    detector_manifest(onnx_bytes, size, resize="letterbox"))
    frame = tmp_path / "us.dcm"
    frame.write_bytes(dicom_us_bytes(to_grey(item.frame), regions=[ultrasound_region(item.region, (0.12, 0.08))]))
    service = Service(tmp_path / "var", service_env(tmp_path / "var", MEDIMG_API_KEYS=keys_env(),
                                                    MEDIMG_MODEL_REPOSITORY=str(repository)))
    service.start_gateway()
    try:
        enter_key(page, service, "thyroid-malignancy")
        submit(page, "thyroid-malignancy", frame)
        rows = page.locator("table.detections tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("nodule")
        expect(rows.nth(0)).to_contain_text("12.6 × 23.9 mm")  # 158 px at 0.08 mm by 199 px at 0.12 mm
        expect(rows.nth(1)).to_contain_text("cyst")
        expect(page.locator("#job-view")).to_contain_text("detection")  # Outlined by
        screenshot(page, "thyroid-detector.png")
    finally:
        service.stop()
    assert page.console_errors == []


def test_refused_upload_shows_the_problem_detail(page, keyed_gateway: Service, tmp_path: Path) -> None:
    enter_key(page, keyed_gateway)
    text = tmp_path / "notes.png"
    text.write_bytes(b"not an image at all")
    page.select_option("#task", "dr-grading")
    page.set_input_files("#files", str(text))
    page.click("#submit-button")
    page.wait_for_selector("#submit-problem:not([hidden])")
    shown = page.inner_text("#submit-problem")
    response = httpx.post(f"{keyed_gateway.url}/v1/jobs", data={"task": "dr-grading"},
                          files={"files": ("notes.png", b"not an image at all")}, headers={"X-API-Key": KEY})
    assert response.status_code == 415
    assert response.json()["detail"] in shown and "415" in shown
    screenshot(page, "refused-upload.png")
    # The refused upload's own 415 is the only error the browser logged.
    assert all("415" in e for e in page.console_errors), page.console_errors


def test_model_card_markdown_cannot_inject_markup(page, keyed_gateway: Service) -> None:
    page.goto(f"{keyed_gateway.url}/ui/")
    rendered = page.evaluate("""(source) => {
        const box = document.createElement('div');
        box.append(Markdown.render(source));
        return {html: box.innerHTML, hrefs: [...box.querySelectorAll('a')].map((a) => a.getAttribute('href'))};
    }""", "# Card <img src=x onerror=alert(1)>\n\n| a | b |\n|---|---|\n| **1** | `<b>` |\n\n"
          "[ok](https://example.org/x) [bad](javascript:alert(1)) [worse](//evil.example/)")
    assert "<img" not in rendered["html"] and "&lt;img src=x" in rendered["html"]
    assert "<strong>1</strong>" in rendered["html"] and "<code>&lt;b&gt;</code>" in rendered["html"]
    assert rendered["hrefs"] == ["https://example.org/x"]


def test_unknown_task_and_added_fields_shown_plainly(page, keyed_gateway: Service) -> None:
    """A task this page has no view for (a plug-in), and job fields other services add, still show."""
    page.goto(f"{keyed_gateway.url}/ui/")
    page.evaluate("""() => renderJob({
        id: "00000000-0000-0000-0000-000000000001", task: "bone-age", status: "succeeded",
        created_at: "2026-12-01T08:00:00Z", started_at: null, finished_at: null,
        model: {id: "bone-age-reference", version: 1, sha256: "0", research_use_only: true},
        result: {months: 131.5}, error: null, artifacts: [{name: "hand.png", media_type: "image/png",
        size_bytes: 2048, url: "/v1/jobs/x/artifacts/hand.png"}], stage_seconds: {}, notes: [],
        quality: {gradable: true, focus: 0.93}, priority: "stat", queue: {lane: "ct", position: 3},
        exports: [{target: "pacs", status: "sent"}]
    }, {blobs: new BlobCache()})""")
    view = page.locator("#job-view")
    expect(view).to_contain_text('"months": 131.5')
    expect(view.locator("table", has_text="Input quality")).to_contain_text("0.93")
    expect(view.locator("table", has_text="Priority")).to_contain_text("position 3 in ct")
    expect(view.locator("table", has_text="More")).to_contain_text("exports")
    expect(view).to_contain_text("hand.png")


@pytest.fixture(scope="session", autouse=True)
def _fresh_screenshots() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
