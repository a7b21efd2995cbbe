// Lesion Harvester reviewer: a radiologist checks a harvest's lesion proposals, draws what it
// missed and marks volumes fully annotated. Plain ES2020, no build step; the server's HTTP API is
// docs/review-api.md. Sections: HTTP, state, work list, volume, slice images, drawing, mouse,
// writes and undo, keys, start-up.
"use strict";

const $ = (selector) => document.querySelector(selector);

// ---------------------------------------------------------------- HTTP

// The start-up URL carries ?token=. It moves to sessionStorage and out of the address bar (so it
// is not in the history or in screenshots); a reload still finds it. Every request sends it as a
// header, which works even where the server's cookie is blocked. Never log it.
const TOKEN = takeToken();

function takeToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem("lh-token", fromUrl);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return fromUrl || sessionStorage.getItem("lh-token") || "";
}

class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.body = body ?? {}; // the answer's other fields (a 409 names the verdict it met)
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${TOKEN}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) throw await apiError(response);
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

async function apiError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line says enough
  }
  let detail = `${response.status} ${response.statusText}`;
  if (body && body.detail !== undefined) {
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  }
  return new ApiError(response.status, detail, body);
}

// ---------------------------------------------------------------- state

const state = {
  session: null, // GET /api/session
  worklist: null, // GET /api/worklist
  volume: null, // GET /api/volumes/{key}
  sorted: [], // the volume's proposals, best first (the order of #proposal-list, N and P)
  z: 0,
  level: 40,
  width: 400,
  minScore: 0, // proposals the harvest set aside show from this score up (the #min-score slider)
  selected: null, // {kind: "proposal" | "drawn", ref}
  hovered: null, // the target under the mouse, whose label is always drawn
  tool: null, // null | "adjust" | "recist" | "box"
  draft: null, // the tool's work in progress, on slice draft.z
  view: { zoom: 1, panX: 0, panY: 0 }, // pan in canvas pixels
  bitmap: null, // the slice image on screen
  undo: [], // this session's writes: {target: {volume, kind, ref}, before, after} (verdicts)
};

function el(tag, props = {}, ...children) {
  const { dataset = {}, ...rest } = props;
  const node = Object.assign(document.createElement(tag), rest);
  Object.assign(node.dataset, dataset);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function setStatus(text, kind = "info") {
  const status = $("#status");
  status.textContent = text;
  status.className = kind;
}

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
const round1 = (x) => Math.round(x * 10) / 10;
const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(2));
// Slices are numbered from 1 on screen, as a PACS does; the API's z_index is 0-based.
const sliceNo = (z) => z + 1;

// The harvest's own statuses, in words that do not read like a reviewer's verdict.
const STATUS_TEXT = {
  harvested: "harvested", hard_negative: "hard negative", rejected: "below threshold", candidate: "not mined",
  recist: "on a mark", marked_piece: "part of a marked lesion", fa_lesion: "on a label", fa_negative: "no label",
};
const statusText = (status) => STATUS_TEXT[status] ?? status;
const VERDICT_TEXT = { accept: "✓ accepted", adjust: "✓ adjusted", reject: "✗ rejected", clear: "cleared" };
const verdictText = (v) => (!v ? "no verdict" : `${VERDICT_TEXT[v.action] ?? v.action} by ${v.reviewer}`);

// One score, the one the harvest ranked by: s = s_g · s_c^w (w: the round's fusion exponent).
// A proposal the LPC did not score has only its objectness s_g.
const scoreOf = (p) => p.s ?? p.s_g;
const scoreText = (p) => (p.s === null ? `s_g ${fmt(p.s_g)}, not scored` : `score ${fmt(p.s)}`);
const roundInfo = (r) => state.session.rounds.find((info) => info.round === r) ?? {};

function scoreFormula(p) {
  if (p.s === null) return `not scored by the LPC: objectness s_g ${fmt(p.s_g)}`;
  const w = roundInfo(p.round).fusion_exponent;
  return `s = s_g · s_c^w = ${fmt(p.s_g)} · ${fmt(p.s_c)}^${w ?? "?"} = ${fmt(p.s)}`;
}

// ---------------------------------------------------------------- work list

async function loadWorklist() {
  state.worklist = await apiJson(`/api/worklist?order=${encodeURIComponent($("#order").value)}`);
  renderWorklist();
}

function renderWorklist() {
  const { volumes, lesions, hard_negatives: negatives, progress } = state.worklist;
  $("#volume-list").replaceChildren(...volumes.map(volumeRow));
  $("#lesion-list").replaceChildren(...lesions.map(lesionRow));
  $("#negative-list").replaceChildren(...negatives.map(lesionRow));
  $("#lesion-count").textContent = String(lesions.length);
  $("#negative-count").textContent = String(negatives.length);
  renderProgress(progress);
  markCurrentRows();
}

function volumeRow(v) {
  return el(
    "li",
    { className: "wl-volume", dataset: { key: v.key } },
    el("span", { className: "key" }, v.key),
    el("span", { className: "meta" }, `${v.slices} slices · ${v.marks} marks · ${v.proposals} proposals`),
    v.selected
      ? el("span", { className: "meta selected", title: v.selected.reason },
        `selected #${v.selected.rank} (${v.selected.strategy}): ${v.selected.reason}`)
      : null,
    v.fully_annotated ? el("span", { className: "done" }, `✓ ${v.reviewed_by ?? ""}`) : null,
  );
}

function lesionRow(lesion) {
  const objectness = lesion.status === "hard_negative" && lesion.s !== null ? ` · s_g ${fmt(lesion.s_g)}` : "";
  return el(
    "li",
    { className: "wl-lesion", dataset: { volume: lesion.volume, ref: lesion.ref } },
    el("span", { className: "key" }, `${lesion.volume} · ${lesion.ref}`),
    el("span", { className: "meta", title: scoreFormula(lesion) },
      `round ${lesion.round} · slice ${sliceNo(lesion.key_z)} · ${scoreText(lesion)}${objectness}`),
    el("span", { className: `verdict ${lesion.verdict?.action ?? "none"}` }, verdictText(lesion.verdict)),
  );
}

const PROGRESS_COLUMNS = [
  ["accept", "acc"], ["reject", "rej"], ["adjust", "adj"], ["draw", "draw"],
  ["delete", "del"], ["fully_annotated", "full"], ["clear", "clr"], ["total", "total"],
];

