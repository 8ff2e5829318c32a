// report.html behaviour: sortable and filterable tables, and the clip viewer. Plain DOM, no network.
"use strict";

// ---------------------------------------------------------------- tables
function cellValue(row, index) {
  const cell = row.cells[index];
  return cell ? cell.getAttribute("data-v") || "" : "";
}

function compareCells(a, b) {
  // numbers before text; empty (missing, nan) always last
  if (a === "" || b === "") return a === b ? 0 : (a === "" ? 1 : -1);
  const x = Number(a), y = Number(b);
  if (!Number.isNaN(x) && !Number.isNaN(y)) return x - y;
  return a.localeCompare(b, undefined, { numeric: true });
}

function sortTable(table, index, th) {
  const body = table.tBodies[0];
  const descending = th.getAttribute("aria-sort") === "ascending";
  for (const other of table.tHead.rows[0].cells) other.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  const rows = Array.from(body.rows);
  rows.sort((r1, r2) => {
    const a = cellValue(r1, index), b = cellValue(r2, index);
    if (a === "" || b === "") return compareCells(a, b);
    return descending ? compareCells(b, a) : compareCells(a, b);
  });
  for (const row of rows) body.appendChild(row);
}

for (const table of document.querySelectorAll("table.sortable")) {
  if (!table.tHead) continue;
  Array.from(table.tHead.rows[0].cells).forEach((th, index) => {
    th.addEventListener("click", () => sortTable(table, index, th));
  });
}

for (const input of document.querySelectorAll("input.filter")) {
  const table = document.getElementById(input.dataset.table);
  if (!table) continue;
  input.addEventListener("input", () => {
    const needle = input.value.trim().toLowerCase();
    for (const row of table.tBodies[0].rows) {
      row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
    }
  });
}

// ---------------------------------------------------------------- clip viewer
const SVG = "http://www.w3.org/2000/svg";
const dataNode = document.getElementById("clip-data");
const sets = dataNode ? JSON.parse(dataNode.textContent) : [];
const viewer = document.getElementById("viewer");

function svgElement(name, attrs, parent) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

