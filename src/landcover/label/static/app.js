// The labelling page: strokes drawn over the image in display pixels, sent to the server to run the CRF.
"use strict";
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const state = { info: null, image: new Image(), overlay: null, strokes: [], current: null, cls: null,
                mode: "draw", view: { scale: 1, x: 0, y: 0 }, drag: null, busy: false };

function setStatus(text, error) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = error ? "error" : "";
}

function fit() {
  const rect = canvas.getBoundingClientRect();
  canvas.width = rect.width;
  canvas.height = rect.height;
  if (!state.info) return;
  const s = Math.min(rect.width / state.info.width, rect.height / state.info.height);
  state.view = { scale: s, x: (rect.width - s * state.info.width) / 2, y: (rect.height - s * state.info.height) / 2 };
  draw();
}

function toImage(event) {
  const rect = canvas.getBoundingClientRect();
  const v = state.view;
  return [(event.clientX - rect.left - v.x) / v.scale, (event.clientY - rect.top - v.y) / v.scale];
}

function colorOf(name) {
  return state.info.classes.find((c) => c.name === name).color;
}

function draw() {
  const v = state.view;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.setTransform(v.scale, 0, 0, v.scale, v.x, v.y);
  ctx.imageSmoothingEnabled = false;
  if (state.image.complete) ctx.drawImage(state.image, 0, 0);
  if (state.overlay && document.getElementById("show-result").checked) {
    ctx.globalAlpha = 0.6;
    ctx.drawImage(state.overlay, 0, 0);
    ctx.globalAlpha = 1;
  }
  for (const stroke of state.strokes.concat(state.current ? [state.current] : [])) {
    ctx.strokeStyle = colorOf(stroke.class);
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineWidth = stroke.width;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    stroke.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (stroke.points.length === 1) {
      ctx.arc(stroke.points[0][0], stroke.points[0][1], stroke.width / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.stroke();
    }
  }
}

function inside([x, y]) {
  return x >= 0 && y >= 0 && x <= state.info.width && y <= state.info.height;
}

function brush() {
  return Number(document.getElementById("brush").value) / state.view.scale;
}

function erase(point) {
  const r = brush() / 2;
  state.strokes = state.strokes.filter((s) => !s.points.some(([x, y]) =>
    Math.hypot(x - point[0], y - point[1]) <= r + s.width / 2));
}

canvas.addEventListener("pointerdown", (event) => {
  if (!state.info) return;
  canvas.setPointerCapture(event.pointerId);
  if (state.mode === "pan" || event.button === 1) {
    state.drag = { x: event.clientX, y: event.clientY, vx: state.view.x, vy: state.view.y };
    return;
  }
  const point = toImage(event);
  if (!inside(point)) return;
  if (state.mode === "erase") {
    erase(point);
    state.drag = { erase: true };
  } else {
    state.current = { class: state.cls, width: brush(), points: [point] };
  }
  draw();
});

canvas.addEventListener("pointermove", (event) => {
  if (state.drag && state.drag.erase) {
    erase(toImage(event));
    draw();
  } else if (state.drag) {
    state.view.x = state.drag.vx + event.clientX - state.drag.x;
    state.view.y = state.drag.vy + event.clientY - state.drag.y;
    draw();
  } else if (state.current) {
    const point = toImage(event);
    if (inside(point)) {
      state.current.points.push(point);
      draw();
    }
  }
});

canvas.addEventListener("pointerup", () => {
  if (state.current) state.strokes.push(state.current);
  state.current = null;
  state.drag = null;
  draw();
});

canvas.addEventListener("wheel", (event) => {
  event.preventDefault();
  const rect = canvas.getBoundingClientRect();
  const mx = event.clientX - rect.left, my = event.clientY - rect.top;
  const factor = event.deltaY < 0 ? 1.25 : 0.8;
  const v = state.view;
  v.x = mx - (mx - v.x) * factor;
  v.y = my - (my - v.y) * factor;
  v.scale *= factor;
  draw();
}, { passive: false });

function setMode(mode) {
  state.mode = state.mode === mode ? "draw" : mode;
  document.getElementById("erase").classList.toggle("on", state.mode === "erase");
  document.getElementById("pan").classList.toggle("on", state.mode === "pan");
  canvas.style.cursor = state.mode === "pan" ? "grab" : "crosshair";
}

async function send(action) {
  if (state.busy) return;
  state.busy = true;
  setStatus(action === "run" ? "running the CRF ..." : "saving ...");
  try {
    const response = await fetch(`/api/${action}`, { method: "POST", headers: { "Content-Type": "application/json" },
                                                     body: JSON.stringify({ strokes: state.strokes }) });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    const overlay = new Image();
    overlay.onload = () => { state.overlay = overlay; draw(); };
    overlay.src = answer.overlay;
    const list = document.getElementById("proportions");
    list.innerHTML = "";
    for (const [name, share] of Object.entries(answer.proportions)) {
      const item = document.createElement("li");
      item.innerHTML = `<span class="swatch" style="background:${colorOf(name)}"></span>`;
      item.append(`${name} ${(100 * share).toFixed(1)}%`);
      list.append(item);
    }
    setStatus(action === "run" ? `done in ${answer.seconds} s` : `saved: ${answer.files.map}`);
    document.body.dataset.done = action;
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    state.busy = false;
  }
}

document.getElementById("brush").addEventListener("input", (e) => {
  document.getElementById("brush-size").textContent = e.target.value;
});
document.getElementById("erase").addEventListener("click", () => setMode("erase"));
document.getElementById("pan").addEventListener("click", () => setMode("pan"));
document.getElementById("undo").addEventListener("click", () => { state.strokes.pop(); draw(); });
document.getElementById("run").addEventListener("click", () => send("run"));
document.getElementById("save").addEventListener("click", () => send("save"));
document.getElementById("show-result").addEventListener("change", draw);
window.addEventListener("resize", fit);

fetch("/api/info").then((r) => r.json()).then((info) => {
  state.info = info;
  const picker = document.getElementById("classes");
  for (const c of info.classes) {
    const button = document.createElement("button");
    button.type = "button";
    button.id = `class-${c.name}`;
    button.className = "class-button";
    button.innerHTML = `<span class="swatch" style="background:${c.color}"></span>`;
    button.append(c.name);
    button.addEventListener("click", () => {
      state.cls = c.name;
      document.querySelectorAll(".class-button").forEach((b) => b.classList.toggle("on", b === button));
    });
    picker.append(button);
  }
  picker.firstChild.click();
  state.image.onload = () => { fit(); document.body.dataset.ready = "yes"; };
  state.image.src = "/api/image.png";
});
