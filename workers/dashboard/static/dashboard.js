// linewatch operator's view: polls the dashboard's JSON routes and draws with canvas.
// Untrusted strings (ids, versions) only ever go through textContent, never innerHTML.
"use strict";

const CAMERA_WIDTH = 320;
const CHART_WIDTH = 640;
const CHART_HEIGHT = 200;
const SERIES_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"];
const state = { refreshMs: 2000, drawnFrames: new Map() };

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("cannot load " + url));
    image.src = url;
  });
}

function toDate(value) {
  if (typeof value === "number") return new Date(value < 1e12 ? value * 1000 : value);
  return new Date(value);
}

function formatTime(value) {
  const date = toDate(value);
  return isNaN(date) ? String(value) : date.toLocaleTimeString();
}

// Result messages (pipeline/messages.py ResultMessage): label is true when anomalous.
function isAnomaly(result) {
  if (typeof result.label === "boolean") return result.label;
  return Number(result.normalized_score) >= 0.5;
}

// Jet colour map without its dark-red tail: 0 -> blue, 0.5 -> green-cyan, 1 -> pure red.
function jet(value) {
  const v = 0.875 * value;
  const channel = (offset) => Math.max(0, Math.min(1, 1.5 - Math.abs(4 * v - offset)));
  return [channel(3) * 255, channel(2) * 255, channel(1) * 255];
}

// Heatmap PNG holds normalised scores * 255 (0.5 == threshold == 127). Values well below
// the threshold stay transparent; from a quarter of the threshold up, opacity rises to 0.7.
function overlayHeatmap(context, heatmap, width, height) {
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const scratchContext = scratch.getContext("2d");
  scratchContext.drawImage(heatmap, 0, 0, width, height);
  const pixels = scratchContext.getImageData(0, 0, width, height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const value = data[i] / 255;
    const [r, g, b] = jet(value);
    data[i] = r;
    data[i + 1] = g;
    data[i + 2] = b;
    data[i + 3] = Math.max(0, Math.min(1, (value - 0.25) / 0.5)) * 0.7 * 255;
  }
  scratchContext.putImageData(pixels, 0, 0);
  context.drawImage(scratch, 0, 0);
}

async function drawCamera(canvas, caption, camera) {
  const latest = camera.latest;
  if (!latest) {
    caption.textContent = "no result yet";
    return;
  }
  const anomaly = isAnomaly(latest);
  caption.textContent =
    `${camera.camera_id} · frame ${latest.frame_id} · score ${Number(latest.normalized_score).toFixed(3)}` +
    ` · ${anomaly ? "ANOMALY" : "good"} · model ${latest.model_version} · ${formatTime(latest.capture_ts)}`;
  caption.className = anomaly ? "caption anomaly" : "caption";
  if (state.drawnFrames.get(camera.camera_id) === latest.frame_id) return;
  const id = encodeURIComponent(camera.camera_id);
  const frameId = encodeURIComponent(latest.frame_id);
  let frame;
  try {
    frame = await loadImage(`/api/frames/${id}/${frameId}.jpg`);
  } catch (error) {
    caption.textContent += " · frame expired";
    return;
  }
  const height = Math.round((CAMERA_WIDTH * frame.naturalHeight) / frame.naturalWidth);
  canvas.width = CAMERA_WIDTH;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.drawImage(frame, 0, 0, CAMERA_WIDTH, height);
  try {
    const heatmap = await loadImage(`/api/heatmaps/${id}/${frameId}.png`);
    overlayHeatmap(context, heatmap, CAMERA_WIDTH, height);
    canvas.dataset.overlay = "drawn";
  } catch (error) {
    canvas.dataset.overlay = "missing";
  }
  canvas.dataset.renderedFrame = latest.frame_id;
  state.drawnFrames.set(camera.camera_id, latest.frame_id);
}

