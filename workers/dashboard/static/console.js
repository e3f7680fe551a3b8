// linewatch operator console: overview of every line x camera, a line's score chart and
// alerts, one frame with its heatmap and the review buttons. Hash routes:
//   #/                          overview
//   #/line/<line>               line view
//   #/frame/<line>/<cam>/<id>   frame view
// Untrusted strings (ids, versions, user names) only go through textContent, never innerHTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const STATE_ORDER = ["no model", "offline", "drift", "anomalies", "ok"];
// ten camera colours, none of them the anomaly red or the threshold orange
const SERIES_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22", "#e377c2", "#393b79", "#637939"];
const CHART = { width: 960, height: 280, left: 48, right: 16, top: 14, bottom: 28 };
const app = { refreshMs: 5000, timer: null, stateFilter: null, textFilter: "", alertFilter: {} };

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(url, options) {
  const response = await fetch(url, Object.assign({ cache: "no-store", credentials: "same-origin" }, options || {}));
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("login required");
  }
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

const pad2 = (n) => String(n).padStart(2, "0");
function clock(t, seconds) {
  const d = new Date(t * 1000);
  return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + (seconds ? ":" + pad2(d.getSeconds()) : "");
}
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 90) return Math.round(seconds) + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  return (seconds / 3600).toFixed(1) + " h ago";
}
const pct = (v) => (v === null || v === undefined ? "-" : (100 * v).toFixed(v < 0.01 && v > 0 ? 2 : 1) + " %");
const stateClass = (s) => "state state-" + s.replace(" ", "-");

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function setCrumbs(parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren();
  parts.forEach(([label, href], i) => {
    if (i) nav.append(" / ");
    nav.append(href ? el("a", { href }, label) : el("span", {}, label));
  });
}

// ---------------------------------------------------------------- overview
function deadLetterText(dead) {
  if (!dead) return "";
  return Object.entries(dead).filter(([, n]) => n > 0).map(([r, n]) => r + " " + n).join(", ");
}

async function showOverview(view) {
  const data = await api("/api/overview");
  const rows = data.rows.slice().sort((a, b) =>
    STATE_ORDER.indexOf(a.state) - STATE_ORDER.indexOf(b.state) || a.line.localeCompare(b.line) || a.camera.localeCompare(b.camera));
  view.replaceChildren();
  const card = el("section", { class: "card overview" });
  const lines = new Set(rows.map((r) => r.line));
  card.append(el("h2", {}, `All lines: ${lines.size} lines, ${rows.length} cameras`));
  const chips = el("div", { class: "chips" });
  for (const state of STATE_ORDER) {
    const chip = el("span", { class: "chip" + (app.stateFilter === state ? " selected" : ""), "data-state": state });
    chip.append(el("span", { class: stateClass(state) }, state), " " + data.counts[state]);
    chip.addEventListener("click", () => { app.stateFilter = app.stateFilter === state ? null : state; route(); });
    chips.append(chip);
  }
  const search = el("input", { type: "search", placeholder: "filter line or camera", value: app.textFilter });
  search.addEventListener("change", () => { app.textFilter = search.value; route(); });
  chips.append(search);
  card.append(chips);
  const table = el("table", { class: "overview" });
  const head = el("tr");
  for (const [label, cls] of [["line"], ["camera"], ["state"], ["frames/s", "num"], ["anomaly rate 1 h", "num"],
    ["last alert"], ["last frame"], ["model"], ["worker"], ["lag", "num"], ["dead letters"]]) head.append(el("th", cls ? { class: cls } : {}, label));
  table.append(el("thead"));
  table.tHead.append(head);
  const body = el("tbody");
  const text = app.textFilter.toLowerCase();
  for (const r of rows) {
    if (app.stateFilter && r.state !== app.stateFilter) continue;
    if (text && !(r.line + " " + r.camera).toLowerCase().includes(text)) continue;
    const tr = el("tr", { class: "clickable", "data-line": r.line, "data-camera": r.camera, "data-state": r.state });
    tr.append(el("td", {}, r.line), el("td", {}, r.camera));
    const state = el("td");
    state.append(el("span", { class: stateClass(r.state) }, r.state));
    tr.append(state);
    tr.append(el("td", { class: "num" }, r.frames_per_s.toFixed(2)));
    tr.append(el("td", { class: "num" }, pct(r.anomaly_rate_1h) + (r.frames_1h ? ` (${r.anomalies_1h}/${r.frames_1h})` : "")));
    tr.append(el("td", {}, r.last_alert ? `${clock(r.last_alert.capture_ts, true)} ${r.last_alert.frame_id}` : "-"));
    tr.append(el("td", r.state === "offline" ? { class: "warn" } : {}, ago(r.last_seen_s)));
    tr.append(el("td", {}, r.model_version || "-"));
    const worker = el("td", r.worker && !r.worker_alive ? { class: "muted" } : {}, r.worker ? r.worker + (r.worker_alive ? "" : " (no health)") : "-");
    if (r.worker_paused) worker.append(el("span", { class: "warn" }, " PAUSED"));
    tr.append(worker);
    tr.append(el("td", { class: "num" }, r.worker_lag === null ? "-" : String(r.worker_lag)));
    tr.append(el("td", {}, deadLetterText(r.worker_dead_letters)));
    tr.addEventListener("click", () => { window.location.hash = "#/line/" + encodeURIComponent(r.line); });
    body.append(tr);
  }
  table.append(body);
  card.append(table);
  view.append(card);
  view.append(workersCard(data.workers));
  view.dataset.rows = String(body.rows.length);
  setStatus(`updated ${clock(data.now, true)} · offline after ${data.offline_after_s} s without a frame`);
}