function renderProgress(progress) {
  const names = Object.keys(progress);
  const head = el("tr", {}, el("th", {}, "reviewer"),
    ...PROGRESS_COLUMNS.map(([action, short]) => el("th", { title: action }, short)));
  const rows = names.map((name) => el("tr", {}, el("td", {}, name),
    ...PROGRESS_COLUMNS.map(([action]) => el("td", {}, String(progress[name][action] ?? 0)))));
  const body = names.length ? el("table", {}, head, ...rows) : el("p", { className: "muted" }, "no verdicts yet");
  $("#progress").replaceChildren(el("h3", {}, "Progress"), body);
}

// Highlights the open volume's rows and the selected lesion's row.
function markCurrentRows() {
  const key = state.volume?.key;
  for (const row of document.querySelectorAll(".wl-volume")) row.classList.toggle("current", row.dataset.key === key);
  for (const row of document.querySelectorAll(".wl-lesion")) {
    const selected = row.dataset.volume === key && isSelected({ kind: "proposal", ref: row.dataset.ref });
    row.classList.toggle("current", selected);
  }
}

function showTab(name) {
  for (const tab of ["volumes", "lesions"]) {
    $(`#tab-${tab}`).classList.toggle("active", tab === name);
    $(`#panel-${tab}`).hidden = tab !== name;
  }
}

// ---------------------------------------------------------------- volume

const fetchVolume = (key) => apiJson(`/api/volumes/${encodeURIComponent(key)}`);

// Opens a volume at its first mark's slice (else the middle one), or at a proposal's key slice.
async function openVolume(key, proposalRef = null) {
  try {
    const volume = await fetchVolume(key);
    cancelTool();
    dismissQuestion();
    Object.assign(state, { volume, bitmap: null, selected: null, hovered: null, view: { zoom: 1, panX: 0, panY: 0 } });
    state.z = volume.marks.length ? volume.marks[0].z_index : Math.floor(volume.shape_zyx[0] / 2);
    const slider = $("#slice-slider");
    slider.max = volume.shape_zyx[0] - 1;
    slider.disabled = false;
    renderVolumePanel();
    if (proposalRef) select({ kind: "proposal", ref: proposalRef });
    else setSlice(state.z);
    setStatus(`opened ${key}`);
  } catch (err) {
    setStatus(`cannot open ${key}: ${err.message}`, "error");
  }
}

// After a write: the same volume, slice and selection with the server's current verdicts.
async function reloadVolume() {
  if (!state.volume) return;
  state.volume = await fetchVolume(state.volume.key);
  if (state.selected && !targetExists(state.selected)) state.selected = null;
  renderVolumePanel();
  render();
}

function renderVolumePanel() {
  const v = state.volume;
  state.sorted = v.proposals.filter((p) => passesFilter(p) || isSelected({ kind: "proposal", ref: p.ref })).sort(byScore);
  const fully = v.fully_annotated.verdict?.action === "fully_annotated" ? v.fully_annotated.verdict : null;
  const title = el(
    "h2",
    { id: "volume-title" },
    el("span", { className: "key" }, v.key),
    el("span", { className: "badge" }, v.role),
    v.closed
      ? el("span", { className: "badge holdout", title: "its labels measure the harvest" }, `${v.holdout ? "holdout" : "validation"}: read only`)
      : null,
    fully ? el("span", { className: "badge done" }, `✓ fully annotated by ${fully.reviewer}`) : null,
  );
  $("#volume-title").replaceWith(title);
  $("#btn-fully").classList.toggle("done", Boolean(fully));
  $("#proposal-list").replaceChildren(...state.sorted.map(proposalItem));
  const hidden = v.proposals.length - state.sorted.length;
  $("#proposal-count").textContent = hidden
    ? `${state.sorted.length} of ${v.proposals.length} shown; hidden: ${hidden} the harvest set aside, score below ${fmt(state.minScore)}`
    : `all ${v.proposals.length} shown`;
  document.querySelector("#inspector .actions").classList.toggle("read-only", v.closed);
  $("#drawn-list").replaceChildren(...liveDrawn().map(drawnItem));
  renderSelection();
}

// What the harvest set aside (below its threshold, and no hard negative) shows only from the score
// filter up; its picks (harvested lesions, hard negatives) and whatever has a verdict always show.
const ALWAYS_SHOWN = new Set(["harvested", "hard_negative"]);
const passesFilter = (p) => ALWAYS_SHOWN.has(p.status) || Boolean(p.verdict) || scoreOf(p) >= state.minScore;

function setMinScore(value) {
  state.minScore = Number(value);
  $("#min-score").value = state.minScore;
  $("#min-score-value").textContent = fmt(state.minScore);
  if (!state.volume) return;
  renderVolumePanel();
  render();
}

// Highest s first; unclassified proposals (s null) after the classified ones, by s_g.
function byScore(a, b) {
  return (b.s ?? -1) - (a.s ?? -1) || (b.s_g ?? -1) - (a.s_g ?? -1);
}

function proposalItem(p) {
  return el(
    "li",
    { className: "proposal-item", dataset: { ref: p.ref } },
    el("span", { className: "ref" }, p.ref),
    el("span", { className: `status ${p.status}`, title: `the harvest's status (round ${p.round})` }, statusText(p.status)),
    el("span", { className: "meta", title: scoreFormula(p) }, `${scoreText(p)} · slice ${sliceNo(p.key_z)}`),
    el("span", { className: `verdict ${p.verdict?.action ?? "none"}` }, verdictText(p.verdict)),
  );
}

function drawnItem(d) {
  const kind = d.verdict.recist ? "RECIST" : "box";
  return el(
    "li",
    { className: "drawn-item", dataset: { ref: d.ref } },
    el("span", { className: "ref" }, d.ref),
    el("span", { className: "meta" }, `${kind} on slice ${sliceNo(d.verdict.z_index)} by ${d.verdict.reviewer}`),
  );
}

const proposalByRef = (ref) => state.volume.proposals.find((p) => p.ref === ref);
// Drawn lesions that still stand: a deleted one keeps its name but has no shape.
const liveDrawn = () => state.volume.drawn.filter((d) => d.verdict && d.verdict.action === "draw");
const drawnByRef = (ref) => liveDrawn().find((d) => d.ref === ref);
const isSelected = (target) => state.selected?.kind === target.kind && state.selected?.ref === target.ref;
const targetExists = (t) => Boolean(t.kind === "proposal" ? proposalByRef(t.ref) : drawnByRef(t.ref));

// The proposal's box on slice z: the reviewer's own where it was adjusted there, else the harvest's.
function proposalBoxOn(p, z) {
  const v = p.verdict;
  if (v?.action === "adjust" && v.z_index === z) return v.box_xyxy_px;
  return p.slices.find((s) => s.z_index === z)?.box_xyxy_px ?? null;
}

