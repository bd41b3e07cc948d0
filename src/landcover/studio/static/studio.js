// The studio's viewer: the imagery (and class maps over it) as tiles of the level that matches the zoom,
// requested as the view moves. Drag to pan, the wheel zooms about the pointer. Labels (points, strokes, polygons)
// are sent whole to the server as they change; retrain, suggest and map all are the server's.
"use strict";
const view = document.getElementById("view");
const LAYERS = ["image", "reference", "map", "model", "uncertainty"];
const layers = Object.fromEntries(LAYERS.map((name) => [name, document.getElementById(`${name}-layer`)]));
const svg = document.getElementById("labels-layer");
const tiles = new Map();  // "layer/level/col/row" -> <img>
const stats = { requested: 0, loaded: 0, failed: 0, times: [], lastLoaded: 0, retrained: 0 };
const state = { info: null, x: 0, y: 0, scale: 1, labels: [], stroke: null, polygon: null, suggestions: [],
                show: { image: true, reference: false, map: true, model: true, uncertainty: false } };
window.studio = { stats, state };  // what a scripted session reads

function say(text) { document.getElementById("message").textContent = text || ""; }

function level() {  // the coarsest level whose pixels are no larger than a screen pixel
  const L = Math.floor(Math.log2(1 / state.scale));
  return Math.max(0, Math.min(state.info.levels - 1, L));
}

function render() {
  const info = state.info, L = level(), T = info.tile_px, span = T * 2 ** L;
  const w = view.clientWidth, h = view.clientHeight;
  const x0 = state.x - w / 2 / state.scale, y0 = state.y - h / 2 / state.scale;
  const cols = Math.ceil(info.size[1] / span), rows = Math.ceil(info.size[0] / span);
  const c0 = Math.max(0, Math.floor(x0 / span)), c1 = Math.min(cols - 1, Math.floor((x0 + w / state.scale) / span));
  const r0 = Math.max(0, Math.floor(y0 / span)), r1 = Math.min(rows - 1, Math.floor((y0 + h / state.scale) / span));
  const wanted = new Set();
  for (const layer of LAYERS) {
    if (!state.show[layer] || !available(layer)) continue;
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const key = `${layer}/${L}/${c}/${r}`;
        wanted.add(key);
        let img = tiles.get(key);
        if (!img) {
          img = new Image();
          img.className = "tile";
          const started = performance.now();
          stats.requested++;
          img.onload = () => {
            stats.loaded++;
            stats.lastLoaded = performance.now();
            stats.times.push(stats.lastLoaded - started);
            status();
          };
          img.onerror = () => { stats.failed++; status(); };
          img.src = `/tiles/${key}.png?v=${version(layer)}`;
          layers[layer].appendChild(img);
          tiles.set(key, img);
        }
        const size = span * state.scale;
        img.style.left = `${(c * span - x0) * state.scale}px`;
        img.style.top = `${(r * span - y0) * state.scale}px`;
        img.style.width = img.style.height = `${size}px`;
      }
    }
  }
  for (const [key, img] of tiles) {
    if (!wanted.has(key)) { img.remove(); tiles.delete(key); }
  }
  drawLabels();
  status();
}

function available(layer) {
  const info = state.info;
  return { image: true, reference: Boolean(info.reference && info.reference.layer), map: Boolean(info.map),
           model: info.model_version > 0, uncertainty: info.model_version > 0 }[layer];
}

function version(layer) {
  const info = state.info;
  return { image: info.display.version, reference: 0, map: info.map ? info.map.version : 0,
           model: info.model_version, uncertainty: info.model_version }[layer];
}

function dropTiles(layer) {
  for (const [key, img] of tiles) if (key.startsWith(`${layer}/`)) { img.remove(); tiles.delete(key); }
}

function colour(name) { return state.info.classes.find((c) => c.name === name).color; }

function screen(p) {  // level-0 pixel coordinates -> the view's
  return [(p[0] - state.x) * state.scale + view.clientWidth / 2, (p[1] - state.y) * state.scale + view.clientHeight / 2];
}

