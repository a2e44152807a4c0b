// dreamdist studio page: plain JavaScript over the JSON API of dreamdist.studio.server.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let selectedRun = null;
let uploadBatch = null;
let pickerRuns = "";
let lastRuns = "";
let startedRun = null;  // the run the train status line speaks of, until it stops running

// the server's session token: every state-changing request carries it (another site cannot read it)
const TOKEN = document.querySelector("meta[name=dreamdist-token]").content;

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json", "X-Dreamdist-Token": TOKEN },
    body: JSON.stringify(body),
  };
  return answer(await fetch(path, options));
}

// the JSON of a response, or an Error with the server's message (or the status when it sent no JSON)
async function answer(response) {
  let data = null;
  try { data = await response.json(); } catch (error) { data = null; }
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

function setStatus(id, text, error = false) {
  const node = $(id);
  node.textContent = text;
  node.classList.toggle("error", error);
}

function fillSelect(select, values, chosen) {
  for (const value of values) {
    const option = document.createElement("option");
    option.value = option.textContent = value;
    select.appendChild(option);
  }
  if (chosen !== undefined) select.value = chosen;
}

// ------------------------------------------------------------------ tabs
for (const button of document.querySelectorAll(".tab")) {
  button.addEventListener("click", () => {
    for (const other of document.querySelectorAll(".tab")) other.classList.toggle("active", other === button);
    for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== "panel-" + button.dataset.tab;
  });
}

// ------------------------------------------------------------------ train
function methodHasK() {
  const fields = info.methods[$("method").value] || [];
  return fields.some((f) => f.name === "num_prompts");
}

$("method").addEventListener("change", () => { $("k-field").hidden = !methodHasK(); });

$("ref-upload").addEventListener("change", async () => {
  const files = [...$("ref-upload").files];
  uploadBatch = null;
  try {
    let result = null;
    for (const file of files) {
      const query = "name=" + encodeURIComponent(file.name) + (uploadBatch ? "&batch=" + uploadBatch : "");
      const headers = { "Content-Type": "application/octet-stream", "X-Dreamdist-Token": TOKEN };
      result = await answer(await fetch("/api/upload?" + query, { method: "POST", body: file, headers }));
      uploadBatch = result.upload;
    }
    document.querySelector("input[name=source][value=upload]").checked = true;
    $("upload-status").textContent = result ? `${result.count} image(s) uploaded` : "";
  } catch (error) {
    $("upload-status").textContent = "upload failed: " + error.message;
  }
});

function trainRequest() {
  const source = document.querySelector("input[name=source]:checked").value;
  const request = {
    name: $("run-name").value.trim() || null,
    method: $("method").value,
    steps: $("steps").value, learning_rate: $("lr").value, batch_size: $("batch-size").value,
    sample_every: $("sample-every").value, checkpoint_every: $("checkpoint-every").value, seed: $("train-seed").value,
  };
  if (methodHasK()) request.num_prompts = $("num-prompts").value;
  const options = $("options").value.trim();
  if (options) request.options = JSON.parse(options);
  if (source === "folder") request.images = $("ref-folder").value;
  if (source === "upload") request.upload = uploadBatch;
  if (source === "toy") { request.toy_concept = $("toy-concept").value; request.toy_references = $("toy-count").value; }
  return request;
}

$("train-btn").addEventListener("click", async () => {
  try {
    const result = await api("/api/train", trainRequest());
    setStatus("train-status", `started ${result.name}`);
    startedRun = result.name;
    selectedRun = result.name;
    $("run-name").value = "";
    await refreshRuns();
  } catch (error) {
    setStatus("train-status", error.message, true);
  }
});

function runRow(run) {
  const row = document.createElement("tr");
  row.dataset.run = run.name;
  row.className = run.name === selectedRun ? "selected" : "";
  const cells = [run.name, run.method || "", run.state, `${run.step}${run.total ? " / " + run.total : ""}`,
    run.loss == null ? "" : run.loss.toFixed(4)];
  for (const [i, text] of cells.entries()) {
    const cell = document.createElement("td");
    cell.textContent = text;
    if (i === 2) { cell.className = "state state-" + run.state; }
    row.appendChild(cell);
  }
  const actions = document.createElement("td");
  const action = (label, path) => {
    const button = document.createElement("button");
    button.textContent = label;
    button.className = label.toLowerCase();
    button.addEventListener("click", async (event) => {
      event.stopPropagation();
      try { await api(`/api/runs/${encodeURIComponent(run.name)}/${path}`, {}); await refreshRuns(); }
      catch (error) { setStatus("train-status", error.message, true); }
    });
    actions.appendChild(button);
  };
  if (run.state === "running") action("Stop", "stop");
  if (["stopped", "interrupted", "failed"].includes(run.state) && run.from_studio) action("Resume", "resume");
  row.appendChild(actions);
  row.addEventListener("click", () => { selectedRun = run.name; refreshRuns(); });
  return row;
}

function drawCurve(svg, points) {
  svg.innerHTML = "";
  if (!points.length) return;
  const [w, h, pad] = [svg.width.baseVal.value, svg.height.baseVal.value, 28];
  const steps = points.map((p) => p[0]);
  const losses = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps, Math.min(...steps) + 1)];
  const [y0, y1] = [Math.min(...losses), Math.max(...losses)];
  const span = y1 - y0 || 1;
  const x = (s) => pad + ((s - x0) / (x1 - x0)) * (w - 2 * pad);
  const y = (l) => h - pad - ((l - y0) / span) * (h - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map(([s, l]) => `${x(s)},${y(l)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#1565c0");
  line.setAttribute("stroke-width", "1.5");
  svg.appendChild(line);
  for (const [text, tx, ty] of [[y1.toFixed(3), 2, pad - 4], [y0.toFixed(3), 2, h - pad + 12],
    [`step ${x0}`, pad, h - 4], [`step ${x1}`, w - pad - 40, h - 4]]) {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", tx); label.setAttribute("y", ty); label.setAttribute("font-size", "10");
    label.textContent = text;
    svg.appendChild(label);
  }
}

async function showDetail(name) {
  const run = await api("/api/runs/" + encodeURIComponent(name));
  $("run-detail").hidden = false;
  $("detail-name").textContent = run.name;
  const where = run.images ? ` · references ${run.images}` : "";
  $("detail-state").textContent = `${run.state} · step ${run.step}${run.total ? " / " + run.total : ""}` +
    (run.error ? ` · ${run.error}` : "") + where;
  $("detail-state").dataset.state = run.state;
  drawCurve($("loss-curve"), run.curve);
  $("loss-curve").dataset.points = run.curve.length;
  const image = $("latest-sample");
  if (run.samples.length) {
    const latest = run.samples[run.samples.length - 1];
    const src = `/files/${encodeURIComponent(run.name)}/samples/${latest}`;
    if (image.dataset.file !== latest) { image.src = src + "?t=" + Date.now(); image.dataset.file = latest; }
    image.hidden = false;
    $("sample-caption").textContent = `sample grid at ${latest.replace(".png", "")}`;
  }
  $("detail-log").textContent = run.log;
}

async function refreshRuns() {
  let runs;
  try { runs = await api("/api/runs"); } catch (error) { return; }
  const snapshot = JSON.stringify([runs, selectedRun]);
  if (snapshot !== lastRuns) {  // rebuild only on change, so buttons stay put between polls
    lastRuns = snapshot;
    $("runs-table").querySelector("tbody").replaceChildren(...runs.map(runRow));
  }
  const started = runs.find((r) => r.name === startedRun);
  if (started && started.state !== "running") {
    setStatus("train-status", `${started.name}: ${started.state}${started.error ? " · " + started.error : ""}`,
      started.state === "failed");
    startedRun = null;
  }
  if (selectedRun) await showDetail(selectedRun).catch(() => {});
  const finished = runs.filter((r) => r.has_artifact).map((r) => r.name);
  if (finished.join("\n") !== pickerRuns) {
    pickerRuns = finished.join("\n");
    buildPicker($("explore-runs"), finished, true);
    buildPicker($("compare-runs"), finished, false);
  }
}

// ------------------------------------------------------------------ explore
function buildPicker(container, names, weights) {
  const checked = new Set([...container.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value));
  const previous = Object.fromEntries([...container.querySelectorAll("input[type=number]")].map((n) => [n.dataset.run, n.value]));
  container.replaceChildren();
  for (const name of names) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.value = name; box.checked = checked.has(name);
    box.dataset.run = name;
    label.append(box, " " + name);
    if (weights) {
      const weight = document.createElement("input");
      weight.type = "number"; weight.min = "0"; weight.step = "0.05"; weight.value = previous[name] ?? "1";
      weight.dataset.run = name; weight.title = "mixing weight (normalised to sum 1)";
      label.append(" weight ", weight);
    }
    container.appendChild(label);
  }
  if (!names.length) container.textContent = "no finished run yet";
}

function pickedRuns(container) {
  return [...container.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
}

$("gamma").addEventListener("input", () => { $("gamma-value").textContent = $("gamma").value; });

$("generate-btn").addEventListener("click", async () => {
  const runs = pickedRuns($("explore-runs"));
  const weights = runs.map((name) => parseFloat($("explore-runs").querySelector(`input[type=number][data-run="${name}"]`).value));
  const request = {
    runs, weights: runs.length > 1 ? weights : null,
    gamma: parseFloat($("gamma").value), sampler: $("sampler").value,
    prefix: $("prefix").value, suffix: $("suffix").value, prompt: $("prompt").value,
    seed: $("seed").value, num_images: $("num-images").value,
    num_inference_steps: $("inference-steps").value, guidance_scale: $("guidance").value, scheduler: $("scheduler").value,
  };
  setStatus("explore-status", "generating…");
  $("generate-btn").disabled = true;
  try {
    const result = await api("/api/generate", request);
    const gallery = $("gallery");
    gallery.dataset.set = result.id;
    gallery.replaceChildren(...result.files.map((file, i) => {
      const image = document.createElement("img");
      image.className = "sample";
      image.src = `/files/_explore/${result.id}/${file}`;
      image.alt = `image ${i + 1}`;
      image.title = JSON.parse(result.manifest[i]).prompt || file;
      return image;
    }));
    $("manifest").textContent = result.manifest.join("\n");
    $("download").href = "/api/zip/" + result.id;
    $("download").hidden = false;
    const mix = runs.length > 1 ? ` (mix ${runs.map((r, i) => `${r}:${weights[i]}`).join(", ")})` : "";
    setStatus("explore-status", `${result.files.length} images at gamma ${request.gamma}${mix}`);
  } catch (error) {
    setStatus("explore-status", error.message, true);
  } finally {
    $("generate-btn").disabled = false;
  }
});

// ------------------------------------------------------------------ compare
function percent(value) { return value == null ? "–" : (100 * value).toFixed(0) + "%"; }

function table(rows, columns, format, labels) {
  const node = document.createElement("table");
  const head = node.createTHead().insertRow();
  for (const column of ["run", ...columns]) head.insertCell().textContent = labels[column] || column;
  const body = node.createTBody();
  for (const row of rows) {
    const line = body.insertRow();
    line.dataset.run = row.run;
    line.insertCell().textContent = row.run;
    if (row.summary) line.title = row.summary;
    for (const column of columns) {
      const cell = line.insertCell();
      cell.dataset.metric = column;
      cell.textContent = format(column, row[column]);
    }
  }
  return node;
}

$("compare-btn").addEventListener("click", async () => {
  const request = {
    runs: pickedRuns($("compare-runs")), gamma: parseFloat($("compare-gamma").value), sampler: $("compare-sampler").value,
    num_images: $("compare-images").value, num_inference_steps: $("compare-steps").value, seed: $("compare-seed").value,
  };
  setStatus("compare-status", "generating and scoring…");
  $("compare-btn").disabled = true;
  try {
    const result = await api("/api/compare", request);
    const out = $("compare-result");
    out.replaceChildren();
    if (result.toy.length) {
      const title = document.createElement("h3");
      title.textContent = "toy-world oracle report";
      const metrics = ["fidelity", "coverage", "novelty", "attribute_tv"];
      out.append(title, table(result.toy, metrics, (m, v) => m === "attribute_tv" ? v.toFixed(2) : percent(v), result.labels));
    }
    if (result.eval.length) {
      const title = document.createElement("h3");
      title.textContent = "dreamdist eval reports (mean over scenarios)";
      const metrics = Object.keys(result.eval[0]).filter((k) => k !== "run");
      out.append(title, table(result.eval, metrics, (m, v) => v == null ? "–" : v.toFixed(m === "fid" ? 2 : 4), result.labels));
    }
    for (const [kind, file] of Object.entries(result.plots)) {
      const image = document.createElement("img");
      image.className = "compare-plot";
      image.id = "compare-plot-" + kind;
      image.alt = kind + " comparison plot";
      image.src = `/files/_compare/${result.id}/${file}`;
      out.append(image);
    }
    for (const warning of result.warnings) {
      const note = document.createElement("p");
      note.className = "note"; note.textContent = "warning: " + warning;
      out.append(note);
    }
    setStatus("compare-status", `compared ${request.runs.length} run(s)`);
  } catch (error) {
    setStatus("compare-status", error.message, true);
  } finally {
    $("compare-btn").disabled = false;
  }
});

// ------------------------------------------------------------------ start
async function start() {
  info = await api("/api/info");
  $("model-info").textContent = `model: ${info.model} · runs: ${info.runs_dir}`;
  fillSelect($("method"), Object.keys(info.methods), "dreamdistribution");
  $("k-field").hidden = !methodHasK();
  fillSelect($("sampler"), info.samplers, "mixture");
  fillSelect($("compare-sampler"), info.samplers, "mixture");
  fillSelect($("scheduler"), info.schedulers);
  if (info.toy_concepts.length) {
    for (const concept of info.toy_concepts) {
      const option = document.createElement("option");
      option.value = concept.name;
      option.textContent = concept.name;
      option.title = option.dataset.description = concept.description;
      $("toy-concept").appendChild(option);
    }
    const describe = () => {
      const chosen = $("toy-concept").selectedOptions[0];
      $("toy-description").textContent = chosen ? chosen.dataset.description : "";
    };
    $("toy-concept").addEventListener("change", describe);
    describe();
  } else {
    $("toy-source").hidden = true;
    $("toy-fields").hidden = true;
  }
  await refreshRuns();
  setInterval(refreshRuns, 1000);
}

start();