// Selecting from a list jumps to the lesion's slice; clicking it on the canvas does not.
function select(target, { jump = true } = {}) {
  if (!targetExists(target)) return;
  state.selected = target;
  if (jump) {
    const z = target.kind === "proposal" ? proposalByRef(target.ref).key_z : drawnByRef(target.ref).verdict.z_index;
    setSlice(z);
  }
  renderSelection();
  render();
}

function renderSelection() {
  for (const item of document.querySelectorAll(".proposal-item, .drawn-item")) {
    const kind = item.classList.contains("proposal-item") ? "proposal" : "drawn";
    item.classList.toggle("selected", isSelected({ kind, ref: item.dataset.ref }));
  }
  document.querySelector(".proposal-item.selected, .drawn-item.selected")?.scrollIntoView({ block: "nearest" });
  markCurrentRows();
  $("#selection").replaceChildren(...selectionText());
}

function selectionText() {
  const sel = state.selected;
  if (!sel) return ["Nothing selected: click a box, or press N / P"];
  if (sel.kind === "proposal") {
    const p = proposalByRef(sel.ref);
    const zs = p.slices.map((s) => s.z_index);
    const threshold = roundInfo(p.round).threshold;
    return [el("b", {}, `proposal ${p.ref}`), ` · round ${p.round} · ${statusText(p.status)}`, el("br"),
      scoreFormula(p), el("br"),
      el("small", { className: "muted" }, "s_g: the LPG's objectness, s_c: the LPC's lesion probability, w: the " +
        `round's fusion exponent; threshold ${threshold === null || threshold === undefined ? "none" : fmt(threshold)}`),
      el("br"), `key slice ${sliceNo(p.key_z)} · on slices ${sliceNo(Math.min(...zs))}–${sliceNo(Math.max(...zs))}`,
      el("br"), verdictText(p.verdict)];
  }
  const v = drawnByRef(sel.ref).verdict;
  return [el("b", {}, `drawn ${sel.ref}`), ` on slice ${sliceNo(v.z_index)}`, el("br"),
    v.recist ? recistText(v.recist) : "box", el("br"), `by ${v.reviewer}`];
}

// RECIST diameters in mm (axial pixels are square in DeepLesion: spacing x).
function recistText(recist) {
  const mm = state.volume.spacing_zyx_mm[2];
  const length = ([x1, y1, x2, y2]) => Math.hypot(x2 - x1, y2 - y1) * mm;
  return `RECIST ${length(recist.long_axis_px).toFixed(1)} × ${length(recist.short_axis_px).toFixed(1)} mm`;
}

function stepProposal(delta) {
  const list = state.sorted;
  if (!state.volume || !list.length) return;
  const i = state.selected?.kind === "proposal" ? list.findIndex((p) => p.ref === state.selected.ref) : -1;
  const j = i < 0 ? (delta > 0 ? 0 : list.length - 1) : (i + delta + list.length) % list.length;
  select({ kind: "proposal", ref: list[j].ref });
}

// ---------------------------------------------------------------- slice images

const CACHE_SIZE = 48;
const bitmaps = new Map(); // "key/z/level/width" -> Promise<ImageBitmap>, least recently used first

function sliceBitmap(key, z, level, width) {
  const id = `${key}/${z}/${level}/${width}`;
  let promise = bitmaps.get(id);
  if (promise) {
    bitmaps.delete(id); // set again below, as the most recently used
  } else {
    const path = `/api/volumes/${encodeURIComponent(key)}/slices/${z}.png?level=${level}&width=${width}`;
    promise = api(path).then((r) => r.blob()).then((blob) => createImageBitmap(blob));
    promise.catch(() => bitmaps.delete(id)); // a failed load is tried again next time
  }
  bitmaps.set(id, promise);
  if (bitmaps.size > CACHE_SIZE) bitmaps.delete(bitmaps.keys().next().value);
  return promise;
}

function setSlice(z) {
  if (!state.volume) return;
  state.z = clamp(Math.round(z), 0, state.volume.shape_zyx[0] - 1);
  $("#slice-slider").value = state.z;
  // A drawing belongs to one slice: moving away restarts it, and drops an adjustment.
  if (state.tool && state.draft.z !== state.z) {
    if (state.tool === "adjust") cancelTool();
    else state.draft = freshDraft(state.tool);
  }
  showSlice();
}

function setWindow(level, width) {
  state.level = Math.round(level);
  state.width = Math.max(1, Math.round(width));
  for (const button of document.querySelectorAll(".window-preset")) {
    const [l, w] = state.session.windows[button.dataset.name];
    button.classList.toggle("active", l === state.level && w === state.width);
  }
  showSlice();
}

function applyPreset(index) {
  const preset = Object.values(state.session.windows)[index];
  if (preset) setWindow(...preset);
}

let loading = false; // a slice for the screen is being fetched
let wantedAgain = false; // the wanted slice or window changed meanwhile

// Shows state.z at the current window. One request for the screen at a time: while the mouse
// scrolls or drags the window, the slices passed over are skipped, and a response that arrives for
// a slice no longer wanted is dropped. The neighbours are prefetched once it settles.
async function showSlice() {
  if (!state.volume) return;
  renderSliceInfo();
  render();
  if (loading) {
    wantedAgain = true;
    return;
  }
  loading = true;
  do {
    wantedAgain = false;
    const want = [state.volume.key, state.z, state.level, state.width];
    try {
      const bitmap = await sliceBitmap(...want);
      const still = [state.volume.key, state.z, state.level, state.width];
      if (still.every((x, i) => x === want[i])) {
        state.bitmap = bitmap;
        render();
      }
    } catch (err) {
      setStatus(`slice ${want[1]}: ${err.message}`, "error");
    }
  } while (wantedAgain);
  loading = false;
  prefetch();
}

function prefetch() {
  const n = state.volume.shape_zyx[0];
  for (const dz of [1, -1, 2, -2]) {
    const z = state.z + dz;
    if (z >= 0 && z < n) sliceBitmap(state.volume.key, z, state.level, state.width);
  }
}

function renderSliceInfo() {
  const v = state.volume;
  const mm = (x) => `${Number(x.toFixed(2))} mm`;
  $("#slice-info").textContent = `slice ${sliceNo(state.z)} / ${v.shape_zyx[0]} · ${mm(v.z_mm[state.z])} · interval ` +
    `${mm(v.spacing_zyx_mm[0])} · L ${state.level} W ${state.width}`;
}

// ---------------------------------------------------------------- drawing

const canvas = () => $("#slice-canvas");
const dpr = () => window.devicePixelRatio || 1;