function drawLabels() {
  const shapes = [];
  for (const label of [...state.labels, ...(state.stroke ? [state.stroke] : [])]) {
    const points = label.points.map(screen);
    const width = Math.max(2, label.width * state.scale);
    if (label.kind === "polygon") {
      shapes.push(`<polygon points="${points.map((p) => p.join(",")).join(" ")}" fill="${colour(label.class)}"` +
                  ` fill-opacity="0.4" stroke="${colour(label.class)}" stroke-width="2"/>`);
    } else if (label.kind === "point") {
      shapes.push(`<circle cx="${points[0][0]}" cy="${points[0][1]}" r="${Math.max(6, width)}" fill="${colour(label.class)}"` +
                  ` stroke="black" stroke-width="2"/>`);
    } else {
      shapes.push(`<polyline points="${points.map((p) => p.join(",")).join(" ")}" fill="none" stroke="${colour(label.class)}"` +
                  ` stroke-width="${width}" stroke-linecap="round" stroke-linejoin="round"/>`);
    }
  }
  if (state.polygon) {
    const points = state.polygon.points.map(screen);
    shapes.push(`<polyline points="${points.map((p) => p.join(",")).join(" ")}" fill="none" stroke="white"` +
                ` stroke-width="2" stroke-dasharray="4 3"/>`);
  }
  state.suggestions.forEach((p, i) => {
    const [x, y] = screen(p);
    shapes.push(`<circle class="suggestion" cx="${x}" cy="${y}" r="9" fill="none" stroke="black" stroke-width="4"/>` +
                `<circle cx="${x}" cy="${y}" r="9" fill="none" stroke="yellow" stroke-width="2"/>` +
                `<text x="${x + 11}" y="${y - 8}" fill="yellow" stroke="black" stroke-width="0.6" font-size="13"` +
                ` font-weight="bold">${i + 1}</text>`);
  });
  svg.innerHTML = shapes.join("");
}

function hit(label, at) {  // whether a point of the view (screen coordinates) falls on a label
  const points = label.points.map(screen);
  if (label.kind === "polygon") {
    let inside = false;
    for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
      const [xi, yi] = points[i], [xj, yj] = points[j];
      if ((yi > at[1]) !== (yj > at[1]) && at[0] < ((xj - xi) * (at[1] - yi)) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }
  const reach = Math.max(6, label.width * state.scale / 2) + 3;
  if (points.length === 1) return Math.hypot(points[0][0] - at[0], points[0][1] - at[1]) <= reach;
  for (let i = 1; i < points.length; i++) {
    const [ax, ay] = points[i - 1], [bx, by] = points[i];
    const t = Math.max(0, Math.min(1, ((at[0] - ax) * (bx - ax) + (at[1] - ay) * (by - ay)) /
                                      Math.max(1e-9, (bx - ax) ** 2 + (by - ay) ** 2)));
    if (Math.hypot(ax + t * (bx - ax) - at[0], ay + t * (by - ay) - at[1]) <= reach) return true;
  }
  return false;
}

function addLabel(label) {  // a new label, drawn at once (the server's answer may come later); suggestions it answers are done
  state.labels.push(label);
  const near = Math.max(1.5, 8 / state.scale);
  state.suggestions = state.suggestions.filter((s) => !label.points.some((p) => Math.hypot(p[0] - s[0], p[1] - s[1]) <= near));
  drawLabels();
  saveLabels();
}

function where(e) {  // a pointer event's level-0 pixel coordinates
  const box = view.getBoundingClientRect();
  return [state.x + (e.clientX - box.left - view.clientWidth / 2) / state.scale,
          state.y + (e.clientY - box.top - view.clientHeight / 2) / state.scale];
}

function tool() { return document.querySelector("input[name=tool]:checked").value; }

async function saveLabels() {
  const response = await fetch("/api/labels", { method: "POST", headers: { "Content-Type": "application/json" },
                                                body: JSON.stringify({ labels: state.labels }) });
  let answer = await response.json();
  if (!response.ok) {  // refused (a click off the imagery, say): back to the labels the server keeps
    say(answer.error);
    answer = (await (await fetch("/api/info")).json()).labels;
    state.labels = answer.labels;
  } else {
    say("");
  }
  document.getElementById("label-status").textContent =
    Object.entries(answer.per_class).filter(([, n]) => n).map(([c, n]) => `${c} ${n}`).join(", ");
  drawLabels();
}

async function post(path, body) {  // the answer's JSON, or null (its error shown)
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify(body) });
  const answer = await response.json();
  say(response.ok ? "" : answer.error);
  return response.ok ? answer : null;
}

async function suggest() {
  const count = Number(document.getElementById("suggest-count").value);
  document.getElementById("suggest-status").textContent = "looking...";
  const answer = await post("/api/suggest", { count });
  if (!answer) { document.getElementById("suggest-status").textContent = ""; return; }
  state.suggestions = answer.places;
  document.getElementById("suggest-status").textContent =
    `${answer.places.length} places (half drawn by how unsure the model is, half at random): label each, "next" goes there`;
  drawLabels();
}

function fit() {  // the whole raster in the view
  const info = state.info;
  state.scale = Math.min(view.clientWidth / info.size[1], view.clientHeight / info.size[0]);
  state.x = info.size[1] / 2;
  state.y = info.size[0] / 2;
  render();
}

function nextSuggestion() {
  if (!state.suggestions.length) return;
  state.scale = Math.max(state.scale, 2);
  window.studio.panTo(...state.suggestions[0]);
}

