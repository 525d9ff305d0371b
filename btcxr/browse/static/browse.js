// btcxr case browser: plain JavaScript, no network. Data files call btcxrData(...) (a page opened from
// file:// may load scripts but not fetch JSON). Counts follow detect/counts.py: a detection is a true positive
// at IoU option i when bit i of its flag is set; a score threshold keeps the matches of the detections above it.
// A model's entry of an image is null when the model did not predict that image: "not predicted", left out of
// its totals, never counted as misses.
// Every string of the data (image ids, splits, labels) reaches the page as text (textContent, new Option) or
// through escapeHtml; lookups by id or label use Map, so that an id such as "__proto__" is just an id.
"use strict";

const state = {
  index: null,
  byId: new Map(),     // image id -> its entry of the index
  cases: new Map(),    // image id -> its case data, once loaded
  waiting: new Map(),  // image id -> what to do when its case data arrives
  rows: [], order: [], position: -1, caseId: null, current: null,
  sort: { key: "worst", model: 0, desc: true },
  view: { zoom: 1, cx: null, cy: null }, camChoice: new Map(), hiddenClasses: new Set(), heat: new Map(),
};
const $ = (id) => document.getElementById(id);
const COLORS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
  "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8"];
const KINDS = ["tp", "fp", "fn"];
// Safari has no canvas filter: window/level is then switched off rather than drawn wrong
const CAN_FILTER = "filter" in CanvasRenderingContext2D.prototype;

window.btcxrData = function (data) {
  if (data.images) { state.index = data; start(); return; }
  state.cases.set(data.id, data);
  const done = state.waiting.get(data.id);
  state.waiting.delete(data.id);
  if (done) done(data);
};

function loadScript(src) {
  const tag = document.createElement("script");
  tag.src = src;
  document.head.appendChild(tag);
}

function settings() {
  return { iou: Number($("iou").value), score: Number($("score").value), perModel: $("per-model").checked,
    cls: Number($("class").value), finding: $("finding").value, split: $("split").value };
}

// the score threshold of model m: its own default (best F1 on val) or the slider's
function threshold(s, m) {
  return s.perModel ? state.index.thresholds[m].score : s.score;
}

// scores with 3 significant digits: 0.873, 0.0512 (two digits would show 0.05 for 0.054)
function formatScore(value) {
  return Number(value).toPrecision(3);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"'`]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
    "'": "&#39;", "`": "&#96;" })[c]);
}

// ------------------------------------------------------------------------------------------------ counts
// {tp, fp, fn, n} of model m on an image, or null when the model did not predict the image
function counts(image, m, s) {
  const d = image.models[m];
  if (!d) return null;
  const thr = threshold(s, m);
  let tp = 0, n = 0;
  for (let i = 0; i < d.s.length; i++) {
    if (d.s[i] < thr || (s.cls >= 0 && d.c[i] !== s.cls)) continue;
    n += 1;
    if ((d.t[i] >> s.iou) & 1) tp += 1;
  }
  const gt = s.cls < 0 ? image.gt.length : image.gt.filter((c) => c === s.cls).length;
  return { tp: tp, fp: n - tp, fn: gt - tp, n: n };
}

function visible(image, s) {
  if (s.split && image.split !== s.split) return false;
  if (s.finding === "none" && image.gt.length) return false;
  if (s.finding && s.finding !== "none" && !image.gt.includes(Number(s.finding))) return false;
  if (s.cls >= 0 && !image.gt.includes(s.cls) && !image.models.some((_, k) => {
    const c = counts(image, k, s);
    return c !== null && c.n > 0;
  })) return false;
  return true;
}

function findingsText(image) {
  return [...new Set(image.gt)].map((c) => state.index.classes[c]).join(", ") || "no finding";
}