const STYLE = {
  mark: { color: "#ffd400", width: 1.5 },
  candidate: { color: "#22d3ee", width: 1 },
  setAside: { color: "#94a3b8", width: 1, dash: [2, 3] }, // what the harvest set aside, shown by the score filter
  harvested: { color: "#4ade80", width: 2.5 },
  negative: { color: "#fb923c", width: 1.5, dash: [5, 4] },
  accepted: { color: "#4ade80", width: 2 },
  rejected: { color: "#f87171", width: 1.5 },
  drawn: { color: "#e879f9", width: 2 },
  draft: { color: "#f0abfc", width: 1.5, dash: [4, 3] },
  adjusting: { color: "#4ade80", width: 1.5, dash: [4, 3] },
};

// Image coordinates put the centre of pixel (x, y) at (x, y), as the inclusive corners of
// box_xyxy_px and the RECIST end points do; the image spans -0.5 .. size - 0.5. At zoom 1 it is
// fitted to the canvas; pan is in canvas pixels.
function viewTransform() {
  const c = canvas();
  const [, h, w] = state.volume.shape_zyx;
  const scale = Math.min(c.width / w, c.height / h) * state.view.zoom;
  return {
    scale,
    ox: (c.width - w * scale) / 2 + state.view.panX,
    oy: (c.height - h * scale) / 2 + state.view.panY,
  };
}

const toCanvas = (t, x, y) => [t.ox + (x + 0.5) * t.scale, t.oy + (y + 0.5) * t.scale];
const toImage = (t, cx, cy) => [(cx - t.ox) / t.scale - 0.5, (cy - t.oy) / t.scale - 0.5];

function fitCanvas() {
  const c = canvas();
  const box = c.parentElement.getBoundingClientRect();
  c.width = Math.round(box.width * dpr());
  c.height = Math.round(box.height * dpr());
  render();
}

function render() {
  const c = canvas();
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, c.width, c.height);
  if (!state.volume) return drawHint(ctx, "Pick a volume or a lesion in the work list");
  const t = viewTransform();
  if (state.bitmap) {
    const [, h, w] = state.volume.shape_zyx;
    const [x0, y0] = toCanvas(t, -0.5, -0.5);
    ctx.imageSmoothingEnabled = false; // show the CT's pixels, not a blur of them
    ctx.drawImage(state.bitmap, x0, y0, w * t.scale, h * t.scale);
  }
  const shapes = sliceShapes();
  const selected = shapes.filter((s) => s.target && isSelected(s.target));
  for (const shape of shapes) if (!selected.includes(shape)) drawShape(ctx, t, shape, false);
  for (const shape of selected) drawShape(ctx, t, shape, true);
  drawLabels(ctx, t, shapes);
  drawDraft(ctx, t);
}

function drawHint(ctx, text) {
  ctx.fillStyle = "#777";
  ctx.font = `${14 * dpr()}px system-ui, sans-serif`;
  ctx.textAlign = "center";
  ctx.fillText(text, canvas().width / 2, canvas().height / 2);
  ctx.textAlign = "start";
}

const shown = (name) => $(`#show-${name}`).checked;

// Everything drawn on the current slice: {box, axes, style, label, target}; target (absent for the
// dataset's marks) is what a click inside the box selects.
function sliceShapes() {
  const v = state.volume;
  const shapes = [];
  if (shown("marks")) {
    for (const m of v.marks.filter((mark) => mark.z_index === state.z)) {
      shapes.push({ box: m.box_xyxy_px, axes: [m.long_axis_px, m.short_axis_px], style: STYLE.mark, label: "mark" });
    }
  }
  for (const p of v.proposals) {
    const shape = proposalShape(p);
    if (shape) shapes.push(shape);
  }
  if (shown("drawn")) {
    for (const d of liveDrawn().filter((drawn) => drawn.verdict.z_index === state.z)) shapes.push(drawnShape(d));
  }
  return shapes;
}

// Harvested lesions and hard negatives have their own checkboxes; every other status is a
// "proposal". The selected one is always drawn.
function proposalVisible(p) {
  const name = { harvested: "harvested", hard_negative: "negatives" }[p.status] ?? "proposals";
  return (shown(name) && passesFilter(p)) || isSelected({ kind: "proposal", ref: p.ref });
}

function proposalShape(p) {
  const box = proposalBoxOn(p, state.z);
  if (!box || !proposalVisible(p)) return null;
  const action = p.verdict?.action;
  let style = { harvested: STYLE.harvested, hard_negative: STYLE.negative, candidate: STYLE.candidate }[p.status] ?? STYLE.setAside;
  let label = `${p.ref} ${statusText(p.status)} · ${scoreText(p)}`;
  if (action === "accept" || action === "adjust" || action === "reject") {
    style = action === "reject" ? STYLE.rejected : STYLE.accepted;
    label = `${p.ref} ${verdictText(p.verdict)}`;
  }
  // Labels of proposals with a verdict or of the harvest's picks win the place over plain candidates.
  const rank = action ? 1 : p.status === "harvested" ? 2 : 3;
  return { box, axes: [], style, label, rank, target: { kind: "proposal", ref: p.ref } };
}

function drawnShape(d) {
  const v = d.verdict;
  const axes = v.recist ? [v.recist.long_axis_px, v.recist.short_axis_px] : [];
  const box = v.box_xyxy_px ?? boundsOf(axes);
  return { box, axes, style: STYLE.drawn, label: `${d.ref} (${v.reviewer})`, rank: 1, target: { kind: "drawn", ref: d.ref } };
}

function boundsOf(axes) {
  const xs = axes.flatMap((a) => [a[0], a[2]]);
  const ys = axes.flatMap((a) => [a[1], a[3]]);
  return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
}

function stroke(ctx, style, extraWidth = 0) {
  ctx.strokeStyle = style.color;
  ctx.lineWidth = (style.width + extraWidth) * dpr();
  ctx.setLineDash((style.dash ?? []).map((d) => d * dpr()));
}

function strokeBox(ctx, t, box) {
  const [x1, y1] = toCanvas(t, box[0], box[1]);
  const [x2, y2] = toCanvas(t, box[2], box[3]);
  ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
}

function strokeLine(ctx, t, [x1, y1, x2, y2]) {
  ctx.beginPath();
  ctx.moveTo(...toCanvas(t, x1, y1));
  ctx.lineTo(...toCanvas(t, x2, y2));
  ctx.stroke();
}

function drawShape(ctx, t, shape, selected) {
  stroke(ctx, shape.style, selected ? 1.5 : 0);
  strokeBox(ctx, t, shape.box);
  ctx.setLineDash([]);
  for (const axis of shape.axes) strokeLine(ctx, t, axis);
  if (selected) {
    // A white frame a few pixels outside tells the selection from its neighbours.
    const pad = 4 * dpr();
    const [x1, y1] = toCanvas(t, shape.box[0], shape.box[1]);
    const [x2, y2] = toCanvas(t, shape.box[2], shape.box[3]);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = dpr();
    ctx.strokeRect(x1 - pad, y1 - pad, x2 - x1 + 2 * pad, y2 - y1 + 2 * pad);
  }
}

