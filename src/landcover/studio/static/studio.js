// The studio's viewer: the imagery (and a class map over it) as tiles of the level that matches the zoom,
// requested as the view moves. Drag to pan, the wheel zooms about the pointer.
"use strict";
const view = document.getElementById("view");
const layers = { image: document.getElementById("image-layer"), map: document.getElementById("map-layer") };
const tiles = new Map();  // "layer/level/col/row" -> <img>
const stats = { requested: 0, loaded: 0, failed: 0, times: [] };
const state = { info: null, x: 0, y: 0, scale: 1, show: { image: true, map: true } };
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
  for (const layer of ["image", "map"]) {
    if (!state.show[layer] || (layer === "map" && !info.map)) continue;
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
          img.src = `/tiles/${key}.png?v=${info.display.version}`;
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
  status();
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
  let drag = null;
  view.addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY]; view.classList.add("dragging"); });
  window.addEventListener("mouseup", () => { drag = null; view.classList.remove("dragging"); });
  window.addEventListener("mousemove", (e) => {
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
  for (const layer of ["image", "map"]) {
    document.getElementById(`show-${layer}`).addEventListener("change", (e) => {
      state.show[layer] = e.target.checked;
      render();
    });
  }
  document.getElementById("map-opacity").addEventListener("input", (e) => {
    layers.map.style.opacity = e.target.value / 100;
  });
  document.getElementById("apply-display").addEventListener("click", applyDisplay);
  render();
}

window.studio.zoomAt = zoomAt;
window.studio.panTo = (x, y) => { state.x = x; state.y = y; render(); };
start().catch((e) => say(String(e)));