// ------------------------------------------------------------------------------------------------ start
function start() {
  const ix = state.index;
  for (const image of ix.images) state.byId.set(image.id, image);
  $("source").textContent = `${ix.images.length} images of ${ix.cache} (${ix.splits.join(", ")}), ` +
    `${ix.models.length} model(s)`;
  ix.iou.forEach((v, i) => $("iou").add(new Option(v.toFixed(2), i, false, Math.abs(v - 0.5) < 1e-9)));
  ix.classes.forEach((name, c) => {
    $("class").add(new Option(name, c));
    $("finding").add(new Option(name, c));
  });
  ix.splits.forEach((name) => $("split").add(new Option(name, name)));
  ix.models.forEach((name, m) => $("sort").add(new Option(`worst first: ${name}`, `worst:${m}`)));
  $("sort").add(new Option("image id", "id"));
  $("score").min = ix.min_score;
  $("score").value = ix.thresholds[0].score;  // where the slider starts when "own threshold" is unticked
  $("thresholds").textContent = "Default score thresholds: " + ix.models.map((name, m) =>
    `${name}: score \u2265 ${formatScore(ix.thresholds[m].score)} (${ix.thresholds[m].note})`).join("; ") + ".";
  for (const id of ["iou", "class", "finding", "split", "per-model"]) $(id).addEventListener("change", changed);
  $("score").addEventListener("input", () => { $("per-model").checked = false; changed(); });  // one for all
  $("sort").addEventListener("change", () => { state.sort = parseSort($("sort").value); changed(); });
  $("export").addEventListener("click", downloadCsv);
  $("cases").tBodies[0].addEventListener("click", openFromIndex);
  for (const id of ["show-gt", "show-readers", "show-dets", "show-cam", "opacity"]) $(id).addEventListener("input", draw);
  $("back").addEventListener("click", () => { location.hash = viewHash(null); });
  $("home").addEventListener("click", (e) => { e.preventDefault(); location.hash = viewHash(null); });
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("reset").addEventListener("click", () => { state.view = { zoom: 1, cx: null, cy: null }; draw(); });
  setupWindow();
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", keys);
  window.addEventListener("resize", () => { stickBelowHeader(); draw(); });
  stickBelowHeader();
  buildClassToggles();
  applyHash(readHash());
  refresh();
  route();
}

// the table's header row sticks below the page header, whose height depends on how its controls wrap
function stickBelowHeader() {
  document.documentElement.style.setProperty("--header-height", `${document.querySelector("header").offsetHeight}px`);
}

// a control moved: the index is recounted, and the URL keeps the view (reload or share it), written once a
// slider stops (browsers throttle a page that rewrites its history at every step of a drag)
let hashTimer = null;
function changed() {
  clearTimeout(hashTimer);
  hashTimer = setTimeout(() => history.replaceState(null, "", viewHash(state.caseId)), 150);
  refresh();
}

// ------------------------------------------------------------------------------------------------ URL state
// #iou=2&score=0.35&class=3&finding=&split=test&sort=worst:0:desc&case=img001; score=best: each model's own
function viewHash(caseId) {
  const s = settings(), sort = state.sort;
  const params = [["iou", $("iou").value], ["score", s.perModel ? "best" : $("score").value],
    ["class", $("class").value], ["finding", s.finding], ["split", s.split],
    ["sort", `${sort.key}:${sort.model}:${sort.desc ? "desc" : "asc"}`]];
  if (caseId !== null) params.push(["case", caseId]);
  return "#" + params.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
}

function readHash() {
  const params = new Map();
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    const at = part.indexOf("=");
    if (at < 1) continue;
    try {
      params.set(decodeURIComponent(part.slice(0, at)), decodeURIComponent(part.slice(at + 1)));
    } catch (e) { /* a malformed escape in a hand-edited URL: that part is ignored */ }
  }
  return params;
}

// the controls as the URL says; values the page does not offer are ignored
function applyHash(params) {
  for (const [key, id] of [["iou", "iou"], ["class", "class"], ["finding", "finding"], ["split", "split"]]) {
    const value = params.get(key);
    if (value !== undefined && [...$(id).options].some((o) => o.value === value)) $(id).value = value;
  }
  const score = params.get("score");
  if (score === "best") $("per-model").checked = true;
  else if (score !== undefined && score !== "" && Number.isFinite(Number(score))) {
    $("per-model").checked = false;
    $("score").value = score;
  }
  const sort = params.has("sort") ? parseSort(params.get("sort")) : null;
  if (sort) state.sort = sort;
  syncSortSelect();
}

// the sort select shows the sort when it offers it (worst first, image id); a column's sort leaves it blank
function syncSortSelect() {
  const { key, model } = state.sort;
  $("sort").value = key === "worst" ? `worst:${model}` : key === "id" ? "id" : "";
}

// "worst:1:desc", "fp:0:asc", "id" -> {key, model, desc}, or null
function parseSort(text) {
  const [key, model, direction] = String(text).split(":");
  const m = Number(model || 0);
  if (!["worst", "id", "tp", "fp", "fn"].includes(key) || !Number.isInteger(m) || m < 0 ||
      m >= state.index.models.length) return null;
  return { key: key, model: m, desc: direction ? direction === "desc" : key !== "id" };
}

