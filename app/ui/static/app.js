// The review page. It calls only the public API (/v1/..., /readyz) with the caller's key, which stays in this
// tab's sessionStorage. Artifacts are fetched with the key and shown through blob: URLs. Per-task result views
// are looked up by task name; a task without one gets the result as JSON and its artifact list.
"use strict";

const KEY_STORAGE = "medimg.apiKey";
const FINISHED = new Set(["succeeded", "failed"]);
const TASKS_FALLBACK = ["lung-nodule-detection", "covid-lesion-segmentation", "dr-grading", "thyroid-malignancy"];

// --- small helpers ---------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function fmt(value, digits = 2) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  if (value === null || value === undefined) return "—";
  return String(value);
}

function pct(probability) {
  return `${(100 * probability).toFixed(1)} %`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function keyValueTable(rows, caption) {
  return el("table", { className: "kv" }, caption ? el("caption", { text: caption }) : null,
    el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }),
      el("td", {}, v instanceof Node ? v : fmt(v))))));
}

function jsonBlock(value, summary) {
  return el("details", {}, el("summary", { text: summary }), el("pre", { text: JSON.stringify(value, null, 2) }));
}

// --- the API ---------------------------------------------------------------------------------------------

class Problem extends Error {
  constructor(document) {
    super(document.detail || document.title || `HTTP ${document.status}`);
    this.document = document;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return new Problem(await response.json());
    } catch (_) { /* fall through to the status line */ }
  }
  return new Problem({ status: response.status, title: response.statusText || "Request failed",
    detail: `The service answered ${response.status} ${response.statusText}` });
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Problem({ title: "Service unreachable", detail: `Could not reach the service: ${error.message}` });
  }
  if (!response.ok) throw await problemOf(response);
  return response;
}

const getJson = async (path, options) => (await api(path, options)).json();

function showProblem(container, error) {
  container.replaceChildren();
  container.hidden = !error;
  if (!error) return;
  const doc = error.document || { title: "Error", detail: String(error.message || error) };
  container.append(
    el("strong", { text: `${doc.title || "Error"}${doc.status ? ` (${doc.status})` : ""}` }),
    doc.detail ? el("span", { text: ` — ${doc.detail}` }) : null,
    doc.code ? el("code", { className: "problem-code", text: doc.code }) : null,
  );
  if (doc.status === 401) container.append(el("span", { text: " Enter an API key above." }));
}

// Artifacts are behind the key: fetch them as blobs. Object URLs are freed when their job view closes.
class BlobCache {
  constructor() { this.urls = new Map(); }
  url(path) {
    if (!this.urls.has(path)) {
      this.urls.set(path, api(path).then((r) => r.blob()).then((b) => URL.createObjectURL(b)));
    }
    return this.urls.get(path);
  }
  async image(path) {
    const image = new Image();
    image.src = await this.url(path);
    await image.decode();
    return image;
  }
  clear() {
    for (const promised of this.urls.values()) promised.then((u) => URL.revokeObjectURL(u), () => {});
    this.urls.clear();
  }
}

// --- header: key, readiness, tabs ------------------------------------------------------------------------

function initKeyForm() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    refreshAll();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    refreshAll();
  });
}

async function refreshReadiness() {
  const badge = $("readiness");
  const detail = $("readiness-detail");
  let body;
  let ready = false;
  try {
    const response = await fetch("/readyz", { headers: authHeaders() });
    body = await response.json();
    ready = response.ok;
  } catch (error) {
    body = { detail: `Could not reach the service: ${error.message}` };
  }
  badge.textContent = ready ? "ready" : "not ready";
  badge.className = `badge ${ready ? "ok" : "bad"}`;
  badge.setAttribute("aria-label", `Service ${badge.textContent}: ${body.detail || ""}`);
  const { status, detail: why, type, title, instance, ...checks } = body;
  detail.replaceChildren(el("strong", { text: ready ? "Ready" : "Not ready" }), ` — ${why || title || ""}`,
    Object.keys(checks).length ? jsonBlock(checks, "checks") : null);
}