// Labels above their boxes; one that would overlap a label already placed is left out, so that a
// slice with thirty proposals stays readable.
function drawLabels(ctx, t, shapes) {
  const size = 11 * dpr();
  ctx.font = `${size}px system-ui, sans-serif`;
  const placed = [];
  for (const shape of labelOrder(shapes, t)) {
    const [x, yTop] = toCanvas(t, shape.box[0], shape.box[1]);
    const above = yTop - size - 6 * dpr();
    const y = above >= 0 ? above : toCanvas(t, 0, shape.box[3])[1] + 4 * dpr();
    const rect = { x, y, w: ctx.measureText(shape.label).width + 6 * dpr(), h: size + 4 * dpr() };
    if (placed.some((r) => overlaps(r, rect))) continue;
    placed.push(rect);
    ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
    ctx.fillRect(rect.x, rect.y, rect.w, rect.h);
    ctx.fillStyle = shape.style.color;
    ctx.fillText(shape.label, x + 3 * dpr(), y + size);
  }
}

// Most important first: the selection, the box under the mouse, verdicts and drawn lesions, the
// harvest's picks and the marks, other proposals; these last only where their box is big enough
// to see (zoom in for more).
function labelOrder(shapes, t) {
  const priority = (s) => {
    if (s.target && isSelected(s.target)) return -1;
    if (sameTarget(s.target, state.hovered)) return 0;
    return s.rank ?? 2;
  };
  const worthIt = (s) => priority(s) < 3 || (s.box[2] - s.box[0]) * t.scale >= 16 * dpr();
  return shapes.filter(worthIt).sort((a, b) => priority(a) - priority(b));
}

const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
const sameTarget = (a, b) => Boolean(a && b && a.kind === b.kind && a.ref === b.ref);

function drawDraft(ctx, t) {
  const d = state.draft;
  if (!d || d.z !== state.z) return;
  if (state.tool === "adjust") {
    stroke(ctx, STYLE.adjusting);
    strokeBox(ctx, t, d.box);
    ctx.fillStyle = STYLE.adjusting.color;
    const half = 4 * dpr();
    for (const [x, y] of corners(d.box).map(([x, y]) => toCanvas(t, x, y))) ctx.fillRect(x - half, y - half, 2 * half, 2 * half);
  } else if (state.tool === "box" && d.box) {
    stroke(ctx, STYLE.draft);
    strokeBox(ctx, t, d.box);
  } else if (state.tool === "recist") {
    stroke(ctx, { ...STYLE.draft, dash: [] });
    for (const axis of [d.long, d.short]) if (axis) strokeLine(ctx, t, axis);
  }
}

// Corner i of a box, in the order (x1,y1), (x2,y1), (x2,y2), (x1,y2); CORNER_INDEX[i] says which of
// box's four numbers it moves.
const CORNER_INDEX = [[0, 1], [2, 1], [2, 3], [0, 3]];
const corners = (box) => CORNER_INDEX.map(([xi, yi]) => [box[xi], box[yi]]);

// ---------------------------------------------------------------- mouse

function pointer(event) {
  const c = canvas();
  const rect = c.getBoundingClientRect();
  const cx = (event.clientX - rect.left) * (c.width / rect.width);
  const cy = (event.clientY - rect.top) * (c.height / rect.height);
  const t = viewTransform();
  const [x, y] = toImage(t, cx, cy);
  return { cx, cy, x, y, t };
}

// A point inside the image (pixel centres 0 .. size - 1), rounded to 0.1 px as the server stores it.
function imagePoint(event) {
  const { x, y } = pointer(event);
  const [, h, w] = state.volume.shape_zyx;
  return [round1(clamp(x, 0, w - 1)), round1(clamp(y, 0, h - 1))];
}

// The smallest box around the point wins, so a lesion inside a bigger proposal can be picked.
function hitTest(p) {
  const tol = (3 * dpr()) / p.t.scale;
  const inside = (b) => p.x >= b[0] - tol && p.x <= b[2] + tol && p.y >= b[1] - tol && p.y <= b[3] + tol;
  const area = (b) => (b[2] - b[0]) * (b[3] - b[1]);
  const hits = sliceShapes().filter((s) => s.target && inside(s.box));
  hits.sort((a, b) => area(a.box) - area(b.box));
  return hits[0]?.target ?? null;
}

let drag = null; // {move(event), end(event)} of the press under way

// What a press on the canvas starts: a window drag (right button or shift), a pan (middle button,
// or left on nothing), the active tool's drawing, or a selection.
function startDrag(event) {
  if (!state.volume) return null;
  if (event.button === 2 || (event.button === 0 && event.shiftKey)) return windowDrag(event);
  if (event.button === 1) return panDrag(event);
  if (event.button !== 0) return null;
  if (state.tool === "recist") return recistDrag(event);
  if (state.tool === "box") return boxDrag(event);
  if (state.tool === "adjust") {
    const corner = cornerAt(pointer(event));
    if (corner !== null) return cornerDrag(corner);
  }
  const target = hitTest(pointer(event));
  if (!target) return panDrag(event);
  select(target, { jump: false });
  return null;
}

function windowDrag(event) {
  const start = { x: event.clientX, y: event.clientY, level: state.level, width: state.width };
  const step = Math.max(1, start.width / 256); // HU per screen pixel: every window feels alike
  return {
    move: (e) => setWindow(start.level + (e.clientY - start.y) * step, start.width + (e.clientX - start.x) * step),
  };
}

function panDrag(event) {
  const start = { x: event.clientX, y: event.clientY, panX: state.view.panX, panY: state.view.panY };
  return {
    move(e) {
      state.view.panX = start.panX + (e.clientX - start.x) * dpr();
      state.view.panY = start.panY + (e.clientY - start.y) * dpr();
      render();
    },
  };
}

// Long axis first, then the short one, each a press-drag-release, as DeepLesion's readers drew.
function recistDrag(event) {
  const d = state.draft;
  const axis = [...imagePoint(event), ...imagePoint(event)];
  d[d.phase] = axis;
  return {
    move(e) {
      [axis[2], axis[3]] = imagePoint(e);
      render();
    },
    end() {
      if (Math.hypot(axis[2] - axis[0], axis[3] - axis[1]) < 1) d[d.phase] = null; // a click, not an axis
      else if (d.phase === "long") {
        d.phase = "short";
        setStatus("RECIST: now drag the short axis");
      } else commitRecist();
      render();
    },
  };
}