// ------------------------------------------------------------------------------------------------ index
function header() {
  const ix = state.index;
  let html = "<tr><th rowspan=2 data-key=rank>#</th><th rowspan=2 data-key=id>image</th><th rowspan=2>split</th>" +
    "<th rowspan=2>ground truth</th>";
  ix.models.forEach((name) => { html += `<th colspan=3>${escapeHtml(name)}</th>`; });
  html += "</tr><tr>";
  ix.models.forEach((name, m) => {
    for (const k of KINDS) html += `<th data-key=${k} data-model=${m}>${k.toUpperCase()}</th>`;
  });
  return html + "</tr>";
}

// images a model did not predict go last whatever the direction; ties by image id
function compareRows(a, b) {
  const { key, model, desc } = state.sort;
  if (key !== "id") {
    const missingA = a.c[model] === null, missingB = b.c[model] === null;
    if (missingA !== missingB) return missingA ? 1 : -1;
  }
  const value = (r) => key === "id" ? r.img.id : r.c[model] === null ? 0
    : key === "worst" ? r.c[model].fp + r.c[model].fn : r.c[model][key];
  const va = value(a), vb = value(b);
  if (va !== vb) return (va < vb ? -1 : 1) * (desc ? -1 : 1);
  return a.img.id < b.img.id ? -1 : a.img.id > b.img.id ? 1 : 0;
}

// Kept short: 3,000 rows are parsed again at every slider move. The link names the image only; a click
// opens it with the page's controls (openFromIndex), the way its URL is written then.
function rowHtml(r, i) {
  const cells = r.c.map((c) => c === null ? "<td class=np colspan=3>not predicted</td>"
    : `<td class=tp>${c.tp}</td><td class="fp${c.fp ? " bad" : ""}">${c.fp}</td>` +
      `<td class="fn${c.fn ? " bad" : ""}">${c.fn}</td>`).join("");
  const id = escapeHtml(r.img.id);
  return `<tr data-id="${id}"><td>${i + 1}</td><td class=id><a href="#case=${escapeHtml(encodeURIComponent(r.img.id))}">` +
    `${id}</a></td><td class=split>${escapeHtml(r.img.split)}</td>` +
    `<td class=findings>${escapeHtml(findingsText(r.img))}</td>${cells}</tr>`;
}

