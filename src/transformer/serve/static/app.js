// The attention explorer: translate lines with POST /v1/translate (a classification model:
// classify them with POST /v1/classify and show the class probabilities as bars), fetch the
// attention of the selected line with POST /v1/attention, and draw one (layer, head) map on a
// canvas. Plain browser JavaScript, no dependencies, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  lines: [],        // the texts translated (or classified) last
  results: [],      // their translations or classifications
  selected: -1,     // index of the line whose attention is shown
  attention: null,  // the /v1/attention response of that line
  kind: "cross",    // cross | encoder_self | decoder_self
  maxTexts: 64,
  task: null,       // "translation" or the model's task ("parsing", "classification"), from /health
  defaultBeam: 4,   // the model's default beam (a parser's: 21), sent as "not set"
  labels: [],       // a classifier's classes, from /health
};

const classifying = () => state.task === "classification";

// ------------------------------------------------------------------------------ server calls

async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    throw new Error(`${path}: HTTP ${response.status}`);
  }
  if (!response.ok) {
    const fields = (data.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
    throw new Error(fields || data.detail || `HTTP ${response.status}`);
  }
  return data;
}

async function checkHealth() {
  const badge = $("status");
  try {
    const response = await fetch("/health");
    const data = await response.json();
    state.maxTexts = data.max_texts || state.maxTexts;
    if (data.task && data.task !== state.task) adaptToModel(data);
    for (const option of $("beam").options) {
      const beam = Number(option.value);
      option.disabled = beam > (data.max_beam || 16) && beam !== state.defaultBeam;
    }
    if (response.ok) {
      badge.textContent = "ready";
      badge.className = "status status-ok";
      return;
    }
    badge.textContent = data.status || "not ready";
    badge.className = data.status === "failed" ? "status status-bad" : "status status-wait";
  } catch (e) {
    badge.textContent = "offline";
    badge.className = "status status-bad";
  }
  setTimeout(checkHealth, 1000);
}

/** Words and controls for the loaded model (its /health): a parser parses, with its own beam
 * (the model's default is sent as "unset", so the server applies it even above its max_beam);
 * a classifier classifies, has no beam, and only encoder self-attention. */
function adaptToModel(health) {
  state.task = health.task;
  if (health.task === "classification") {
    adaptToClassifier(health.labels || []);
    return;
  }
  if (!health.decoding) return;
  const task = health.task;
  const defaultBeam = health.decoding.beam;
  state.defaultBeam = defaultBeam;
  const select = $("beam");
  if (![...select.options].some((o) => Number(o.value) === defaultBeam)) {
    select.add(new Option(`${defaultBeam} (model default)`, String(defaultBeam)));
  }
  select.value = String(defaultBeam);
  if (task === "parsing") {
    $("translate").textContent = "Parse";
    $("output-title").textContent = "Parse trees";
    $("source").placeholder = "One sentence per line, words separated by spaces (e.g. The dog barks .)";
    document.querySelector(".subtitle").textContent =
      "parse (a sentence in, a tree out), then see where every layer and head looks";
  }
}

function adaptToClassifier(labels) {
  state.labels = labels;
  $("translate").textContent = "Classify";
  $("output-title").textContent = "Classes";
  $("output-hint").textContent = "Pick a line to see its class probabilities and attention.";
  $("source").placeholder = "One text per line (e.g. Stocks rally as oil prices fall)";
  document.querySelector(".subtitle").textContent =
    `classify a text (${labels.join(", ")}), then see where every encoder layer and head looks`;
  $("beam-control").hidden = true;
  $("kinds").hidden = true;  // a classifier has no decoder: encoder self-attention only
  selectKind("encoder_self");
}

function decoding() {
  return beam() === state.defaultBeam ? {} : { beam: beam() };
}

// ------------------------------------------------------------------------------- translating

function setMessage(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.className = isError ? "message error" : "message";
}

async function translate() {
  const lines = $("source").value.split(/\r?\n/).map((l) => l.trim()).filter((l) => l);
  if (!lines.length) {
    setMessage(classifying() ? "Type a text first." : "Type a sentence first.", true);
    return;
  }
  if (lines.length > state.maxTexts) {
    setMessage(`Only the first ${state.maxTexts} lines are ${classifying() ? "classified" : "translated"}.`);
    lines.length = state.maxTexts;
  }
  const button = $("translate");
  button.disabled = true;
  setMessage({ parsing: "Parsing…", classification: "Classifying…" }[state.task] || "Translating…");
  try {
    if (classifying()) {
      const data = await postJSON("/v1/classify", { texts: lines, top_k: state.labels.length });
      state.results = data.classifications;
      renderClassifications(data.classifications);
    } else {
      const data = await postJSON("/v1/translate", { texts: lines, nbest: 1, ...decoding() });
      state.results = data.translations;
      renderTranslations(data.translations);
    }
    state.lines = lines;
    setMessage("");
    await selectLine(0);
  } catch (e) {
    setMessage(e.message, true);
  } finally {
    button.disabled = false;
  }
}