function boxDrag(event) {
  const d = state.draft;
  const [x0, y0] = imagePoint(event);
  return {
    move(e) {
      const [x, y] = imagePoint(e);
      d.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
      render();
    },
    end() {
      if (d.box && d.box[2] - d.box[0] >= 1 && d.box[3] - d.box[1] >= 1) commitBox();
      else d.box = null;
      render();
    },
  };
}

function cornerAt(p) {
  const reach = 8 * dpr();
  const i = corners(state.draft.box).findIndex(([x, y]) => {
    const [cx, cy] = toCanvas(p.t, x, y);
    return Math.abs(cx - p.cx) <= reach && Math.abs(cy - p.cy) <= reach;
  });
  return i < 0 ? null : i;
}

function cornerDrag(corner) {
  const [xi, yi] = CORNER_INDEX[corner];
  return {
    move(e) {
      [state.draft.box[xi], state.draft.box[yi]] = imagePoint(e);
      render();
    },
  };
}

function onWheel(event) {
  event.preventDefault(); // neither the page nor the browser's zoom
  if (!state.volume) return;
  if (event.ctrlKey) {
    const { cx, cy } = pointer(event);
    zoomAt(cx, cy, event.deltaY < 0 ? 1.25 : 0.8);
  } else if (event.deltaY) setSlice(state.z + Math.sign(event.deltaY));
}

// Zooms keeping the image point under (cx, cy) in place.
function zoomAt(cx, cy, factor) {
  const [x, y] = toImage(viewTransform(), cx, cy);
  state.view.zoom = clamp(state.view.zoom * factor, 0.5, 40);
  const [nx, ny] = toCanvas(viewTransform(), x, y);
  state.view.panX += cx - nx;
  state.view.panY += cy - ny;
  render();
}

const zoomCentre = (factor) => state.volume && zoomAt(canvas().width / 2, canvas().height / 2, factor);

function resetView() {
  state.view = { zoom: 1, panX: 0, panY: 0 };
  render();
}

function onHover(event) {
  if (drag || !state.volume) return;
  const target = hitTest(pointer(event));
  if (sameTarget(target, state.hovered) || target === state.hovered) return;
  state.hovered = target;
  render();
}

function bindCanvas() {
  const c = canvas();
  c.addEventListener("pointerdown", (e) => {
    drag = startDrag(e);
    if (drag) c.setPointerCapture(e.pointerId);
  });
  c.addEventListener("pointermove", (e) => (drag ? drag.move(e) : onHover(e)));
  c.addEventListener("pointerup", (e) => {
    drag?.end?.(e);
    drag = null;
  });
  c.addEventListener("pointercancel", () => (drag = null));
  c.addEventListener("contextmenu", (e) => e.preventDefault()); // the right button sets the window
  c.addEventListener("wheel", onWheel, { passive: false });
  new ResizeObserver(fitCanvas).observe(c.parentElement);
}

// ---------------------------------------------------------------- tools

function freshDraft(tool) {
  return tool === "recist" ? { z: state.z, phase: "long", long: null, short: null } : { z: state.z, box: null };
}

function startTool(tool, draft) {
  state.tool = tool;
  state.draft = draft;
  markToolButtons();
  render();
}

function cancelTool() {
  state.tool = null;
  state.draft = null;
  markToolButtons();
  render();
}

function markToolButtons() {
  for (const tool of ["adjust", "recist", "box"]) $(`#btn-${tool}`).classList.toggle("active", state.tool === tool);
  canvas().classList.toggle("drawing", state.tool === "recist" || state.tool === "box");
}

// D and B start a drawing, or cancel the one under way.
function toggleDrawing(tool) {
  if (!needVolume()) return;
  if (state.tool === tool) {
    cancelTool();
    setStatus("drawing cancelled");
    return;
  }
  startTool(tool, freshDraft(tool));
  setStatus(tool === "recist" ? "RECIST: drag the long axis (Esc cancels)" : "box: drag from one corner to the other (Esc cancels)");
}

// E starts adjusting the selected proposal's box on this slice; E again (or Enter) saves.
function toggleAdjust() {
  if (state.tool === "adjust") return commitAdjust();
  const ref = selectedProposalRef();
  if (!ref) return;
  const p = proposalByRef(ref);
  const box = proposalBoxOn(p, state.z);
  if (!box) {
    setStatus(`${ref} has no box on this slice (its key slice is ${sliceNo(p.key_z)})`, "error");
    return;
  }
  startTool("adjust", { z: state.z, ref, box: [...box] });
  setStatus(`adjusting ${ref}: drag the corners, Enter saves, Esc cancels`);
}

function escape() {
  if (question) {
    answerQuestion(false);
  } else if (state.tool) {
    cancelTool();
    setStatus("cancelled");
  } else if (state.selected) {
    state.selected = null;
    renderSelection();
    render();
  }
}

// ---------------------------------------------------------------- writes and undo

function needVolume() {
  if (state.volume) return true;
  setStatus("open a volume first", "error");
  return false;
}

// A holdout or validation volume is shown, never written: its labels measure the harvest.
function writable() {
  const v = state.volume;
  if (!v.closed) return true;
  setStatus(`${v.key} is a ${v.holdout ? "holdout" : "validation"} volume: read only (its labels measure the harvest)`, "error");
  return false;
}

// ---------------------------------------------------------------- questions

// One question at a time, under the actions: Enter (or its button) says yes, Esc no. Opening
// another volume drops it. question: the write that a yes makes.
let question = null;

function ask(text, yesLabel, yes) {
  question = yes;
  $("#confirm-text").textContent = text;
  $("#confirm-yes").replaceChildren(`${yesLabel} `, el("kbd", {}, "Enter"));
  $("#confirm").hidden = false;
}

function dismissQuestion() {
  question = null;
  $("#confirm").hidden = true;
}

function answerQuestion(yes) {
  const write = question;
  dismissQuestion();
  if (yes && write) write();
  else setStatus("not saved");
}

function selectedProposalRef() {
  if (!needVolume()) return null;
  if (state.selected?.kind === "proposal") return state.selected.ref;
  setStatus("select a proposal first (click its box, or N / P)", "error");
  return null;
}

function reviewerName() {
  const name = $("#reviewer").value.trim();
  if (!name) {
    setStatus("type your reviewer name first (top right)", "error");
    $("#reviewer").focus();
  }
  return name;
}