function openFromIndex(e) {
  const link = e.target.closest("td.id a");
  if (!link || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return;  // a new tab: the link as it is
  e.preventDefault();
  location.hash = viewHash(link.closest("tr").dataset.id);
}

function summaryHtml(rows, s) {
  const ix = state.index;
  const totals = ix.models.map((name, m) => {
    const t = { tp: 0, fp: 0, fn: 0, missing: 0 };
    for (const r of rows) {
      const c = r.c[m];
      if (c === null) { t.missing += 1; continue; }
      for (const k of KINDS) t[k] += c[k];
    }
    const missing = t.missing ? ` on ${rows.length - t.missing} images (${t.missing} not predicted)` : "";
    return `<span class=total data-model=${m} data-tp=${t.tp} data-fp=${t.fp} data-fn=${t.fn}>` +
      `${escapeHtml(name)}: TP ${t.tp}, FP ${t.fp}, FN ${t.fn}${missing}</span>`;
  });
  const score = s.perModel ? "each model's default threshold" : `score &ge; ${s.score.toFixed(2)}`;
  return `${rows.length} of ${ix.images.length} images at IoU &ge; ${ix.iou[s.iou].toFixed(2)}, ${score}. ` +
    `${totals.join("; ")}.`;
}

function refresh() {
  const s = settings(), ix = state.index;
  $("score-value").textContent = s.perModel ? "own" : s.score.toFixed(2);
  const rows = ix.images.filter((img) => visible(img, s)).map((img) => ({
    img: img, c: ix.models.map((_, m) => counts(img, m, s)) }));
  rows.sort(compareRows);
  state.rows = rows;
  state.order = rows.map((r) => r.img.id);
  $("cases").tHead.innerHTML = header();
  for (const th of $("cases").tHead.querySelectorAll("th[data-key]")) th.addEventListener("click", () => sortBy(th));
  $("cases").tBodies[0].innerHTML = rows.map(rowHtml).join("");
  $("summary").innerHTML = summaryHtml(rows, s);
  if (!$("case-view").hidden) draw();
}

function sortBy(th) {
  const key = th.dataset.key === "rank" ? "worst" : th.dataset.key;
  const model = Number(th.dataset.model || state.sort.model);
  const same = state.sort.key === key && state.sort.model === model;
  state.sort = { key: key, model: model, desc: same ? !state.sort.desc : key !== "id" };
  syncSortSelect();
  changed();
}

// ------------------------------------------------------------------------------------------------ CSV export
// The index's rows as they are filtered and sorted: RFC 4180 (CRLF, quotes doubled), and a cell that a
// spreadsheet would run as a formula (= + - @, tab, CR first) starts with ' instead.
function csvField(value) {
  let text = String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function csvText() {
  const ix = state.index;
  const head = ["image_id", "split", "ground_truth"];
  ix.models.forEach((name) => { for (const k of KINDS) head.push(`${name} ${k}`); });
  const lines = [head];
  for (const r of state.rows) {
    const line = [r.img.id, r.img.split, findingsText(r.img)];
    for (const c of r.c) for (const k of KINDS) line.push(c === null ? "not predicted" : c[k]);
    lines.push(line);
  }
  return lines.map((line) => line.map(csvField).join(",")).join("\r\n") + "\r\n";
}
window.btcxrExportCsv = csvText;

function downloadCsv() {
  // the byte-order mark makes Excel read UTF-8
  const url = URL.createObjectURL(new Blob(["\ufeff" + csvText()], { type: "text/csv;charset=utf-8" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `btcxr-cases-${state.index.cache}.csv`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ------------------------------------------------------------------------------------------------ case view
function route() {
  const params = readHash();
  const before = viewHash(null);
  applyHash(params);
  if (viewHash(null) !== before) refresh();  // a shared link, or back to a view with other controls
  const id = params.get("case");
  if (id === undefined || !state.byId.has(id)) {
    state.caseId = null;
    $("case-view").hidden = true;
    $("index-view").hidden = false;
    return;
  }
  $("index-view").hidden = true;
  $("case-view").hidden = false;
  state.caseId = id;
  state.position = state.order.indexOf(id);
  $("case-id").textContent = id;
  $("case-position").textContent = state.position >= 0 ? `(${state.position + 1} of ${state.order.length})` : "";
  state.view = { zoom: 1, cx: null, cy: null };
  const show = (data) => { if (state.caseId === data.id) { state.current = data; buildPanels(data); draw(); } };
  if (state.cases.has(id)) { show(state.cases.get(id)); return; }
  state.waiting.set(id, show);
  loadScript(`data/cases/${state.byId.get(id).file}.js`);
}

function step(delta) {
  if (!state.order.length) return;
  // the index may have been re-sorted since this image opened (a moved threshold): step from where it is now
  const here = state.current ? state.order.indexOf(state.current.id) : -1;
  const next = Math.min(Math.max((here >= 0 ? here : state.position) + delta, 0), state.order.length - 1);
  location.hash = viewHash(state.order[next]);
}

function buildClassToggles() {
  const box = $("class-toggles");
  state.index.classes.forEach((name, c) => {
    const label = document.createElement("label");
    label.innerHTML = `<input type=checkbox checked data-class=${c}> <span style="color:${COLORS[c]}">&#9632;</span> ${escapeHtml(name)}`;
    label.querySelector("input").addEventListener("change", (e) => {
      if (e.target.checked) state.hiddenClasses.delete(c); else state.hiddenClasses.add(c);
      draw();
    });
    box.appendChild(label);
  });
}

function buildPanels(data) {
  const panels = $("panels");
  panels.innerHTML = "";
  state.image = new Image();
  state.image.onload = draw;
  state.image.src = data.image;
  data.models.forEach((model) => {
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.dataset.model = model.label;
    panel.innerHTML = "<div class=caption><strong></strong><span class=drawn></span></div><canvas></canvas>" +
      "<div class=caption><span class=heat>heatmap: </span></div>";
    panel.querySelector("strong").textContent = model.label;
    const heat = panel.querySelector(".heat");
    if (model.cams.length) {
      const select = document.createElement("select");
      model.cams.forEach((cam, k) => {
        const option = new Option(`${state.index.classes[cam.c]} ${formatScore(cam.s)}`, k);
        option.title = `score ${cam.s}`;
        select.add(option);
      });
      select.value = String(Math.min(state.camChoice.get(model.label) || 0, model.cams.length - 1));
      select.addEventListener("change", () => { state.camChoice.set(model.label, Number(select.value)); draw(); });
      heat.appendChild(select);
      const note = document.createElement("span");
      note.className = "cam-note";
      heat.appendChild(note);
    } else {
      heat.append("none explained");
    }
    attachZoomPan(panel.querySelector("canvas"));
    panels.appendChild(panel);
  });
}

function heatmapImage(path) {
  if (!state.heat.has(path)) {
    const img = new Image();
    img.onload = draw;
    img.src = path;
    state.heat.set(path, img);
  }
  return state.heat.get(path);
}

// the explained box whose heatmap is shown: the one picked, unless its detection is below the threshold
function shownCam(model, thr) {
  if (!$("show-cam").checked || !model.cams.length) return null;
  const cam = model.cams[state.camChoice.get(model.label) || 0] || model.cams[0];
  return cam.s >= thr ? cam : null;
}

function draw() {
  const data = state.current;
  if (!data || $("case-view").hidden) return;
  const s = settings(), v = state.view, classes = state.index.classes;
  if (v.cx === null) { v.cx = data.w / 2; v.cy = data.h / 2; }
  const image = state.byId.get(data.id);
  [...$("panels").children].forEach((panel, m) => {
    const canvas = panel.querySelector("canvas");
    const width = Math.max(canvas.clientWidth, 100);
    canvas.width = width;
    canvas.height = Math.round(width * data.h / data.w);
    const ctx = canvas.getContext("2d");
    const k = v.zoom * width / data.w;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(k, 0, 0, k, canvas.width / 2 - v.cx * k, canvas.height / 2 - v.cy * k);
    if (state.image.complete && state.image.naturalWidth) {
      ctx.filter = windowFilter();
      ctx.drawImage(state.image, 0, 0, data.w, data.h);
      ctx.filter = "none";
    }
    const model = data.models[m], thr = threshold(s, m);
    const cam = shownCam(model, thr);
    if (cam) {
      const heat = heatmapImage(cam.heatmap);
      if (heat.complete && heat.naturalWidth) {
        ctx.globalAlpha = Number($("opacity").value);
        ctx.drawImage(heat, 0, 0, data.w, data.h);
        ctx.globalAlpha = 1;
      }
      drawBox(ctx, cam.box, "#ffffff", k, [2, 2], null, 2.5);
    }
    const note = panel.querySelector(".cam-note");
    if (note) note.textContent = $("show-cam").checked && !cam ? " below the score threshold: hidden" : "";
    if ($("show-readers").checked) {
      for (const r of data.readers) {
        if (!state.hiddenClasses.has(r[4])) drawBox(ctx, r, "#ff9f1c", k, [], r[5], 1);
      }
    }
    if ($("show-gt").checked) {  // ground truth: thick, long dashes
      for (const g of data.gt) {
        if (!state.hiddenClasses.has(g[4])) drawBox(ctx, g, COLORS[g[4]], k, [8, 4], `GT ${classes[g[4]]}`, 3);
      }
    }
    let drawn = 0;
    if ($("show-dets").checked && model.predicted) {  // detections: thin, solid when true positive, dotted when not
      for (const b of model.boxes) {
        if (b[5] < thr || state.hiddenClasses.has(b[4]) || (s.cls >= 0 && b[4] !== s.cls)) continue;
        const tp = (b[6] >> s.iou) & 1;
        drawBox(ctx, b, COLORS[b[4]], k, tp ? [] : [3, 3], `${tp ? "TP" : "FP"} ${classes[b[4]]} ${formatScore(b[5])}`,
          1.5);
        drawn += 1;
      }
    }
    panel.dataset.drawn = drawn;
    const c = counts(image, m, s);
    panel.dataset.predicted = c !== null;
    if (c !== null) { panel.dataset.tp = c.tp; panel.dataset.fp = c.fp; panel.dataset.fn = c.fn; }
    panel.querySelector(".drawn").textContent = c === null ? "not predicted"
      : `${drawn} boxes drawn at score \u2265 ${formatScore(thr)}; TP ${c.tp}, FP ${c.fp}, FN ${c.fn}`;
  });
}

function drawBox(ctx, box, color, k, dash, text, width) {
  ctx.save();
  ctx.strokeStyle = color;
  ctx.lineWidth = width / k;
  ctx.setLineDash(dash.map((d) => d / k));
  ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  if (text) {
    ctx.setLineDash([]);
    ctx.font = `${12 / k}px system-ui, sans-serif`;
    ctx.fillStyle = color;
    ctx.fillText(text, box[0] + 2 / k, box[1] - 3 / k);
  }
  ctx.restore();
}

// ------------------------------------------------------------------------------------------------ window/level
// Centre and width in the cache's intensities (0 to 255, or 65535 for a 16-bit cache). The browser draws a
// 16-bit PNG as 8 bits, so the window maps the drawn 8-bit values: v (0 to 1 as drawn) stands for v * max, and
// out = clamp((v * max - (centre - width / 2)) / width): an SVG linear transfer (slope, intercept) that the
// canvas applies as it draws (no pixel read-back: a page from file:// may not read its own images' pixels).
function setupWindow() {
  const max = 2 ** state.index.bits - 1;
  Object.assign($("wl-centre"), { min: 0, max: max, step: 0.5, value: max / 2 });
  Object.assign($("wl-width"), { min: 1, max: max, step: 1, value: max });
  const update = () => {
    $("wl-centre-value").textContent = $("wl-centre").value;
    $("wl-width-value").textContent = $("wl-width").value;
    draw();
  };
  for (const id of ["wl-centre", "wl-width"]) {
    $(id).addEventListener("input", update);
    $(id).disabled = !CAN_FILTER;
    if (!CAN_FILTER) $(id).title = "this browser cannot filter a canvas: window/level needs Chrome, Edge or Firefox";
  }
  $("wl-reset").addEventListener("click", () => {
    $("wl-centre").value = max / 2;
    $("wl-width").value = max;
    update();
  });
  update();
}

function windowFilter() {
  const max = 2 ** state.index.bits - 1;
  const centre = Number($("wl-centre").value), width = Number($("wl-width").value), low = centre - width / 2;
  if (!CAN_FILTER || (low === 0 && width === max)) return "none";  // the full range: the pixels as they are
  for (const f of document.querySelectorAll("#window-level feFuncR, #window-level feFuncG, #window-level feFuncB")) {
    f.setAttribute("slope", max / width);
    f.setAttribute("intercept", -low / width);
  }
  return "url(#window-level)";
}

// ------------------------------------------------------------------------------------------------ zoom, keys
function attachZoomPan(canvas) {
  let drag = null;
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    zoomAt(e.deltaY < 0 ? 1.25 : 0.8, canvas, e.offsetX, e.offsetY);
  }, { passive: false });
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY }; });
  window.addEventListener("mouseup", () => { drag = null; });
  canvas.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const k = state.view.zoom * canvas.width / state.current.w;
    const scale = canvas.width / canvas.clientWidth;
    state.view.cx -= (e.clientX - drag.x) * scale / k;
    state.view.cy -= (e.clientY - drag.y) * scale / k;
    drag = { x: e.clientX, y: e.clientY };
    draw();
  });
}