function beam() {
  return Number($("beam").value);
}

function renderTranslations(translations) {
  const list = $("translations");
  list.replaceChildren();
  translations.forEach((t, i) => {
    const item = document.createElement("li");
    item.dataset.index = String(i);
    const tgt = document.createElement("div");
    tgt.className = "tgt";
    tgt.textContent = t.text;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${t.score.toFixed(3)}`;
    tgt.appendChild(score);
    const src = document.createElement("div");
    src.className = "src";
    src.textContent = t.source;
    item.append(tgt, src);
    item.addEventListener("click", () => selectLine(i));
    list.appendChild(item);
  });
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

/** One line per text: its best class (and probability) over the text itself. */
function renderClassifications(classifications) {
  const list = $("translations");
  list.replaceChildren();
  classifications.forEach((c, i) => {
    const item = document.createElement("li");
    item.dataset.index = String(i);
    const best = document.createElement("div");
    best.className = "tgt";
    best.textContent = c.label;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = percent(c.probability) + (c.truncated ? " (text cut to the model's length)" : "");
    best.appendChild(score);
    const src = document.createElement("div");
    src.className = "src";
    src.textContent = c.source;
    item.append(best, src);
    item.addEventListener("click", () => selectLine(i));
    list.appendChild(item);
  });
}

/** The class probabilities of one text as horizontal bars: label, bar, percent; best first. */
function renderClassBars(top) {
  const box = $("classes");
  box.replaceChildren();
  top.forEach((c, i) => {
    const row = document.createElement("div");
    row.className = i === 0 ? "class-row best" : "class-row";
    const label = document.createElement("span");
    label.className = "class-label";
    label.textContent = c.label;
    const bar = document.createElement("div");
    bar.className = "class-bar";
    const fill = document.createElement("div");
    fill.className = "class-fill";
    fill.style.width = `${Math.max(0, Math.min(100, 100 * c.probability))}%`;
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "class-percent";
    value.textContent = percent(c.probability);
    row.append(label, bar, value);
    box.appendChild(row);
  });
  box.hidden = false;
}

async function selectLine(index) {
  state.selected = index;
  for (const item of $("translations").children) {
    item.classList.toggle("selected", Number(item.dataset.index) === index);
  }
  if (classifying()) renderClassBars(state.results[index].top);
  try {
    state.attention = await postJSON("/v1/attention", { text: state.lines[index], ...decoding() });
    fillLayerAndHead();
    draw();
  } catch (e) {
    setMessage(`attention: ${e.message}`, true);
  }
}

// ------------------------------------------------------------------------------- attention

const KINDS = {
  cross: {
    rows: "target_display", cols: "source_display", layers: "decoder_layers",
    caption: "Cross-attention: each row is the target token being predicted, each column a "
      + "source token (encoder output).",
  },
  encoder_self: {
    rows: "source_display", cols: "source_display", layers: "encoder_layers",
    caption: "Encoder self-attention: rows and columns are source tokens.",
    classifierCaption: "Encoder self-attention: rows and columns are the text's tokens.",
  },
  decoder_self: {
    rows: "decoder_display", cols: "decoder_display", layers: "decoder_layers",
    caption: "Decoder self-attention: rows and columns are decoder inputs (<s> + translation); "
      + "a row sees only earlier positions.",
  },
};

function fillLayerAndHead() {
  const a = state.attention;
  if (!a) return;
  const layerSelect = $("layer");
  const layers = a[KINDS[state.kind].layers];
  const previous = layerSelect.value;
  layerSelect.replaceChildren();
  for (let l = 0; l < layers; l++) layerSelect.add(new Option(String(l + 1), String(l)));
  layerSelect.value = previous !== "" && Number(previous) < layers ? previous : String(layers - 1);

  const headSelect = $("head");
  const headPrevious = headSelect.value;
  headSelect.replaceChildren(new Option("average", "avg"));
  for (let h = 0; h < a.heads; h++) headSelect.add(new Option(String(h + 1), String(h)));
  headSelect.value = headPrevious && (headPrevious === "avg" || Number(headPrevious) < a.heads)
    ? headPrevious : "avg";
}

/** The (rows x cols) matrix on display: one head, or the mean over heads. */
function currentMatrix() {
  const a = state.attention;
  const heads = a[state.kind][Number($("layer").value)];  // (H, rows, cols)
  const head = $("head").value;
  if (head !== "avg") return heads[Number(head)];
  const rows = heads[0].length;
  const cols = heads[0][0].length;
  const mean = Array.from({ length: rows }, () => new Array(cols).fill(0));
  for (const m of heads) {
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) mean[i][j] += m[i][j] / heads.length;
  }
  return mean;
}

// A sequential white-to-blue scale (ColorBrewer "Blues"-like stops), readable in print too.
const STOPS = [
  [255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156], [8, 48, 107],
];

function color(v) {
  const x = Math.max(0, Math.min(1, v)) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const f = x - i;
  const c = STOPS[i].map((lo, k) => Math.round(lo + (STOPS[i + 1][k] - lo) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

const layout = { left: 0, top: 0, cell: 0, rows: 0, cols: 0, matrix: null, max: 1 };

function draw() {
  const a = state.attention;
  if (!a) return;
  const kind = KINDS[state.kind];
  const rowLabels = a[kind.rows];
  const colLabels = a[kind.cols];
  const matrix = currentMatrix();
  let max = 0;
  for (const row of matrix) for (const v of row) max = Math.max(max, v);
  const scaleMax = $("scale-max").checked && max > 0 ? max : 1;

  const canvas = $("heatmap");
  const ctx = canvas.getContext("2d");
  const font = "13px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  ctx.font = font;
  const labelWidth = (labels) => Math.max(...labels.map((t) => ctx.measureText(t).width), 10);
  const left = Math.ceil(labelWidth(rowLabels)) + 12;
  const top = Math.ceil(labelWidth(colLabels)) + 12;
  const available = $("heatmap-wrap").clientWidth - left - 8;
  const cell = Math.max(14, Math.min(40, Math.floor(available / colLabels.length)));
  const width = left + cell * colLabels.length + 2;
  const height = top + cell * rowLabels.length + 2;

  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = font;

  for (let i = 0; i < rowLabels.length; i++) {
    for (let j = 0; j < colLabels.length; j++) {
      ctx.fillStyle = color(matrix[i][j] / scaleMax);
      ctx.fillRect(left + j * cell, top + i * cell, cell, cell);
    }
  }
  ctx.strokeStyle = "#dde2e8";
  ctx.strokeRect(left - 0.5, top - 0.5, cell * colLabels.length + 1, cell * rowLabels.length + 1);

  ctx.fillStyle = "#1d2330";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  rowLabels.forEach((t, i) => ctx.fillText(t, left - 6, top + (i + 0.5) * cell));
  ctx.save();
  ctx.textAlign = "left";
  colLabels.forEach((t, j) => {
    ctx.save();
    ctx.translate(left + (j + 0.5) * cell, top - 6);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(t, 0, 0);
    ctx.restore();
  });
  ctx.restore();

  Object.assign(layout, {
    left, top, cell, rows: rowLabels.length, cols: colLabels.length, matrix, rowLabels, colLabels,
  });
  const head = $("head").value === "avg" ? "average over heads" : `head ${Number($("head").value) + 1}`;
  const result = classifying()
    ? `Class: ${a.label} (${percent(a.probability)})`
    : `${state.task === "parsing" ? "Tree" : "Translation"}: ${a.translation}`;
  $("attention-caption").textContent =
    `${(classifying() && kind.classifierCaption) || kind.caption} `
    + `Layer ${Number($("layer").value) + 1}, ${head}. ${result}`;
  drawLegend(scaleMax);
}

function drawLegend(scaleMax) {
  const canvas = $("legend");
  const ctx = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    ctx.fillStyle = color(x / (canvas.width - 1));
    ctx.fillRect(x, 0, 1, canvas.height);
  }
  $("legend-low").textContent = "0";
  $("legend-high").textContent = scaleMax.toFixed(2);
}

function showTooltip(event) {
  const tooltip = $("tooltip");
  if (!layout.matrix) return;
  const rect = $("heatmap").getBoundingClientRect();
  const x = event.clientX - rect.left;
  const y = event.clientY - rect.top;
  const j = Math.floor((x - layout.left) / layout.cell);
  const i = Math.floor((y - layout.top) / layout.cell);
  if (i < 0 || j < 0 || i >= layout.rows || j >= layout.cols) {
    tooltip.hidden = true;
    return;
  }
  tooltip.textContent =
    `${layout.rowLabels[i]} → ${layout.colLabels[j]}: ${layout.matrix[i][j].toFixed(3)}`;
  tooltip.style.left = `${x + 14 + $("heatmap-wrap").scrollLeft}px`;
  tooltip.style.top = `${y + 14 + $("heatmap-wrap").scrollTop}px`;
  tooltip.hidden = false;
}

// ------------------------------------------------------------------------------------ wiring

function selectKind(kind) {
  state.kind = kind;
  for (const b of document.querySelectorAll(".seg")) {
    b.classList.toggle("active", b.dataset.kind === kind);
    b.setAttribute("aria-checked", String(b.dataset.kind === kind));
  }
  fillLayerAndHead();
  draw();
}

function init() {
  $("translate").addEventListener("click", translate);
  $("source").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) translate();
  });
  for (const button of document.querySelectorAll(".seg")) {
    button.addEventListener("click", () => selectKind(button.dataset.kind));
  }
  for (const id of ["layer", "head", "scale-max"]) $(id).addEventListener("change", draw);
  $("heatmap").addEventListener("mousemove", showTooltip);
  $("heatmap").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  window.addEventListener("resize", draw);
  checkHealth();
}

init();