// Inside the image, ordered, rounded to 0.1 px.
function cleanBox(box) {
  const [, h, w] = state.volume.shape_zyx;
  const [x1, x2] = [box[0], box[2]].map((x) => round1(clamp(x, 0, w - 1))).sort((a, b) => a - b);
  const [y1, y2] = [box[1], box[3]].map((y) => round1(clamp(y, 0, h - 1))).sort((a, b) => a - b);
  return [x1, y1, x2, y2];
}

function currentVerdict({ kind, ref }) {
  const v = state.volume;
  if (kind === "volume") return v.fully_annotated.verdict;
  if (kind === "proposal") return proposalByRef(ref)?.verdict ?? null;
  return v.drawn.find((d) => d.ref === ref)?.verdict ?? null; // ref "" (a new lesion): none
}

// A write from the open volume's tools: based on the target's current verdict, and undoable. If
// the server finds the lesion verified already, the reviewer is asked whether it is another one;
// a yes sends it again naming that one as distinct.
function act(kind, ref, fields, describe) {
  if (!writable()) return Promise.resolve(null);
  const key = state.volume.key;
  return queueWrite(() => {
    if (state.volume?.key !== key) return null; // another volume was opened meanwhile
    const before = currentVerdict({ kind, ref });
    const body = { volume: key, kind, ref, base: before?.id ?? 0, ...fields };
    const again = (distinct) => act(kind, ref, { ...fields, distinct_from: distinct }, describe);
    return send(body, describe, (verdict) => {
      // The target's name is ours, except that the server names a new drawn lesion.
      const target = { volume: body.volume, kind, ref: kind === "drawn" && !ref ? verdict.ref : ref };
      state.undo.push({ target, before, after: verdict });
    }, again);
  });
}

let lastWrite = Promise.resolve();

// Writes (and undos) run one after the other, each once the previous one's answer is shown, so
// that each is based on the verdicts the server returned: a quick A then R on one proposal is not
// a conflict with itself, and an undo pressed at once finds the write it undoes.
function queueWrite(write) {
  lastWrite = lastWrite.then(write);
  return lastWrite;
}

// POSTs a verdict; on success runs written(verdict), says what it did and shows the server's new
// state. Resolves to the verdict, or null (the reason is in #status). A refusal because someone
// changed the target first (409) says who and what, and that nothing was saved; one because the
// lesion is verified already offers again(distinct_from) when given.
async function send(body, describe, written, again = null) {
  const reviewer = reviewerName();
  if (!reviewer) return null;
  try {
    const { verdict } = await apiJson("/api/verdicts", { method: "POST", body: { ...body, reviewer } });
    written(verdict);
    setStatus(describe(verdict));
    await refresh();
    return verdict;
  } catch (err) {
    if (err.status !== 409) {
      setStatus(err.message, "error");
      return null;
    }
    await refresh();
    const same = err.body.duplicate_of;
    if (same) {
      setStatus(`not saved: ${sameLesionText(same)}`, "error");
      if (again && same.volume === state.volume?.key) {
        if (targetExists(same)) select({ kind: same.kind, ref: same.ref }, { jump: false });
        ask(`Your ${body.action} was not saved: ${sameLesionText(same)}. Is it another lesion?`, "Save it as another lesion",
          () => again([...(body.distinct_from ?? []), same.ref]));
      }
    } else setStatus(`${err.message} (shown now)`, "error");
    return null;
  }
}

function sameLesionText(v) {
  const what = v.kind === "drawn" ? `the lesion ${v.ref} that ${v.reviewer} drew` : `proposal ${v.ref}, ${verdictText(v)}`;
  const z = v.z_index ?? (v.kind === "proposal" && state.volume ? proposalByRef(v.ref)?.key_z : null);
  return `${what}${z === null || z === undefined ? "" : ` (slice ${sliceNo(z)})`}, is this lesion already`;
}

const refresh = () => Promise.all([reloadVolume(), loadWorklist()]);

function verdictOnSelected(action, done) {
  const ref = selectedProposalRef();
  if (ref) act("proposal", ref, { action }, () => `${done} ${ref}`);
}

function commitAdjust() {
  const { ref, z, box } = state.draft;
  cancelTool();
  act("proposal", ref, { action: "adjust", z_index: z, box_xyxy_px: cleanBox(box) }, () => `adjusted ${ref} on slice ${sliceNo(z)}`);
}

async function commitRecist() {
  const { z, long, short } = state.draft;
  cancelTool();
  const recist = { long_axis_px: long, short_axis_px: short };
  const verdict = await act("drawn", "", { action: "draw", z_index: z, recist }, (v) => `drew ${v.ref} (RECIST) on slice ${sliceNo(z)}`);
  if (verdict) select({ kind: "drawn", ref: verdict.ref }, { jump: false });
}

async function commitBox() {
  const { z, box } = state.draft;
  cancelTool();
  const fields = { action: "draw", z_index: z, box_xyxy_px: cleanBox(box) };
  const verdict = await act("drawn", "", fields, (v) => `drew ${v.ref} (box) on slice ${sliceNo(z)}`);
  if (verdict) select({ kind: "drawn", ref: verdict.ref }, { jump: false });
}

function deleteDrawn() {
  if (!needVolume()) return;
  if (state.selected?.kind !== "drawn") {
    setStatus("select a drawn lesion first (click inside it)", "error");
    return;
  }
  const { ref } = state.selected;
  act("drawn", ref, { action: "delete" }, () => `deleted ${ref}`);
}

// F marks the volume fully annotated: its complete labels become its marks and its accepted and
// drawn lesions, every other proposal a non-lesion. With proposals still without a verdict, it asks.
function markFully() {
  if (!needVolume() || !writable()) return;
  const current = state.volume.fully_annotated.verdict;
  if (current?.action === "fully_annotated") {
    setStatus(`already marked fully annotated by ${current.reviewer}`);
    return;
  }
  const key = state.volume.key;
  const write = () => act("volume", "", { action: "fully_annotated" }, () => `marked ${key} fully annotated`);
  const open = state.volume.proposals.filter((p) => !p.verdict || p.verdict.action === "clear");
  if (!open.length) return write();
  const shownOpen = open.filter(passesFilter).length;
  const setAside = open.length - shownOpen;
  ask(`${open.length} proposals of ${key} have no verdict (${shownOpen} shown` +
    (setAside ? `, ${setAside} set aside by the harvest below score ${fmt(state.minScore)}` : "") +
    "). Marked fully annotated, they all count as no lesion. Mark it anyway?", "Mark fully annotated", write);
}