function zoomAt(factor, canvas, px, py) {
  const v = state.view, data = state.current;
  const k = v.zoom * canvas.width / data.w;
  const scale = canvas.width / canvas.clientWidth;
  // keep the image point under the cursor where it is
  const ix = v.cx + (px * scale - canvas.width / 2) / k, iy = v.cy + (py * scale - canvas.height / 2) / k;
  v.zoom = Math.min(Math.max(v.zoom * factor, 1), 32);
  const k2 = v.zoom * canvas.width / data.w;
  v.cx = ix - (px * scale - canvas.width / 2) / k2;
  v.cy = iy - (py * scale - canvas.height / 2) / k2;
  draw();
}

function keys(e) {
  if ($("case-view").hidden || ["SELECT", "INPUT", "TEXTAREA"].includes(e.target.tagName)) return;  // theirs
  const toggle = { g: "show-gt", r: "show-readers", d: "show-dets", h: "show-cam" }[e.key];
  if (toggle) { $(toggle).checked = !$(toggle).checked; draw(); return; }
  if (e.key === "ArrowRight" || e.key === "n") step(1);
  else if (e.key === "ArrowLeft" || e.key === "p") step(-1);
  else if (e.key === "Escape") location.hash = viewHash(null);
  else if (e.key === "+" || e.key === "=") zoomCentre(1.25);
  else if (e.key === "-") zoomCentre(0.8);
  else if (e.key === "0") { state.view = { zoom: 1, cx: null, cy: null }; draw(); }
}

function zoomCentre(factor) {
  state.view.zoom = Math.min(Math.max(state.view.zoom * factor, 1), 32);
  draw();
}

loadScript("data/index.js");