async function mapAll() {
  const answer = await post("/api/map", { crf: document.getElementById("crf").checked });
  if (answer) followMapping(answer);
}

function followMapping(job) {  // the page follows Map all until it ends
  const status = document.getElementById("map-status");
  document.getElementById("map-all").disabled = job.state === "running";
  if (job.state === "running") {
    const share = job.total ? job.done / job.total : 0;
    status.innerHTML = `${job.stage}... <progress value="${share}" max="1"></progress>`;
    setTimeout(async () => followMapping(await (await fetch("/api/map")).json()), 500);
    return;
  }
  if (job.state === "failed") { status.textContent = ""; say(`map all failed: ${job.message}`); return; }
  if (job.state !== "done") return;
  status.textContent = `${job.model_version ? `map of model ${job.model_version}` : "the bundle's map"} written in ` +
    `${job.seconds} s: ${job.files.join(", ")}` +
    (job.crf ? " (refined with the CRF)" : "");
  showAssessment(job.assessment);
  fetch("/api/info").then((r) => r.json()).then((info) => {
    const fresh = !state.info.map || info.map.version !== state.info.map.version;
    state.info = { ...info, display: state.info.display };
    if (fresh) { dropTiles("map"); controls(); render(); }
  });
}

function showAssessment(a) {
  const box = document.getElementById("assessment");
  box.hidden = !a;
  if (!a) return;
  const f = (v, d = 3) => (v === null ? "-" : v.toFixed(d));
  const ha = (v) => (v === null ? "-" : Math.round(v).toLocaleString("en"));
  box.innerHTML = `<p><b>accuracy ${f(a.overall_accuracy)}</b> ± ${f(a.overall_accuracy_ci95)} (95% CI, area-adjusted;` +
    ` kappa ${f(a.kappa, 2)}) on ${a.samples.toLocaleString("en")} reference pixels of ${a.reference}</p>` +
    "<table><tr><th>class</th><th>user's</th><th>producer's</th><th>mapped ha</th><th>estimated ha</th></tr>" +
    a.classes.map((c) => `<tr><td>${c.class}</td><td>${f(c.users, 2)}</td><td>${f(c.producers, 2)}</td>` +
                         `<td>${ha(c.mapped_ha)}</td><td>${ha(c.estimated_ha)} ± ${ha(c.estimated_ha_ci95)}</td></tr>`).join("") +
    "</table>";
}

async function retrain() {
  document.getElementById("label-status").textContent = "retraining...";
  const response = await fetch("/api/retrain", { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: "{}" });
  const answer = await response.json();
  if (!response.ok) { say(answer.error); document.getElementById("label-status").textContent = ""; return; }
  say("");
  stats.retrained = performance.now();  // the view's re-mapping is timed from here to its last tile (bench)
  state.info.model_version = answer.model_version;
  controls();
  const context = answer.context;  // with --bundle: the share of its probabilities that fits the labels best
  const kept = context ? `; the bundle's share ${context.share}` : "";
  document.getElementById("label-status").textContent =
    `trained on ${answer.pixels} pixels in ${answer.seconds} s${kept}`;
  dropTiles("model");
  dropTiles("uncertainty");
  render();
}

function status() {
  const t = [...stats.times].sort((a, b) => a - b);
  const p95 = t.length ? t[Math.min(t.length - 1, Math.floor(0.95 * t.length))].toFixed(0) : "-";
  document.getElementById("status").textContent =
    `level ${state.info ? level() : "-"}; tiles ${stats.loaded} of ${stats.requested} loaded, p95 ${p95} ms`;
}

function zoomAt(px, py, factor) {  // keep the point under (px, py) where it is
  const w = view.clientWidth, h = view.clientHeight;
  const gx = state.x + (px - w / 2) / state.scale, gy = state.y + (py - h / 2) / state.scale;
  state.scale = Math.max(1 / 2 ** (state.info.levels + 1), Math.min(16, state.scale * factor));
  state.x = gx - (px - w / 2) / state.scale;
  state.y = gy - (py - h / 2) / state.scale;
  render();
}

function controls() {
  const info = state.info;
  document.getElementById("source").textContent =
    `${info.size[1]} x ${info.size[0]} px, ${info.band_count} bands, ${info.res} m, ${info.levels} levels`;
  document.getElementById("bands").value = info.display.bands.join(" ");
  document.getElementById("low").value = info.display.percentiles[0];
  document.getElementById("high").value = info.display.percentiles[1];
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  document.getElementById("map-controls").hidden = !info.map;
  for (const c of (info.map ? info.map.classes : [])) {
    const item = document.createElement("li"), swatch = document.createElement("span");
    swatch.style.background = c.color;
    item.append(swatch, c.name);
    legend.appendChild(item);
  }
  document.getElementById("label-controls").hidden = !info.classes.length;
  const picker = document.getElementById("class");
  picker.replaceChildren(...info.classes.map((c) => new Option(c.name, c.name)));
  document.getElementById("reference-controls").hidden = !available("reference");
  for (const id of ["model-controls", "suggest-controls", "map-all-controls"]) {
    document.getElementById(id).hidden = !info.model_version;
  }
}