// Undo writes the verdict that restores the state before the last write: no verdict (clear), a
// new drawn lesion deleted, or the previous verdict's action and fields again. Its base is the id
// of the write undone. The entry is dropped even if the server refuses (409: someone else wrote).
function undo() {
  return queueWrite(async () => {
    const entry = state.undo.pop();
    if (!entry) {
      setStatus("nothing to undo");
      return;
    }
    const { target, before, after } = entry;
    const body = { ...target, base: after.id, ...restoring(before, target) };
    const what = `${after.action} ${target.ref || target.volume}`;
    await send(body, () => `undid ${what}`, (verdict) => {
      // Older writes on this target led to the state just restored: their undo starts from here.
      if (before) for (const e of state.undo) if (e.after.id === before.id) e.after = verdict;
    });
  });
}

function restoring(before, target) {
  if (!before) return { action: target.kind === "drawn" ? "delete" : "clear" };
  const fields = { action: before.action };
  if (before.z_index !== null && before.z_index !== undefined) fields.z_index = before.z_index;
  if (before.recist) fields.recist = before.recist;
  else if (before.box_xyxy_px) fields.box_xyxy_px = before.box_xyxy_px;
  return fields;
}

// ---------------------------------------------------------------- keys

const KEYS = {
  ArrowUp: () => setSlice(state.z - 1),
  ArrowDown: () => setSlice(state.z + 1),
  PageUp: () => setSlice(state.z - 5),
  PageDown: () => setSlice(state.z + 5),
  Home: () => setSlice(0),
  End: () => setSlice(Infinity),
  1: () => applyPreset(0),
  2: () => applyPreset(1),
  3: () => applyPreset(2),
  "+": () => zoomCentre(1.25),
  "=": () => zoomCentre(1.25),
  "-": () => zoomCentre(0.8),
  0: resetView,
  n: () => stepProposal(1),
  p: () => stepProposal(-1),
  a: () => verdictOnSelected("accept", "accepted"),
  r: () => verdictOnSelected("reject", "rejected"),
  e: toggleAdjust,
  d: () => toggleDrawing("recist"),
  b: () => toggleDrawing("box"),
  Delete: deleteDrawn,
  Backspace: deleteDrawn, // Mac keyboards have no Delete key
  f: markFully,
  u: undo,
  Enter: () => (question ? answerQuestion(true) : state.tool === "adjust" && commitAdjust()),
  Escape: escape,
};

// While a text field or list box has the focus, keys are typing, not shortcuts; checkboxes, buttons
// and the slider keep the shortcuts (onKey prevents their own use of the keys it handles).
const isTyping = (node) =>
  node instanceof Element &&
  Boolean(node.closest("input:not([type=checkbox]):not([type=range]), textarea, select, [contenteditable]"));

function onKey(event) {
  if (isTyping(event.target)) return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault();
    undo();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const handler = KEYS[event.key.length === 1 ? event.key.toLowerCase() : event.key];
  if (!handler) return;
  event.preventDefault(); // no page scroll, no slider step, no click of a focused button
  handler();
}

// ---------------------------------------------------------------- start-up

function bindControls() {
  const reviewer = $("#reviewer");
  reviewer.value = localStorage.getItem("lh-reviewer") ?? "";
  reviewer.addEventListener("input", () => localStorage.setItem("lh-reviewer", reviewer.value.trim()));
  reviewer.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === "Escape") && reviewer.blur());
  $("#tab-volumes").addEventListener("click", () => showTab("volumes"));
  $("#tab-lesions").addEventListener("click", () => showTab("lesions"));
  $("#order").addEventListener("change", loadWorklist);
  onRow("#volume-list", ".wl-volume", (row) => openVolume(row.dataset.key));
  onRow("#lesion-list", ".wl-lesion", (row) => openLesion(row.dataset.volume, row.dataset.ref));
  onRow("#negative-list", ".wl-lesion", (row) => openLesion(row.dataset.volume, row.dataset.ref));
  $("#min-score").addEventListener("input", (e) => setMinScore(e.target.value));
  $("#confirm-yes").addEventListener("click", () => answerQuestion(true));
  $("#confirm-no").addEventListener("click", () => answerQuestion(false));
  onRow("#proposal-list", ".proposal-item", (row) => select({ kind: "proposal", ref: row.dataset.ref }));
  onRow("#drawn-list", ".drawn-item", (row) => select({ kind: "drawn", ref: row.dataset.ref }));
  onRow("#window-presets", ".window-preset", (b) => setWindow(...state.session.windows[b.dataset.name]));
  for (const box of document.querySelectorAll(".overlays input")) box.addEventListener("change", render);
  $("#slice-slider").addEventListener("input", (e) => setSlice(Number(e.target.value)));
  const buttons = {
    accept: KEYS.a, reject: KEYS.r, adjust: KEYS.e, recist: KEYS.d, box: KEYS.b,
    delete: deleteDrawn, fully: markFully, undo,
  };
  for (const [name, handler] of Object.entries(buttons)) $(`#btn-${name}`).addEventListener("click", handler);
  document.addEventListener("keydown", onKey);
  bindCanvas();
}

// One listener per list: rows are rebuilt after every write.
function onRow(listSelector, rowSelector, handler) {
  $(listSelector).addEventListener("click", (event) => {
    const row = event.target.closest(rowSelector);
    if (row) handler(row);
  });
}

function openLesion(key, ref) {
  if (state.volume?.key === key) select({ kind: "proposal", ref });
  else openVolume(key, ref);
}

function renderSession() {
  const s = state.session;
  const threshold = s.threshold === null ? "not mined" : s.threshold.toFixed(3);
  const w = roundInfo(s.round).fusion_exponent;
  $("#session-info").textContent = `round ${s.round} · score s = s_g · s_c^w, w ${w ?? "–"} · threshold ${threshold}`;
  $("#session-info").title = `run ${s.run}\ndata ${s.data}`;
  $("#window-presets").replaceChildren(
    ...Object.keys(s.windows).map((name, i) =>
      el("button", { type: "button", className: "window-preset", title: `key ${i + 1}`, dataset: { name } }, `${i + 1} ${name}`),
    ),
  );
}

async function start() {
  bindControls();
  try {
    state.session = await apiJson("/api/session");
    renderSession();
    const [level, width] = state.session.windows["soft tissue"] ?? Object.values(state.session.windows)[0];
    setWindow(level, width);
    setMinScore(state.session.threshold ?? 0); // by default, what the harvest set aside stays hidden
    await loadWorklist();
    setStatus("pick a volume or a lesion in the work list");
  } catch (err) {
    const why = err.status === 401 ? "not authorised: open the URL that lesion-harvester review printed" : err.message;
    setStatus(why, "error");
  }
}

// A failure nobody caught still reaches the reviewer.
window.addEventListener("unhandledrejection", (e) => setStatus(String(e.reason?.message ?? e.reason), "error"));
start();
