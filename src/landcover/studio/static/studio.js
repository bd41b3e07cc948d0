// The studio's viewer: the imagery (and a class map over it) as tiles of the level that matches the zoom,
// requested as the view moves. Drag to pan, the wheel zooms about the pointer.
"use strict";
const view = document.getElementById("view");
const layers = { image: document.getElementById("image-layer"), map: document.getElementById("map-layer"),
                 model: document.getElementById("model-layer") };
const svg = document.getElementById("labels-layer");
const tiles = new Map();  // "layer/level/col/row" -> <img>
const stats = { requested: 0, loaded: 0, failed: 0, times: [] };
const state = { info: null, x: 0, y: 0, scale: 1, show: { image: true, map: true, model: true }, labels: [],
                stroke: null };
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
  for (const layer of ["image", "map", "model"]) {
    if (!state.show[layer] || (layer === "map" && !info.map) || (layer === "model" && !info.model_version)) continue;
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
          img.onload = () => { stats.loaded++; stats.times.push(performance.now() - started); status(); };
          img.onerror = () => { stats.failed++; status(); };
          img.src = `/tiles/${key}.png?v=${layer === "model" ? info.model_version : info.display.version}`;
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

function colour(name) { return state.info.classes.find((c) => c.name === name).color; }

function screen(p) {  // level-0 pixel coordinates -> the view's
  return [(p[0] - state.x) * state.scale + view.clientWidth / 2, (p[1] - state.y) * state.scale + view.clientHeight / 2];
}

function drawLabels() {
  const shapes = [];
  for (const label of [...state.labels, ...(state.stroke ? [state.stroke] : [])]) {
    const points = label.points.map(screen);
    const width = Math.max(2, label.width * state.scale);
    if (label.kind === "point") {
      shapes.push(`<circle cx="${points[0][0]}" cy="${points[0][1]}" r="${Math.max(6, width)}" fill="${colour(label.class)}"` +
                  ` stroke="black" stroke-width="2"/>`);
    } else {
      shapes.push(`<polyline points="${points.map((p) => p.join(",")).join(" ")}" fill="none" stroke="${colour(label.class)}"` +
                  ` stroke-width="${width}" stroke-linecap="round" stroke-linejoin="round"/>`);
    }
  }
  svg.innerHTML = shapes.join("");
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

async function retrain() {
  document.getElementById("label-status").textContent = "retraining...";
  const response = await fetch("/api/retrain", { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: "{}" });
  const answer = await response.json();
  if (!response.ok) { say(answer.error); document.getElementById("label-status").textContent = ""; return; }
  say("");
  state.info.model_version = answer.model_version;
  document.getElementById("model-controls").hidden = false;
  document.getElementById("label-status").textContent = `trained on ${answer.pixels} pixels in ${answer.seconds} s`;
  for (const [key, img] of tiles) if (key.startsWith("model/")) { img.remove(); tiles.delete(key); }
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
  layers.map.style.opacity = document.getElementById("map-opacity").value / 100;
  document.getElementById("label-controls").hidden = !info.classes.length;
  const picker = document.getElementById("class");
  picker.replaceChildren(...info.classes.map((c) => new Option(c.name, c.name)));
  document.getElementById("model-controls").hidden = !info.model_version;
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
  state.scale = Math.min(view.clientWidth / info.size[1], view.clientHeight / info.size[0]);
  state.x = info.size[1] / 2;
  state.y = info.size[0] / 2;
  controls();
  state.labels = info.labels ? info.labels.labels : [];
  let drag = null;
  view.addEventListener("mousedown", (e) => {
    const picked = document.getElementById("class").value;
    if (tool() === "point") {
      state.labels.push({ class: picked, kind: "point", points: [where(e)], width: 1 });
      saveLabels();
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
    if (state.stroke) { state.labels.push(state.stroke); state.stroke = null; saveLabels(); }
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
  for (const layer of ["image", "map", "model"]) {
    document.getElementById(`show-${layer}`).addEventListener("change", (e) => {
      state.show[layer] = e.target.checked;
      render();
    });
  }
  document.getElementById("map-opacity").addEventListener("input", (e) => {
    layers.map.style.opacity = e.target.value / 100;
  });
  document.getElementById("apply-display").addEventListener("click", applyDisplay);
  document.getElementById("undo").addEventListener("click", () => { state.labels.pop(); saveLabels(); });
  document.getElementById("retrain").addEventListener("click", retrain);
  for (const radio of document.querySelectorAll("input[name=tool]")) {
    radio.addEventListener("change", () => view.classList.toggle("drawing", tool() !== "pan"));
  }
  drawLabels();
  render();
}

window.studio.zoomAt = zoomAt;
window.studio.screen = screen;
window.studio.panTo = (x, y) => { state.x = x; state.y = y; render(); };
start().catch((e) => say(String(e)));