if (viewer && sets.length) {
  const clipSelect = document.getElementById("clip-select");
  const methodSelect = document.getElementById("method-select");
  const slider = document.getElementById("frame-slider");
  const frameLabel = document.getElementById("frame-label");
  const panels = document.getElementById("panels");
  const curve = document.getElementById("curve");
  const playButton = document.getElementById("play-button");
  const state = { set: null, clip: null, sprites: [], marker: null, timer: null };

  sets.forEach((set, s) => {
    set.clips.forEach((clip, c) => {
      const option = new Option((sets.length > 1 ? set.prefix + " · " : "") + clip.caption.replace(/\n/g, " · "),
                                s + ":" + c);
      clipSelect.add(option);
    });
  });

  function methodsOf(set) {
    const out = [];
    for (const view of set.views) if (!out.includes(view.method)) out.push(view.method);
    return out;
  }

  function scale(set) {
    // integer upscaling of small frames to at least ~180 px, at most 3 panels of 320 px per row
    const k = Math.max(1, Math.min(Math.floor(320 / set.width), Math.ceil(180 / set.height)));
    return { w: set.width * k, h: set.height * k };
  }

  function showFrame(t) {
    const set = state.set;
    const last = Math.max(set.frames - 1, 1);
    for (const sprite of state.sprites) {
      sprite.style.backgroundPosition = (100 * t / last) + "% 0%";
      sprite.dataset.frame = String(t);
    }
    frameLabel.textContent = "t = " + t + " / " + (set.frames - 1);
    if (state.marker) {
      const x = state.xOf(t);
      state.marker.setAttribute("x1", x);
      state.marker.setAttribute("x2", x);
    }
  }

  function drawCurve(set, clip, views) {
    curve.replaceChildren();
    const W = 640, H = 170, L = 46, R = 150, T = 10, B = 28;
    curve.setAttribute("viewBox", "0 0 " + W + " " + H);
    curve.setAttribute("width", W);
    curve.setAttribute("height", H);
    const series = views.filter((v) => clip.views[v.name] && Array.isArray(clip.views[v.name].share));
    let ymax = 0;
    for (const v of series) for (const y of clip.views[v.name].share) if (y !== null && y > ymax) ymax = y;
    ymax = ymax > 0 ? ymax * 1.1 : 1;
    const last = Math.max(set.frames - 1, 1);
    state.xOf = (t) => L + (W - L - R) * t / last;
    const yOf = (y) => T + (H - T - B) * (1 - y / ymax);
    for (const frac of [0, 0.5, 1]) {
      svgElement("line", { x1: L, x2: W - R, y1: yOf(ymax * frac), y2: yOf(ymax * frac), class: "grid" }, curve);
      svgElement("text", { x: L - 4, y: yOf(ymax * frac) + 4, "text-anchor": "end" }, curve).textContent =
        (ymax * frac).toPrecision(2);
    }
    svgElement("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }, curve);
    svgElement("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, curve).textContent =
      "frame t (share of |R| per frame)";
    const colours = ["#1f5fa8", "#b3261e", "#e08a00", "#2a8a3e", "#7a3fb0"];
    series.forEach((v, i) => {
      const share = clip.views[v.name].share;
      let d = "", pen = false;
      share.forEach((y, t) => {
        if (y === null) { pen = false; return; }
        d += (pen ? " L" : " M") + state.xOf(t).toFixed(1) + "," + yOf(y).toFixed(1);
        pen = true;
      });
      const colour = colours[i % colours.length];
      if (d) svgElement("path", { d: d.trim(), fill: "none", stroke: colour, "stroke-width": 2,
                                  "data-view": v.name }, curve);
      const ly = T + 14 * i + 8;
      svgElement("line", { x1: W - R + 10, x2: W - R + 28, y1: ly, y2: ly, stroke: colour, "stroke-width": 2 }, curve);
      svgElement("text", { x: W - R + 32, y: ly + 4 }, curve).textContent =
        v.name + (share.every((y) => y === null) ? " (no relevance)" : "");
    });
    state.marker = svgElement("line", { x1: L, x2: L, y1: T, y2: H - B, class: "marker" }, curve);
  }

  function render() {
    const [s, c] = clipSelect.value.split(":").map(Number);
    const set = sets[s], clip = set.clips[c];
    const method = methodSelect.value;
    state.set = set;
    state.clip = clip;
    const views = set.views.filter((v) => v.method === method);
    views.sort((a, b) => (a.kind === b.kind ? 0 : a.kind === "baseline" ? -1 : 1));
    const size = scale(set);
    panels.replaceChildren();
    state.sprites = [];
    const shown = [{ name: "input", label: "input" }].concat(
      views.map((v) => ({ name: v.name, label: v.name + " (" + v.kind + ")" })));
    for (const item of shown) {
      const view = clip.views[item.name];
      if (!view) continue;
      const panel = document.createElement("div");
      panel.className = "panel";
      const label = document.createElement("div");
      label.className = "label";
      label.textContent = item.label;
      label.title = item.label;
      const sprite = document.createElement("div");
      sprite.className = "sprite";
      sprite.dataset.view = item.name;
      sprite.style.width = size.w + "px";
      sprite.style.height = size.h + "px";
      sprite.style.backgroundImage = "url(\"" + view.src + "\")";
      sprite.style.backgroundSize = (set.frames * 100) + "% 100%";
      panel.append(label, sprite);
      panels.appendChild(panel);
      state.sprites.push(sprite);
    }
    drawCurve(set, clip, views);
    slider.max = String(set.frames - 1);
    if (Number(slider.value) > set.frames - 1) slider.value = String(set.frames - 1);
    showFrame(Number(slider.value));
  }

  function fillMethods() {
    const [s] = clipSelect.value.split(":").map(Number);
    const previous = methodSelect.value;
    methodSelect.replaceChildren();
    for (const m of methodsOf(sets[s])) methodSelect.add(new Option(m, m));
    if (methodsOf(sets[s]).includes(previous)) methodSelect.value = previous;
  }

  clipSelect.addEventListener("change", () => { fillMethods(); render(); });
  methodSelect.addEventListener("change", render);
  slider.addEventListener("input", () => showFrame(Number(slider.value)));
  playButton.addEventListener("click", () => {
    if (state.timer !== null) {
      clearInterval(state.timer);
      state.timer = null;
      playButton.textContent = "Play";
      return;
    }
    playButton.textContent = "Pause";
    state.timer = setInterval(() => {
      slider.value = String((Number(slider.value) + 1) % state.set.frames);
      showFrame(Number(slider.value));
    }, 125);
  });
  fillMethods();
  render();
}