function workersCard(workers) {
  const card = el("section", { class: "card workers" });
  card.append(el("h2", {}, `Workers: ${workers.length}`));
  if (!workers.length) {
    card.append(el("p", { class: "muted" }, "no worker has published its health recently"));
    return card;
  }
  const table = el("table");
  const head = el("tr");
  for (const [label, cls] of [["worker"], ["heartbeat"], ["frames/s", "num"], ["lag (per partition)"], ["paused"], ["dead letters"], ["models"]])
    head.append(el("th", cls ? { class: cls } : {}, label));
  table.append(head);
  for (const w of workers) {
    const tr = el("tr", { "data-worker": w.worker_id });
    const partitions = Object.entries(w.lag).map(([p, n]) => `${p}: ${n}`).join(", ");
    tr.append(el("td", {}, w.worker_id), el("td", {}, ago(w.age_s)), el("td", { class: "num" }, w.frames_per_s.toFixed(1)),
      el("td", {}, `${w.lag_total} (${partitions || "none assigned"})`), el("td", w.paused ? { class: "warn" } : {}, w.paused ? "PAUSED" : "no"),
      el("td", {}, deadLetterText(w.dead_letters) || "none"),
      el("td", {}, Object.entries(w.models).map(([l, v]) => `${l}: ${v}`).join(", ") || "none"));
    table.append(tr);
  }
  card.append(table);
  return card;
}