function initTabs() {
  const show = (jobs) => {
    $("jobs-section").hidden = !jobs;
    $("models-section").hidden = jobs;
    $("tab-jobs").setAttribute("aria-pressed", String(jobs));
    $("tab-models").setAttribute("aria-pressed", String(!jobs));
    if (!jobs) loadModels();
  };
  $("tab-jobs").addEventListener("click", () => show(true));
  $("tab-models").addEventListener("click", () => show(false));
  $("readiness").addEventListener("click", () => { $("readiness-detail").hidden = !$("readiness-detail").hidden; });
}

// --- submission ------------------------------------------------------------------------------------------

let models = [];

async function loadTasks() {
  let tasks = TASKS_FALLBACK;
  try {
    models = (await getJson("/v1/models")).data;
    if (models.length) tasks = [...new Set(models.map((m) => m.task))];
  } catch (error) {
    showProblem($("notice"), error);
  }
  for (const select of [$("task"), $("filter-task")]) {
    const keep = select.id === "filter-task" ? [select.options[0]] : [];
    select.replaceChildren(...keep, ...tasks.map((t) => el("option", { value: t, text: t })));
  }
}

function parseOptions(text) {
  if (!text.trim()) return null;
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Problem({ title: "Options are not JSON", detail: `Options: ${error.message}` });
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Problem({ title: "Options must be a JSON object", detail: 'Write options as {"name": value, …}' });
  }
  return JSON.stringify(value);
}

// XMLHttpRequest, not fetch: only it reports upload progress.
function upload(form, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/jobs");
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      if (request.status === 200 || request.status === 202) resolve(request.response);
      else reject(new Problem(request.response || { status: request.status, title: "Upload refused" }));
    });
    request.addEventListener("error", () => reject(new Problem({ title: "Upload failed",
      detail: "The connection broke during the upload" })));
    request.send(form);
  });
}

function initSubmit() {
  $("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const problem = $("submit-problem");
    const progress = $("upload-progress");
    const status = $("upload-status");
    showProblem(problem, null);
    const files = [...$("files").files, ...$("folder").files];
    try {
      if (!files.length) throw new Problem({ title: "No files", detail: "Choose files, a ZIP or a folder to send" });
      const form = new FormData();
      form.append("task", $("task").value);
      for (const file of files) form.append("files", file, file.name);
      const options = parseOptions($("options").value);
      if (options) form.append("options", options);
      $("submit-button").disabled = true;
      progress.hidden = false;
      progress.value = 0;
      const job = await upload(form, (fraction) => {
        progress.value = Math.round(100 * fraction);
        status.textContent = `Uploading ${progress.value} %`;
      });
      status.textContent = `Submitted ${job.id.slice(0, 8)}`;
      loadJobs();
      openJob(job.id, job);
    } catch (error) {
      status.textContent = "";
      showProblem(problem, error);
    } finally {
      $("submit-button").disabled = false;
      progress.hidden = true;
    }
  });
}

// --- the job list ----------------------------------------------------------------------------------------

let nextPage = null;

function listQuery() {
  const params = new URLSearchParams({ limit: "20" });
  for (const [id, name] of [["filter-status", "status"], ["filter-task", "task"]]) {
    if ($(id).value) params.set(name, $(id).value);
  }
  for (const [id, name] of [["filter-after", "created_after"], ["filter-before", "created_before"]]) {
    if ($(id).value) params.set(name, new Date($(id).value).toISOString());
  }
  return `/v1/jobs?${params}`;
}

function jobRow(job) {
  return el("li", {}, el("button", {
    type: "button", className: "job-row", dataset: { jobId: job.id }, onclick: () => openJob(job.id),
  }, el("span", { className: `status ${job.status}`, text: job.status }), " ",
  el("span", { className: "task", text: job.task }), " ",
  el("span", { className: "muted", text: `${when(job.created_at)} · ${job.id.slice(0, 8)}` })));
}