function drawChart(canvas, entries) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const results = entries.map((entry) => entry.result);
  const pad = 28;
  const maxScore = Math.max(1, ...results.map((r) => Number(r.normalized_score) || 0));
  const x = (i) => pad + ((canvas.width - 2 * pad) * i) / Math.max(1, results.length - 1);
  const y = (score) => canvas.height - pad - ((canvas.height - 2 * pad) * score) / maxScore;
  context.strokeStyle = "#9aa1ad";
  context.strokeRect(pad, pad, canvas.width - 2 * pad, canvas.height - 2 * pad);
  context.fillStyle = "#4b5563";
  context.font = "11px sans-serif";
  context.fillText(maxScore.toFixed(1), 2, pad + 4);
  context.fillText("0", 2, canvas.height - pad);
  context.fillText("0.5", 2, y(0.5) + 4);
  context.setLineDash([4, 3]);
  context.strokeStyle = "#d62728";
  context.beginPath();
  context.moveTo(pad, y(0.5));
  context.lineTo(canvas.width - pad, y(0.5));
  context.stroke();
  context.setLineDash([]);
  const cameras = [...new Set(results.map((r) => r.camera_id))].sort();
  cameras.forEach((camera, index) => {
    context.strokeStyle = SERIES_COLOURS[index % SERIES_COLOURS.length];
    context.lineWidth = 1.5;
    context.beginPath();
    let started = false;
    results.forEach((r, i) => {
      if (r.camera_id !== camera) return;
      const score = Number(r.normalized_score);
      if (started) context.lineTo(x(i), y(score));
      else context.moveTo(x(i), y(score));
      started = true;
    });
    context.stroke();
    context.fillText(camera, canvas.width - pad - 80, pad + 12 + 12 * index);
  });
  context.fillStyle = "#d62728";
  results.forEach((r, i) => {
    if (isAnomaly(r)) context.fillRect(x(i) - 2, y(Number(r.normalized_score)) - 2, 5, 5);
  });
  canvas.dataset.points = String(results.length);
}

function fillAlerts(table, entries) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const entry of entries) {
    const r = entry.result;
    const row = el("tr", { "data-frame-id": r.frame_id });
    row.append(
      el("td", {}, formatTime(r.capture_ts)),
      el("td", {}, r.camera_id),
      el("td", {}, r.frame_id),
      el("td", {}, Number(r.normalized_score).toFixed(3)),
      el("td", {}, r.model_version),
    );
    body.append(row);
  }
  table.dataset.count = String(entries.length);
}

function lineSection(line) {
  const id = "line-" + line.line;
  let section = document.getElementById(id);
  if (section) return section;
  section = el("section", { id, class: "line", "data-line": line.line });
  const title = el("h2", {}, line.line);
  title.append(el("span", { class: "drift" }, "drift: none"));
  const chart = el("canvas", { class: "chart", width: CHART_WIDTH, height: CHART_HEIGHT,
                               "data-line": line.line });
  const alerts = el("table", { class: "alerts", "data-line": line.line });
  const head = el("tr");
  for (const name of ["time", "camera", "frame", "score", "model"]) head.append(el("th", {}, name));
  alerts.append(el("thead"), el("tbody"));
  alerts.tHead.append(head);
  const row = el("div", { class: "row" });
  const alertsBox = el("div");
  alertsBox.append(el("div", { class: "empty" }, "recent alerts"), alerts);
  row.append(chart, alertsBox);
  section.append(title, el("div", { class: "cameras" }), row);
  document.getElementById("lines").append(section);
  return section;
}

function cameraCard(section, cameraId) {
  const existing = section.querySelector(`div.camera[data-camera="${CSS.escape(cameraId)}"]`);
  if (existing) return existing;
  const card = el("div", { class: "camera", "data-camera": cameraId });
  card.append(el("canvas", { class: "overlay", "data-camera": cameraId, width: CAMERA_WIDTH,
                             height: 240 }),
              el("div", { class: "caption" }, cameraId));
  section.querySelector(".cameras").append(card);
  return card;
}

function showDrift(section, drift) {
  const badge = section.querySelector(".drift");
  const active = drift && drift.event === "drift_started";
  badge.className = active ? "drift active" : "drift";
  badge.textContent = !drift
    ? "drift: none"
    : `drift: ${active ? "ACTIVE" : "cleared"} (${drift.method} ${Number(drift.statistic).toFixed(3)})`;
}

async function refresh() {
  const overview = await getJson("/api/overview");
  state.refreshMs = overview.refresh_ms || state.refreshMs;
  const tasks = [];
  for (const line of overview.lines) {
    const section = lineSection(line);
    showDrift(section, line.drift);
    for (const camera of line.cameras) {
      const card = cameraCard(section, camera.camera_id);
      tasks.push(drawCamera(card.querySelector("canvas"), card.querySelector(".caption"), camera));
    }
    const name = encodeURIComponent(line.line);
    tasks.push(getJson(`/api/lines/${name}/results`).then((entries) =>
      drawChart(section.querySelector("canvas.chart"), entries)));
    tasks.push(getJson(`/api/lines/${name}/alerts?count=20`).then((entries) =>
      fillAlerts(section.querySelector("table.alerts"), entries)));
  }
  await Promise.all(tasks);
  document.getElementById("status").textContent =
    `${overview.lines.length} line(s) · updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.refreshed = String(Date.now());
}

async function loop() {
  try {
    await refresh();
  } catch (error) {
    document.getElementById("status").textContent = "error: " + error.message;
  }
  setTimeout(loop, state.refreshMs);
}

loop();