async function applyDisplay() {
  const bands = document.getElementById("bands").value.trim().split(/[\s,]+/).map(Number);
  const percentiles = [Number(document.getElementById("low").value), Number(document.getElementById("high").value)];
  const response = await fetch("/api/display", { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: JSON.stringify({ bands, percentiles }) });
  const answer = await response.json();
  if (!response.ok) { say(answer.error); return; }
  say("");
  state.info = answer;
  for (const [key, img] of tiles) if (key.startsWith("image/")) { img.remove(); tiles.delete(key); }
  controls();
  render();
}

async function start() {
  const response = await fetch("/api/info");
  state.info = await response.json();
  const info = state.info;
  controls();
  state.labels = info.labels ? info.labels.labels : [];
  let drag = null;
  view.addEventListener("mousedown", (e) => {
    const picked = document.getElementById("class").value;
    if (tool() === "point") {
      addLabel({ class: picked, kind: "point", points: [where(e)], width: 1 });
    } else if (tool() === "polygon") {
      if (!state.polygon) state.polygon = { class: picked, kind: "polygon", points: [], width: 1 };
      state.polygon.points.push(where(e));
      drawLabels();
    } else if (tool() === "erase") {
      const box = view.getBoundingClientRect(), at = [e.clientX - box.left, e.clientY - box.top];
      const index = state.labels.findLastIndex((label) => hit(label, at));
      if (index >= 0) { state.labels.splice(index, 1); saveLabels(); }
    } else if (tool() === "stroke") {
      state.stroke = { class: picked, kind: "stroke", points: [where(e)], width: 3 };
    } else {
      drag = [e.clientX, e.clientY];
      view.classList.add("dragging");
    }
  });
  window.addEventListener("mouseup", () => {
    drag = null;
    view.classList.remove("dragging");
    if (state.stroke) { const done = state.stroke; state.stroke = null; addLabel(done); }
  });
  view.addEventListener("dblclick", () => {  // closes a polygon (the double click's second press added a corner)
    if (!state.polygon) return;
    const done = state.polygon;
    state.polygon = null;
    const p = done.points, last = p.length - 1;
    if (last > 0 && Math.hypot(p[last][0] - p[last - 1][0], p[last][1] - p[last - 1][1]) * state.scale < 4) p.pop();
    if (p.length >= 3) addLabel(done); else drawLabels();
  });
  window.addEventListener("mousemove", (e) => {
    if (state.stroke) { state.stroke.points.push(where(e)); drawLabels(); return; }
    if (!drag) return;
    state.x -= (e.clientX - drag[0]) / state.scale;
    state.y -= (e.clientY - drag[1]) / state.scale;
    drag = [e.clientX, e.clientY];
    render();
  });
  view.addEventListener("wheel", (e) => {
    e.preventDefault();
    const box = view.getBoundingClientRect();
    zoomAt(e.clientX - box.left, e.clientY - box.top, Math.exp(-e.deltaY * 0.002));
  }, { passive: false });
  window.addEventListener("resize", render);
  for (const layer of LAYERS) {
    document.getElementById(`show-${layer}`).addEventListener("change", (e) => {
      state.show[layer] = e.target.checked;
      render();
    });
  }
  for (const layer of ["map", "reference", "model"]) {
    const slider = document.getElementById(`${layer}-opacity`);
    layers[layer].style.opacity = slider.value / 100;
    slider.addEventListener("input", (e) => { layers[layer].style.opacity = e.target.value / 100; });
  }
  document.getElementById("apply-display").addEventListener("click", applyDisplay);
  document.getElementById("undo").addEventListener("click", () => { state.labels.pop(); saveLabels(); });
  document.getElementById("retrain").addEventListener("click", retrain);
  document.getElementById("suggest").addEventListener("click", suggest);
  document.getElementById("next-suggestion").addEventListener("click", nextSuggestion);
  document.getElementById("map-all").addEventListener("click", mapAll);
  for (const radio of document.querySelectorAll("input[name=tool]")) {
    radio.addEventListener("change", () => {
      view.classList.toggle("drawing", tool() !== "pan");
      state.polygon = null;
      drawLabels();
    });
  }
  followMapping(info.mapping);
  fit();
}

window.studio.zoomAt = zoomAt;
window.studio.fit = fit;
window.studio.screen = screen;
window.studio.panTo = (x, y) => { state.x = x; state.y = y; render(); };
start().catch((e) => say(String(e)));