async function loadJobs(more = false) {
  const list = $("job-list");
  try {
    const page = await getJson(more && nextPage ? nextPage : listQuery());
    if (!more) list.replaceChildren();
    list.append(...page.data.map(jobRow));
    nextPage = page.next;
    $("more-jobs").hidden = !nextPage;
    showProblem($("list-problem"), null);
  } catch (error) {
    showProblem($("list-problem"), error);
  }
}

function initList() {
  $("filter-form").addEventListener("submit", (event) => { event.preventDefault(); loadJobs(); });
  $("more-jobs").addEventListener("click", () => loadJobs(true));
}

// --- one job ---------------------------------------------------------------------------------------------

let current = { id: null, abort: null, blobs: new BlobCache() };

async function openJob(jobId, known = null) {
  if (current.abort) current.abort.abort();
  current.blobs.clear();
  current = { id: jobId, abort: new AbortController(), blobs: new BlobCache() };
  const mine = current;
  let job = known;
  try {
    if (!job) job = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal: mine.abort.signal });
    renderJob(job, mine);
    // Long-poll until it finishes; each answer redraws the status.
    while (!FINISHED.has(job.status) && current === mine) {
      job = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}?wait=20`, { signal: mine.abort.signal });
      if (current === mine) renderJob(job, mine);
    }
    if (known) loadJobs();  // a job just submitted: show its final status in the list too
  } catch (error) {
    if (error.name === "AbortError") return;
    const view = $("job-view");
    view.replaceChildren(el("h2", { id: "job-heading", text: `Job ${jobId}` }), el("div", { className: "problem", role: "alert" }));
    showProblem(view.lastChild, error);
  }
}

const KNOWN_FIELDS = new Set(["id", "task", "status", "created_at", "started_at", "finished_at", "model", "result",
  "error", "artifacts", "callback_url", "stage_seconds", "notes", "priority", "queue"]);

function renderJob(job, context) {
  const view = $("job-view");
  const header = [
    el("h2", { id: "job-heading" }, `${job.task} `, el("span", { className: `status ${job.status}`, id: "job-status", text: job.status })),
    keyValueTable([
      ["Job", el("code", { text: job.id })],
      job.priority ? ["Priority", job.priority] : null,
      job.queue ? ["Queue", `position ${job.queue.position} in ${job.queue.lane} (1 starts next)`] : null,
      ["Created", when(job.created_at)],
      ["Started", when(job.started_at)],
      ["Finished", when(job.finished_at)],
      ["Model", `${job.model.id} v${job.model.version}${job.model.research_use_only ? " (research use only)" : ""}`],
      ["Stages", Object.entries(job.stage_seconds || {}).map(([s, t]) => `${s} ${t.toFixed(2)} s`).join(" · ") || "—"],
    ].filter(Boolean)),
  ];
  if (job.notes && job.notes.length) header.push(el("ul", { className: "notes" }, job.notes.map((n) => el("li", { text: n }))));
  if (job.error) {
    header.push(el("div", { className: "problem", role: "alert" }, el("strong", { text: `Failed: ${job.error.code}` }),
      el("span", { text: ` (${job.error.kind}) — ${job.error.detail}` })));
  }
  // Fields other services add to the job (quality gates, queue position, exports, …), shown as they come.
  if (job.quality) header.push(qualityView(job.quality));
  const extra = Object.entries(job).filter(([k]) => !KNOWN_FIELDS.has(k) && k !== "quality");
  if (extra.length) {
    header.push(keyValueTable(extra.map(([k, v]) => [k, typeof v === "object" && v !== null ? jsonBlock(v, "show") : v]), "More"));
  }
  const body = [];
  if (job.status === "succeeded" && job.result) {
    // A view that does not understand the result (a task's schema moved on) falls back to the plain one.
    try {
      body.push((RESULT_VIEWS[job.task] || genericView)(job, context));
    } catch (error) {
      console.warn(`no ${job.task} view for this result (${error.message}); showing it as JSON`);
      body.push(genericView(job));
    }
    body.push(jsonBlock(job.result, "Result as JSON"));
  } else if (!FINISHED.has(job.status)) {
    body.push(el("p", { className: "muted", text: `Waiting for the job to finish (${job.status})…` }));
  }
  body.push(artifactList(job, context));
  view.replaceChildren(...header, ...body);
  view.dataset.jobId = job.id;
  view.dataset.status = job.status;  // set last: tests and assistive tools read a whole view
}

function qualityView(quality) {
  const rows = Object.entries(quality).map(([k, v]) => [k, typeof v === "object" && v !== null ? jsonBlock(v, "show") : v]);
  return el("section", { className: "quality" }, keyValueTable(rows, "Input quality"));
}

function artifactList(job, context) {
  if (!job.artifacts.length) return el("p", { className: "muted", text: "No artifacts." });
  const rows = job.artifacts.map((a) => el("li", {}, el("button", {
    type: "button", className: "link", "aria-label": `Download ${a.name}`,
    onclick: async (event) => {
      try {
        const link = el("a", { href: await context.blobs.url(a.url), download: a.name });
        document.body.append(link);
        link.click();
        link.remove();
      } catch (error) {
        showProblem($("notice"), error);
      }
      event.preventDefault();
    },
  }, a.name), el("span", { className: "muted", text: ` ${a.media_type}, ${(a.size_bytes / 1024).toFixed(1)} KiB` })));
  return el("details", { className: "artifacts", open: job.artifacts.length <= 12 },
    el("summary", { text: `Artifacts (${job.artifacts.length}) — every one downloadable` }), el("ul", {}, rows));
}

function artifactUrl(job, name) {
  const found = job.artifacts.find((a) => a.name === name);
  return found ? found.url : null;
}

function figure(job, context, name, caption, id) {
  const url = artifactUrl(job, name);
  if (!url) return null;
  const image = el("img", { alt: caption, id, className: "result-image" });
  context.blobs.url(url).then((u) => { image.src = u; }, (error) => showProblem($("notice"), error));
  return el("figure", {}, image, el("figcaption", { text: caption }));
}

// --- per-task views --------------------------------------------------------------------------------------

function genericView(job) {
  return el("section", {}, el("h3", { text: "Result" }), el("pre", { text: JSON.stringify(job.result, null, 2) }));
}

function drView(job, context) {
  const r = job.result;
  if (r.grade === null || r.grade === undefined) {  // ungradable: say why, never a grade
    return el("section", {}, figure(job, context, "retina.jpg", "The photograph (retina.jpg)", "retina-image"),
      el("p", { className: "headline", text: "Ungradable" }), jsonBlock(r, "Why"));
  }
  const probabilities = el("table", { className: "probabilities" },
    el("caption", { text: "Probability per ICDR grade" }),
    el("tbody", {}, r.probabilities.map((p, grade) => el("tr", { className: grade === r.grade ? "chosen" : "" },
      el("th", { scope: "row", text: `Grade ${grade}` }),
      el("td", {}, el("meter", { min: 0, max: 1, value: p, "aria-label": `Grade ${grade} probability` })),
      el("td", { text: pct(p) })))));
  const saliency = job.artifacts.filter((a) => /saliency|heatmap|explain/i.test(a.name) && a.media_type.startsWith("image/"));
  return el("section", { className: "result-grid" },
    figure(job, context, "retina.jpg", "The region graded (retina.jpg)", "retina-image"),
    ...saliency.map((a) => figure(job, context, a.name, `Saliency (${a.name})`)),
    el("div", {},
      el("p", { className: "headline" }, `Grade ${r.grade}: ${r.grade_name} `,
        el("span", { className: `badge ${r.referable ? "bad" : "ok"}`, id: "referable", text: r.referable ? "referable" : "not referable" })),
      keyValueTable([
        ["Referable probability", pct(r.referable_probability)],
        ["Operating point", `${r.operating_point.name} ≥ ${r.operating_point.threshold}${r.operating_point.overridden ? " (caller's)" : ""}`],
        ["Sensitivity / specificity", `${fmt(r.operating_point.sensitivity)} / ${fmt(r.operating_point.specificity)}`],
      ]),
      probabilities));
}

function thyroidView(job, context) {
  const r = job.result;
  const n = r.nodule;
  return el("section", { className: "result-grid" },
    figure(job, context, "overlay.png", "Nodule outline (overlay.png)", "thyroid-overlay"),
    el("div", {},
      el("p", { className: "headline" }, `${r.risk_band} `, el("span", { className: "muted", text: `malignancy probability ${pct(r.malignancy_probability)}` })),
      el("p", { text: r.recommendation.text }),
      keyValueTable([
        ["TI-RADS band", r.risk_band],
        ["Maximum diameter", n.max_diameter_mm === null ? "unknown (no pixel spacing)" : `${n.max_diameter_mm.toFixed(1)} mm`],
        ["Taller than wide", n.taller_than_wide ? "yes" : "no"],
        ["Outlined by", n.source],
        ["Box (px)", n.bbox_px.join(", ")],
        ["Pixel spacing", r.pixel_spacing_mm ? `${r.pixel_spacing_mm.map((v) => v.toFixed(3)).join(" × ")} mm (${r.spacing_source})` : "none"],
        ["Recommendation", r.recommendation.action],
      ]),
      detectionTable(r.detections || [])));
}

// A box-detection localiser's boxes (the nodule scored is the first); sizes in mm when the spacing is known.
function detectionTable(detections) {
  if (!detections.length) return null;
  const size = (d) => d.width_mm === null ? "unknown" : `${d.width_mm.toFixed(1)} × ${d.height_mm.toFixed(1)} mm`;
  return el("table", { className: "detections" }, el("caption", { text: "Detected boxes (best first)" }),
    el("thead", {}, el("tr", {}, ["", "Label", "Score", "Width × height", "Box (px)"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, detections.map((d) => el("tr", {},
      el("th", { scope: "row", text: String(d.id) }), el("td", { text: d.label }), el("td", { text: d.score.toFixed(2) }),
      el("td", { text: size(d) }), el("td", { text: d.bbox_px.map((v) => v.toFixed(0)).join(", ") })))));
}

function covidView(job, context) {
  const r = job.result;
  const zone = (side) => ["upper", "middle", "lower"].map((z) => `${z} ${fmt(r.involvement_by_zone[side][z], 1)} %`).join(" · ");
  const table = el("table", { className: "volumes" }, el("caption", { text: "Volumes (ml) and involvement (% of lung)" }),
    el("thead", {}, el("tr", {}, ["", "Left", "Right", "Total"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {},
      el("tr", {}, el("th", { scope: "row", text: "Lung volume" }), el("td", { text: fmt(r.lung_volume_ml.left, 1) }),
        el("td", { text: fmt(r.lung_volume_ml.right, 1) }), el("td", { text: fmt(r.lung_volume_ml.left + r.lung_volume_ml.right, 1) })),
      el("tr", {}, el("th", { scope: "row", text: "Lesion: ground-glass" }), el("td"), el("td"), el("td", { text: fmt(r.lesion_volume_ml.ggo, 1) })),
      el("tr", {}, el("th", { scope: "row", text: "Lesion: consolidation" }), el("td"), el("td"), el("td", { text: fmt(r.lesion_volume_ml.consolidation, 1) })),
      el("tr", {}, el("th", { scope: "row", text: "Lesion: total" }), el("td"), el("td"), el("td", { text: fmt(r.lesion_volume_ml.total, 1) })),
      el("tr", {}, el("th", { scope: "row", text: "Involvement %" }), el("td", { text: fmt(r.involvement_percent.left, 1) }),
        el("td", { text: fmt(r.involvement_percent.right, 1) }), el("td", { text: fmt(r.involvement_percent.total, 1) })),
      el("tr", {}, el("th", { scope: "row", text: "By zone, left" }), el("td", { colspan: 3, text: zone("left") })),
      el("tr", {}, el("th", { scope: "row", text: "By zone, right" }), el("td", { colspan: 3, text: zone("right") }))));
  const definitions = el("details", {}, el("summary", { text: "What each figure is" }),
    el("dl", {}, Object.entries(r.definitions).map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])));
  const scroller = new SliceScroller(job, context, {
    // The middle slice with lesion: the apex and base ones often hold a speck.
    start: r.affected_slices.length ? r.affected_slices[Math.floor(r.affected_slices.length / 2)] : Math.floor(r.n_slices / 2),
    masks: new Map(r.affected_slices.map((i) => [i, artifactUrl(job, `slice-${String(i).padStart(4, "0")}-mask.png`)])
      .filter(([, url]) => url)),
  });
  const jumps = el("div", { className: "jumps", role: "group", "aria-label": "Slices with lesion" },
    r.affected_slices.slice(0, 60).map((i) => el("button", { type: "button", onclick: () => scroller.show(i), text: String(i) })));
  return el("section", {}, el("div", { className: "result-grid" }, scroller.element,
    el("div", {}, table, definitions, el("h4", { text: "Slices with lesion" }), jumps)));
}

function noduleView(job, context) {
  const r = job.result;
  const keyImage = el("img", { id: "key-slice-overlay", className: "result-image", alt: "Key-slice overlay of the chosen nodule", hidden: true });
  const keyCaption = el("figcaption", { text: "Pick a nodule to see the model's key-slice overlay" });
  const scroller = new SliceScroller(job, context, {
    start: r.nodules.length ? r.nodules[0].key_slice.index : Math.floor(r.n_slices / 2),
    nodules: r.nodules, spacing: r.spacing_mm,
  });
  const jump = (nodule) => {
    scroller.show(nodule.key_slice.index);
    const url = artifactUrl(job, `nodule-${nodule.id}.png`);
    if (url) context.blobs.url(url).then((u) => { keyImage.src = u; keyImage.hidden = false; }, (error) => showProblem($("notice"), error));
    keyCaption.textContent = `nodule-${nodule.id}.png: nodule ${nodule.id} on its key slice ${nodule.key_slice.index}`;
  };
  const rows = r.nodules.map((n) => el("tr", {},
    el("td", {}, el("button", { type: "button", className: "nodule-jump", dataset: { nodule: n.id, slice: n.key_slice.index },
      onclick: () => jump(n), text: `Nodule ${n.id}` })),
    el("td", { text: `${n.diameter_mm.toFixed(1)} mm` }), el("td", { text: n.score.toFixed(2) }),
    el("td", { text: String(n.key_slice.index) }), el("td", { text: n.center_mm.map((v) => v.toFixed(1)).join(", ") })));
  const table = r.nodules.length
    ? el("table", { className: "nodules" }, el("caption", { text: `Nodules at or above ${r.operating_point.threshold}` }),
      el("thead", {}, el("tr", {}, ["", "Diameter", "Score", "Key slice", "Centre (LPS mm)"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows))
    : el("p", { text: "No nodule at or above the operating point." });
  if (r.nodules.length) jump(r.nodules[0]);
  return el("section", {}, el("div", { className: "result-grid" }, scroller.element,
    el("div", {}, table, r.warnings.length ? el("ul", { className: "notes" }, r.warnings.map((w) => el("li", { text: w }))) : null,
      el("figure", {}, keyImage, keyCaption))));
}

const RESULT_VIEWS = {
  "dr-grading": drView,
  "thyroid-malignancy": thyroidView,
  "covid-lesion-segmentation": covidView,
  "lung-nodule-detection": noduleView,
};

// --- the CT slice scroller -------------------------------------------------------------------------------

const MASK_COLOURS = { 128: [255, 200, 0], 255: [230, 30, 30] };  // ground-glass amber, consolidation red

// Display slices slice-<index>.png under a canvas, with a task's lesion masks (opacity control) and nodule
// markers drawn over them. Keys: arrows, Page Up/Down (10 slices), Home/End.
class SliceScroller {
  constructor(job, context, { start = 0, masks = new Map(), nodules = [], spacing = null }) {
    this.job = job;
    this.context = context;
    this.count = job.result.n_slices;
    this.masks = masks;
    this.nodules = nodules;
    this.spacing = spacing;
    this.index = -1;
    this.colouredMasks = new Map();
    this.canvas = el("canvas", { id: "ct-canvas", width: 512, height: 512, tabindex: 0, role: "img",
      "aria-label": "CT slice; arrow keys change the slice" });
    this.range = el("input", { type: "range", id: "slice-range", min: 0, max: this.count - 1, value: start });
    this.label = el("output", { id: "slice-label", for: "slice-range" });
    this.opacity = el("input", { type: "range", id: "mask-opacity", min: 0, max: 100, value: 50 });
    this.markers = el("input", { type: "checkbox", id: "show-markers", checked: true });
    const controls = [el("label", { for: "slice-range", text: "Slice" }), this.range, this.label];
    if (masks.size) controls.push(el("label", { for: "mask-opacity", text: "Mask opacity" }), this.opacity);
    if (nodules.length) controls.push(el("label", { className: "inline" }, this.markers, " Nodule markers"));
    this.element = el("div", { className: "scroller" }, this.canvas, el("div", { className: "controls" }, controls));
    this.range.addEventListener("input", () => this.show(Number(this.range.value)));
    this.opacity.addEventListener("input", () => this.draw());
    this.markers.addEventListener("change", () => this.draw());
    this.canvas.addEventListener("keydown", (event) => this.key(event));
    this.show(start);
  }

  key(event) {
    const steps = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
    let target = null;
    if (event.key in steps) target = this.index + steps[event.key];
    else if (event.key === "Home") target = 0;
    else if (event.key === "End") target = this.count - 1;
    if (target === null) return;
    event.preventDefault();
    this.show(Math.max(0, Math.min(this.count - 1, target)));
  }

  sliceUrl(index) {
    return artifactUrl(this.job, `slice-${String(index).padStart(4, "0")}.png`);
  }

  async show(index) {
    this.index = index;
    this.range.value = index;
    this.label.textContent = `${index} / ${this.count - 1}`;
    this.canvas.dataset.slice = index;
    this.canvas.dataset.drawn = "false";
    await this.draw();
  }

  async colouredMask(index) {
    if (!this.colouredMasks.has(index)) {
      this.colouredMasks.set(index, this.context.blobs.image(this.masks.get(index)).then((image) => {
        const canvas = el("canvas", { width: image.naturalWidth, height: image.naturalHeight });
        const c = canvas.getContext("2d");
        c.drawImage(image, 0, 0);
        const pixels = c.getImageData(0, 0, canvas.width, canvas.height);
        const d = pixels.data;
        for (let i = 0; i < d.length; i += 4) {
          const colour = MASK_COLOURS[d[i]];
          if (colour) [d[i], d[i + 1], d[i + 2], d[i + 3]] = [...colour, 255];
          else d[i + 3] = 0;
        }
        c.putImageData(pixels, 0, 0);
        return canvas;
      }));
    }
    return this.colouredMasks.get(index);
  }

  // One slice is fetched and drawn at a time; slices passed over meanwhile are skipped, so holding a key down
  // through a long series costs a few requests, not one per slice (the API key has a rate limit).
  async draw() {
    if (this.drawing) {
      this.redraw = true;
      return;
    }
    this.drawing = true;
    try {
      do {
        this.redraw = false;
        await this.drawSlice(this.index);
      } while (this.redraw);
    } finally {
      this.drawing = false;
    }
  }

  async drawSlice(index) {
    const url = this.sliceUrl(index);
    const c = this.canvas.getContext("2d");
    if (!url) {
      c.clearRect(0, 0, this.canvas.width, this.canvas.height);
      c.fillStyle = "#ccc";
      c.fillText(`No display image for slice ${index}`, 10, 20);
      return;
    }
    try {
      const image = await this.context.blobs.image(url);
      const mask = this.masks.has(index) ? await this.colouredMask(index) : null;
      if (index !== this.index) return;  // scrolled on meanwhile: draw() goes on to the slice now wanted
      if (this.canvas.width !== image.naturalWidth || this.canvas.height !== image.naturalHeight) {
        this.canvas.width = image.naturalWidth;
        this.canvas.height = image.naturalHeight;
      }
      c.globalAlpha = 1;
      c.drawImage(image, 0, 0);
      if (mask) {
        c.globalAlpha = Number(this.opacity.value) / 100;
        c.drawImage(mask, 0, 0, image.naturalWidth, image.naturalHeight);
        c.globalAlpha = 1;
      }
      if (this.markers.checked) this.drawNodules(c, index);
      this.canvas.dataset.mask = mask ? "shown" : "none";
      this.canvas.dataset.drawn = "true";
      this.canvas.dataset.naturalWidth = image.naturalWidth;
      for (const near of [index + 1, index - 1]) {  // the neighbours are likely wanted next
        const nearUrl = near >= 0 && near < this.count ? this.sliceUrl(near) : null;
        if (nearUrl) this.context.blobs.url(nearUrl).catch(() => {});
      }
    } catch (error) {
      showProblem($("notice"), error);
    }
  }

  drawNodules(c, index) {
    const [columnMm, rowMm, sliceMm] = this.spacing || [1, 1, 1];
    const line = Math.max(1.5, this.canvas.width / 256);
    for (const n of this.nodules) {
      const reach = n.diameter_mm / 2 / sliceMm;  // slices the nodule spans either side of its centre
      const [column, row, slice] = n.center_voxel;
      if (Math.abs(index - slice) > reach + 0.5) continue;
      const onKey = index === n.key_slice.index;
      c.strokeStyle = onKey ? "#ff4020" : "#ffb020";
      c.lineWidth = line;
      c.setLineDash(onKey ? [] : [4, 3]);
      c.beginPath();
      c.ellipse(column + 0.5, row + 0.5, n.diameter_mm / 2 / columnMm + 4, n.diameter_mm / 2 / rowMm + 4, 0, 0, 2 * Math.PI);
      c.stroke();
      c.setLineDash([]);
      c.font = `${Math.round(10 * line)}px sans-serif`;
      c.fillStyle = "#ffdc40";
      c.fillText(String(n.id), column + n.diameter_mm / 2 / columnMm + 6, row);
    }
  }
}

// --- models and their cards ------------------------------------------------------------------------------

async function loadModels() {
  const list = $("model-list");
  try {
    models = (await getJson("/v1/models")).data;
    list.replaceChildren(...models.map((m) => el("li", {}, el("button", {
      type: "button", className: "job-row", dataset: { modelId: m.id }, onclick: () => openCard(m),
    }, el("span", { className: "task", text: m.task }), " ", el("span", { text: `${m.id} v${m.version}` })))));
    showProblem($("models-problem"), null);
  } catch (error) {
    showProblem($("models-problem"), error);
  }
}

async function openCard(model) {
  const view = $("model-view");
  const metrics = Object.entries(model.metrics).map(([k, v]) => [k, fmt(v, 3)]);
  const card = el("article", { className: "card", id: "model-card" });
  view.replaceChildren(el("h2", { text: model.title }),
    keyValueTable([["Model", `${model.id} v${model.version}`], ["Task", model.task],
      ["Research use only", model.research_use_only ? "yes" : "no"], ["Intended use", model.intended_use], ...metrics]),
    card);
  try {
    card.append(Markdown.render(await (await api(model.card_url)).text()));
  } catch (error) {
    const problem = el("div", { className: "problem", role: "alert" });
    card.append(problem);
    showProblem(problem, error);
  }
}

// --- start -----------------------------------------------------------------------------------------------

function refreshAll() {
  showProblem($("notice"), null);
  loadTasks();
  loadJobs();
  refreshReadiness();
  if (!$("models-section").hidden) loadModels();
}

document.addEventListener("DOMContentLoaded", () => {
  initKeyForm();
  initTabs();
  initSubmit();
  initList();
  refreshAll();
  setInterval(refreshReadiness, 15000);
});