// ---------------------------------------------------------------- score chart
function niceStep(span, maxTicks) {
  const raw = span / Math.max(1, maxTicks);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

function quantile(sorted, q) {
  if (!sorted.length) return 0;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  return sorted[lo] + (sorted[Math.min(lo + 1, sorted.length - 1)] - sorted[lo]) * (pos - lo);
}

// Robust scale: y max = max(threshold * 1.5, min(highest score, 1.5 * p95)); points above
// it are clipped to the top edge and marked with a triangle (their value in the tooltip),
// so one outlier never squashes the rest while the threshold always stays in view. Tick
// counts follow the pixel size, so labels never overlap.
function drawChart(series, threshold) {
  const { width, height, left, right, top, bottom } = CHART;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const root = svg("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}` });
  const scores = series.map((p) => p.score).sort((a, b) => a - b);
  const highest = scores.length ? scores[scores.length - 1] : 0;
  const yMaxRaw = Math.max(threshold * 1.5, Math.min(highest, 1.5 * quantile(scores, 0.95)));
  const yMin = Math.min(0, quantile(scores, 0.01));
  const yStep = niceStep(yMaxRaw - yMin, Math.floor(plotH / 36));
  const yMax = Math.ceil(yMaxRaw / yStep - 1e-9) * yStep;
  const now = Date.now() / 1000;
  const t0 = series.length ? series[0].t : now - 60;
  const t1 = series.length > 1 ? series[series.length - 1].t : t0 + 60;
  const x = (t) => left + ((t - t0) / Math.max(1e-6, t1 - t0)) * plotW;
  const y = (v) => top + plotH - ((Math.min(v, yMax) - yMin) / (yMax - yMin)) * plotH;
  const axis = svg("g", { class: "axis" });
  for (let v = Math.ceil(yMin / yStep) * yStep; v <= yMax + 1e-9; v += yStep) {
    const yy = y(v);
    axis.append(svg("line", { x1: left, x2: width - right, y1: yy, y2: yy, stroke: "#e5e7eb" }));
    axis.append(svg("text", { x: left - 6, y: yy + 4, "text-anchor": "end", class: "ytick" }, Number(v.toFixed(3)).toString()));
  }
  const maxTimeTicks = Math.max(2, Math.floor(plotW / 90));
  const tStep = TIME_STEPS.find((s) => (t1 - t0) / s <= maxTimeTicks) || 86400;
  for (let t = Math.ceil(t0 / tStep) * tStep; t <= t1; t += tStep) {
    const xx = x(t);
    axis.append(svg("line", { x1: xx, x2: xx, y1: top, y2: top + plotH, stroke: "#f0f1f3" }));
    axis.append(svg("text", { x: xx, y: height - 8, "text-anchor": "middle", class: "xtick" }, clock(t, tStep < 60)));
  }
  axis.append(svg("line", { x1: left, x2: left, y1: top, y2: top + plotH, stroke: "#9ca3af" }));
  axis.append(svg("line", { x1: left, x2: width - right, y1: top + plotH, y2: top + plotH, stroke: "#9ca3af" }));
  root.append(axis);
  const ty = y(threshold);
  root.append(svg("line", { class: "threshold", x1: left, x2: width - right, y1: ty, y2: ty, stroke: "#ff7f0e", "stroke-width": 2, "stroke-dasharray": "6 4" }));
  // one line per camera, broken where the camera sent nothing for a while
  const cameras = [...new Set(series.map((p) => p.camera))].sort();
  cameras.forEach((camera, index) => {
    const points = series.filter((p) => p.camera === camera);
    const gaps = points.slice(1).map((p, i) => p.t - points[i].t).sort((a, b) => a - b);
    const breakAfter = Math.max(5 * quantile(gaps, 0.5), 60);
    const d = points.map((p, i) => (i && p.t - points[i - 1].t <= breakAfter ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p.score).toFixed(1)).join(" ");
    const path = svg("path", { class: "series", "data-camera": camera, d, fill: "none", stroke: SERIES_COLOURS[index % SERIES_COLOURS.length], "stroke-width": 1.5 });
    path.append(svg("title", {}, camera));
    root.append(path);
  });
  root.dataset.cameras = cameras.join(",");
  let clipped = 0;
  for (const p of series) {
    if (p.score > yMax) {
      clipped += 1;
      const cx = x(p.t);
      const mark = svg("path", { class: "clipped", d: `M${cx - 6} ${top + 10} L${cx + 6} ${top + 10} L${cx} ${top} Z`, fill: "#9b1c1c" });
      mark.append(svg("title", {}, `${p.camera} ${p.frame_id}: ${p.score.toFixed(3)} (above the scale)`));
      root.append(mark);
    } else if (p.label) {
      const dot = svg("circle", { class: "anomaly", cx: x(p.t), cy: y(p.score), r: 3.5, fill: "#d62728" });
      dot.append(svg("title", {}, `${p.camera} ${p.frame_id}: ${p.score.toFixed(3)}`));
      root.append(dot);
    }
  }
  root.dataset.points = String(series.length);
  root.dataset.clipped = String(clipped);
  root.dataset.ymax = String(yMax);
  return root;
}

function legend(cameras) {
  const box = el("div", { class: "legend" });
  cameras.forEach((camera, index) => {
    const item = el("span", { "data-camera": camera });
    const swatch = el("span", { class: "swatch score" });
    swatch.style.background = SERIES_COLOURS[index % SERIES_COLOURS.length];
    item.append(swatch, `score ${camera}`);
    box.append(item);
  });
  for (const [cls, label] of [["anomaly", "anomaly"], ["threshold", "threshold (0.5)"], ["clipped", "above the scale (clipped)"]]) {
    const item = el("span");
    item.append(el("span", { class: "swatch " + cls }), label);
    box.append(item);
  }
  return box;
}

// ---------------------------------------------------------------- line view
async function showLine(view, line) {
  const f = app.alertFilter;
  const query = new URLSearchParams();
  if (f.camera) query.set("camera", f.camera);
  if (f.review) query.set("review", f.review);
  if (f.minScore) query.set("min_score", f.minScore);
  const data = await api(`/api/lines/${encodeURIComponent(line)}?${query}`);
  setCrumbs([["overview", "#/"], [line, null]]);
  view.replaceChildren();
  const chartCard = el("section", { class: "card line", "data-line": line });
  const title = el("h2", {}, `Line ${line}`);
  const active = data.drift && data.drift.event === "drift_started";
  title.append(el("span", { class: "badge" + (active ? " active" : "") }, !data.drift ? "drift: none" : `drift: ${active ? "ACTIVE" : "cleared"}`));
  const chart = drawChart(data.series, data.threshold);
  chartCard.append(title, chart, legend(chart.dataset.cameras ? chart.dataset.cameras.split(",") : []));
  view.append(chartCard);
  const alertsCard = el("section", { class: "card alerts" });
  alertsCard.append(el("h2", {}, `Alerts (${data.alerts.length} of the newest ${data.alerts_scanned})`));
  const filters = el("div", { class: "filters" });
  const camera = el("select", { name: "camera" });
  camera.append(el("option", { value: "" }, "all cameras"));
  for (const c of data.cameras) camera.append(el("option", c === f.camera ? { value: c, selected: "" } : { value: c }, c));
  const review = el("select", { name: "review" });
  for (const [v, label] of [["", "any review"], ["unreviewed", "unreviewed"], ["acknowledged", "acknowledged"], ["false_alarm", "false alarm"]])
    review.append(el("option", v === (f.review || "") ? { value: v, selected: "" } : { value: v }, label));
  const minScore = el("input", { name: "min_score", type: "number", step: "0.05", min: "0", placeholder: "min score", value: f.minScore || "" });
  for (const input of [camera, review, minScore]) input.addEventListener("change", () => {
    app.alertFilter = { camera: camera.value, review: review.value, minScore: minScore.value };
    route();
  });
  filters.append("camera ", camera, " review ", review, " score ≥ ", minScore);
  alertsCard.append(filters);
  const table = el("table", { class: "alerts", "data-line": line });
  const head = el("tr");
  for (const [label, cls] of [["time"], ["camera"], ["frame"], ["score", "num"], ["model"], ["review"]]) head.append(el("th", cls ? { class: cls } : {}, label));
  table.append(el("thead"));
  table.tHead.append(head);
  const body = el("tbody");
  for (const a of data.alerts) {
    const tr = el("tr", { class: "clickable", "data-frame-id": a.frame_id, "data-camera": a.camera, "data-review": a.review });
    tr.append(el("td", {}, clock(a.t, true)), el("td", {}, a.camera), el("td", {}, a.frame_id), el("td", { class: "num" }, a.score.toFixed(3)),
      el("td", {}, a.model_version), el("td", {}, a.review === "unreviewed" ? "-" : `${a.review.replace("_", " ")} by ${a.reviewed_by}`));
    tr.addEventListener("click", () => {
      window.location.hash = `#/frame/${encodeURIComponent(line)}/${encodeURIComponent(a.camera)}/${encodeURIComponent(a.frame_id)}`;
    });
    body.append(tr);
  }
  table.append(body);
  table.dataset.count = String(data.alerts.length);
  alertsCard.append(data.alerts.length ? table : el("p", { class: "muted" }, "no alert matches"));
  view.append(alertsCard);
  setStatus(`${data.series.length} results · updated ${clock(Date.now() / 1000, true)}`);
}

// ---------------------------------------------------------------- frame view
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
  const sc = scratch.getContext("2d");
  sc.drawImage(heatmap, 0, 0, width, height);
  const pixels = sc.getImageData(0, 0, width, height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const value = data[i] / 255;
    const [r, g, b] = jet(value);
    data[i] = r;
    data[i + 1] = g;
    data[i + 2] = b;
    data[i + 3] = Math.max(0, Math.min(1, (value - 0.25) / 0.5)) * 0.7 * 255;
  }
  sc.putImageData(pixels, 0, 0);
  context.drawImage(scratch, 0, 0);
}

async function showFrame(view, line, camera, frameId) {
  const base = `/api/frames/${encodeURIComponent(camera)}/${encodeURIComponent(frameId)}`;
  const data = await api(base);
  setCrumbs([["overview", "#/"], [line, "#/line/" + encodeURIComponent(line)], [`${camera} ${frameId}`, null]]);
  const r = data.result;
  view.replaceChildren();
  const card = el("section", { class: "card frame", "data-frame-id": frameId });
  card.append(el("h2", {}, `${camera} · frame ${frameId} · score ${r.normalized_score.toFixed(3)} · ${r.label ? "ANOMALY" : "good"}`));
  card.append(el("p", { class: "muted" }, `captured ${new Date(r.capture_ts * 1000).toLocaleString()} · model ${r.model_version} · worker ${r.worker_id}`));
  const status = el("span", { class: "review-status" });
  const buttons = el("div", { class: "review-buttons" });
  const showReview = (review) => {
    status.textContent = review ? `${review.verdict.replace("_", " ")} by ${review.by} at ${new Date(review.ts * 1000).toLocaleString()}` : "not reviewed";
    status.dataset.verdict = review ? review.verdict : "";
  };
  for (const [verdict, label] of [["acknowledged", "Acknowledge"], ["false_alarm", "False alarm"]]) {
    const button = el("button", { type: "button", "data-verdict": verdict }, label);
    button.addEventListener("click", async () => {
      const done = await api(`/api/lines/${encodeURIComponent(line)}/alerts/${encodeURIComponent(camera)}/${encodeURIComponent(frameId)}/review`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ verdict }),
      });
      showReview(done.review);
      if (verdict === "false_alarm") status.textContent += done.frame_kept ? " · kept for the next refit" : " · frame expired, not kept for training";
    });
    buttons.append(button);
  }
  buttons.append(status);
  showReview(data.review);
  card.append(buttons);
  const wrap = el("div", { class: "frame-wrap" });
  const canvas = el("canvas", { class: "frame-view" });
  wrap.append(canvas);
  card.append(wrap);
  view.append(card);
  if (!data.frame) {
    canvas.dataset.overlay = "expired";
    card.append(el("p", { class: "warn" }, "the frame expired from Redis"));
    return;
  }
  const frame = await loadImage(base + "/image.jpg");
  canvas.width = frame.naturalWidth;   // full size: one image pixel per canvas pixel
  canvas.height = frame.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(frame, 0, 0);
  try {
    overlayHeatmap(context, await loadImage(base + "/heatmap.png"), canvas.width, canvas.height);
    canvas.dataset.overlay = "drawn";
  } catch (error) {
    canvas.dataset.overlay = "missing";
  }
  canvas.dataset.renderedFrame = frameId;
  setStatus(`frame ${frameId}`);
}

// ---------------------------------------------------------------- routing
async function route() {
  clearTimeout(app.timer);
  const view = document.getElementById("view");
  const parts = window.location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "line" && parts[1]) {
      const editing = document.activeElement && document.activeElement.closest(".filters");
      if (!editing) await showLine(view, parts[1]);  // never redraw under a typing operator
    } else if (parts[0] === "frame" && parts.length === 4) {
      await showFrame(view, parts[1], parts[2], parts[3]);
      return; // a frame does not change: no polling
    } else {
      setCrumbs([["overview", null]]);
      await showOverview(view);
    }
  } catch (error) {
    setStatus("error: " + error.message);
  }
  app.timer = setTimeout(route, app.refreshMs);
}

async function start() {
  const me = await api("/api/me");
  app.refreshMs = me.refresh_ms;
  document.getElementById("user").textContent = me.user;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin" });
    window.location.assign("/login");
  });
  window.addEventListener("hashchange", () => { app.alertFilter = {}; route(); });
  route();
}

start();
