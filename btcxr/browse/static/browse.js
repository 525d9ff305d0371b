// btcxr case browser: plain JavaScript, no network. Data files call btcxrData(...) (a page opened from
// file:// may load scripts but not fetch JSON). Counts follow detect/counts.py: a detection is a true positive
// at IoU option i when bit i of its flag is set; a score threshold keeps the matches of the detections above it.
"use strict";

const state = {
  index: null, cases: {}, waiting: {}, order: [], position: -1,
  sort: { key: "worst", model: 0, desc: true },
  view: { zoom: 1, cx: null, cy: null }, camChoice: {}, hiddenClasses: new Set(),
};
const $ = (id) => document.getElementById(id);
const COLORS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
  "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8"];

window.btcxrData = function (data) {
  if (data.images) { state.index = data; start(); return; }
  state.cases[data.id] = data;
  const done = state.waiting[data.id];
  delete state.waiting[data.id];
  if (done) done(data);
};

function loadScript(src) {
  const tag = document.createElement("script");
  tag.src = src;
  document.head.appendChild(tag);
}

function settings() {
  return { iou: Number($("iou").value), score: Number($("score").value), cls: Number($("class").value),
    finding: $("finding").value, split: $("split").value };
}

// ------------------------------------------------------------------------------------------------ counts
function counts(image, m, s) {
  const d = image.models[m];
  let tp = 0, n = 0;
  for (let i = 0; i < d.s.length; i++) {
    if (d.s[i] < s.score || (s.cls >= 0 && d.c[i] !== s.cls)) continue;
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
  if (s.cls >= 0 && !image.gt.includes(s.cls) && !image.models.some((m, k) => counts(image, k, s).n > 0)) return false;
  return true;
}

// ------------------------------------------------------------------------------------------------ index
function start() {
  const ix = state.index;
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
  for (const id of ["iou", "class", "finding", "split"]) $(id).addEventListener("change", refresh);
  $("score").addEventListener("input", refresh);
  $("sort").addEventListener("change", () => {
    const [key, model] = $("sort").value.split(":");
    state.sort = { key: key, model: Number(model || 0), desc: key !== "id" };
    refresh();
  });
  for (const id of ["show-gt", "show-readers", "show-dets", "show-cam", "opacity"]) $(id).addEventListener("input", draw);
  $("back").addEventListener("click", () => { location.hash = ""; });
  $("home").addEventListener("click", (e) => { e.preventDefault(); location.hash = ""; });
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("reset").addEventListener("click", () => { state.view = { zoom: 1, cx: null, cy: null }; draw(); });
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", keys);
  window.addEventListener("resize", draw);
  buildClassToggles();
  refresh();
  route();
}

function header() {
  const ix = state.index;
  let html = "<tr><th rowspan=2 data-key=rank>#</th><th rowspan=2 data-key=id>image</th><th rowspan=2>split</th>" +
    "<th rowspan=2>ground truth</th>";
  ix.models.forEach((name) => { html += `<th colspan=3>${escapeHtml(name)}</th>`; });
  html += "</tr><tr>";
  ix.models.forEach((name, m) => {
    for (const k of ["tp", "fp", "fn"]) html += `<th data-key=${k} data-model=${m}>${k.toUpperCase()}</th>`;
  });
  return html + "</tr>";
}

function refresh() {
  const s = settings(), ix = state.index;
  $("score-value").textContent = s.score.toFixed(2);
  const rows = ix.images.filter((img) => visible(img, s)).map((img) => ({
    img: img, c: ix.models.map((_, m) => counts(img, m, s)) }));
  const { key, model, desc } = state.sort;
  const value = (r) => key === "worst" ? r.c[model].fp + r.c[model].fn
    : key === "id" ? r.img.id : r.c[model][key];
  rows.sort((a, b) => {
    const va = value(a), vb = value(b);
    const order = va < vb ? -1 : va > vb ? 1 : (a.img.id < b.img.id ? -1 : 1);
    return desc && va !== vb ? -order : order;
  });
  state.order = rows.map((r) => r.img.id);
  $("cases").tHead.innerHTML = header();
  for (const th of $("cases").tHead.querySelectorAll("th[data-key]")) th.addEventListener("click", () => sortBy(th));
  const parts = rows.map((r, i) => {
    const findings = [...new Set(r.img.gt)].map((c) => ix.classes[c]).join(", ") || "no finding";
    const cells = r.c.map((c) => `<td class=tp>${c.tp}</td><td class="fp${c.fp ? " bad" : ""}">${c.fp}</td>` +
      `<td class="fn${c.fn ? " bad" : ""}">${c.fn}</td>`).join("");
    return `<tr data-id="${escapeHtml(r.img.id)}"><td>${i + 1}</td><td class=id><a href="#case=${encodeURIComponent(r.img.id)}">` +
      `${escapeHtml(r.img.id)}</a></td><td>${r.img.split}</td><td class=findings>${escapeHtml(findings)}</td>${cells}</tr>`;
  });
  $("cases").tBodies[0].innerHTML = parts.join("");
  const total = ix.models.map((name, m) => {
    const t = rows.reduce((acc, r) => ({ tp: acc.tp + r.c[m].tp, fp: acc.fp + r.c[m].fp, fn: acc.fn + r.c[m].fn }),
      { tp: 0, fp: 0, fn: 0 });
    return `${escapeHtml(name)}: TP ${t.tp}, FP ${t.fp}, FN ${t.fn}`;
  });
  $("summary").innerHTML = `${rows.length} of ${ix.images.length} images at IoU &ge; ${ix.iou[s.iou].toFixed(2)}, ` +
    `score &ge; ${s.score.toFixed(2)}. ${total.join("; ")}.`;
  if (!$("case-view").hidden) draw();
}

function sortBy(th) {
  const key = th.dataset.key === "rank" ? "worst" : th.dataset.key;
  const model = Number(th.dataset.model || state.sort.model);
  const same = state.sort.key === key && state.sort.model === model;
  state.sort = { key: key, model: model, desc: same ? !state.sort.desc : key !== "id" };
  refresh();
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// ------------------------------------------------------------------------------------------------ case view
function route() {
  const match = location.hash.match(/^#case=(.+)$/);
  if (!match) {
    $("case-view").hidden = true;
    $("index-view").hidden = false;
    return;
  }
  const id = decodeURIComponent(match[1]);
  const image = state.index.images.find((img) => img.id === id);
  if (!image) { location.hash = ""; return; }
  $("index-view").hidden = true;
  $("case-view").hidden = false;
  state.position = state.order.indexOf(id);
  $("case-id").textContent = id;
  $("case-position").textContent = state.position >= 0 ? `(${state.position + 1} of ${state.order.length})` : "";
  state.view = { zoom: 1, cx: null, cy: null };
  const show = (data) => { state.current = data; buildPanels(data); draw(); };
  if (state.cases[id]) { show(state.cases[id]); return; }
  state.waiting[id] = show;
  loadScript(`data/cases/${image.file}.js`);
}

function step(delta) {
  if (!state.order.length) return;
  // the index may have been re-sorted since this image opened (a moved threshold): step from where it is now
  const here = state.current ? state.order.indexOf(state.current.id) : -1;
  const next = Math.min(Math.max((here >= 0 ? here : state.position) + delta, 0), state.order.length - 1);
  location.hash = `case=${encodeURIComponent(state.order[next])}`;
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
  state.heat = {};
  data.models.forEach((model, m) => {
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.dataset.model = model.label;
    const options = model.cams.map((cam, k) => `<option value=${k}>${escapeHtml(state.index.classes[cam.c])} ` +
      `${cam.s.toFixed(2)}</option>`).join("");
    panel.innerHTML = `<div class=caption><strong>${escapeHtml(model.label)}</strong><span class=drawn></span></div>` +
      `<canvas></canvas><div class=caption><span>heatmap: ${model.cams.length ? `<select>${options}</select>` :
        "none explained"}</span></div>`;
    const select = panel.querySelector("select");
    if (select) {
      select.value = state.camChoice[model.label] || 0;
      select.addEventListener("change", () => { state.camChoice[model.label] = Number(select.value); draw(); });
    }
    attachZoomPan(panel.querySelector("canvas"));
    panels.appendChild(panel);
  });
}

function heatmapImage(path) {
  if (!state.heat[path]) {
    const img = new Image();
    img.onload = draw;
    img.src = path;
    state.heat[path] = img;
  }
  return state.heat[path];
}

function draw() {
  const data = state.current;
  if (!data || $("case-view").hidden) return;
  const s = settings(), v = state.view;
  if (v.cx === null) { v.cx = data.w / 2; v.cy = data.h / 2; }
  const panels = [...$("panels").children];
  panels.forEach((panel, m) => {
    const canvas = panel.querySelector("canvas");
    const width = Math.max(canvas.clientWidth, 100);
    canvas.width = width;
    canvas.height = Math.round(width * data.h / data.w);
    const ctx = canvas.getContext("2d");
    const k = v.zoom * width / data.w;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(k, 0, 0, k, canvas.width / 2 - v.cx * k, canvas.height / 2 - v.cy * k);
    if (state.image.complete && state.image.naturalWidth) ctx.drawImage(state.image, 0, 0, data.w, data.h);
    const model = data.models[m];
    if ($("show-cam").checked && model.cams.length) {
      const cam = model.cams[state.camChoice[model.label] || 0] || model.cams[0];
      const heat = heatmapImage(cam.heatmap);
      if (heat.complete && heat.naturalWidth) {
        ctx.globalAlpha = Number($("opacity").value);
        ctx.drawImage(heat, 0, 0, data.w, data.h);
        ctx.globalAlpha = 1;
      }
      drawBox(ctx, cam.box, "#ffffff", k, [2, 2], null, 2.5);
    }
    if ($("show-readers").checked) {
      for (const r of data.readers) {
        if (!state.hiddenClasses.has(r[4])) drawBox(ctx, r, "#ff9f1c", k, [], r[5], 1);
      }
    }
    if ($("show-gt").checked) {
      for (const g of data.gt) {
        if (!state.hiddenClasses.has(g[4])) drawBox(ctx, g, "#36e26b", k, [6, 4], state.index.classes[g[4]], 2);
      }
    }
    let drawn = 0;
    if ($("show-dets").checked) {
      for (const b of model.boxes) {
        if (b[5] < s.score || state.hiddenClasses.has(b[4]) || (s.cls >= 0 && b[4] !== s.cls)) continue;
        const tp = (b[6] >> s.iou) & 1;
        drawBox(ctx, b, tp ? "#22d3ee" : "#ff4d4f", k, [], `${state.index.classes[b[4]]} ${b[5].toFixed(2)}`, 1.5);
        drawn += 1;
      }
    }
    panel.dataset.drawn = drawn;
    const image = state.index.images.find((img) => img.id === data.id);
    const c = counts(image, m, s);
    panel.dataset.tp = c.tp; panel.dataset.fp = c.fp; panel.dataset.fn = c.fn;
    panel.querySelector(".drawn").textContent = `${drawn} boxes drawn; TP ${c.tp}, FP ${c.fp}, FN ${c.fn}`;
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
  else if (e.key === "Escape") location.hash = "";
  else if (e.key === "+" || e.key === "=") zoomCentre(1.25);
  else if (e.key === "-") zoomCentre(0.8);
  else if (e.key === "0") { state.view = { zoom: 1, cx: null, cy: null }; draw(); }
}

function zoomCentre(factor) {
  state.view.zoom = Math.min(Math.max(state.view.zoom * factor, 1), 32);
  draw();
}

loadScript("data/index.js");
