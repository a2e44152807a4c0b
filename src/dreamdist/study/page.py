"""The voting page: static HTML and a little JavaScript; every datum comes from ``/api/next``.

The page holds no set name, folder or file name; it learns only opaque pair and image ids. It
carries the server's session token (``<meta name="dreamdist-token">``) and sends it as
``X-Dreamdist-Token`` with every POST: another site cannot read the page, so it cannot vote.
Opened as ``/?invite=TOKEN``, it first claims the invite (``POST /api/join``).
"""

from __future__ import annotations

import html

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="dreamdist-token" content="__TOKEN__">
<title>Image preference study</title>
<style>
  * { box-sizing: border-box; }
  body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 80rem; padding: .5rem 1rem; color: #222;
         background: #fff; }
  header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: 0 1rem; }
  h1 { font-size: 1.2rem; margin: .2rem 0; }
  #progress-line { margin: .2rem 0; font-size: .9rem; white-space: nowrap; }
  .caption { margin: .2rem 0; color: #666; font-size: .85rem; }
  #refs { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 6px; }
  #refs img { display: block; height: 6rem; border-radius: 3px; }
  .pair { display: flex; justify-content: center; align-items: flex-start; gap: 16px; margin-top: .6rem; }
  .pair figure { margin: 0; min-width: 0; }
  .pair img { display: block; max-width: 100%; }
  .controls { position: sticky; bottom: 0; background: #fff; padding: .5rem 0 .2rem; }
  .buttons { display: flex; justify-content: center; gap: .8rem; }
  button { font-size: 1.1rem; padding: .5rem 1rem; flex: 0 1 9rem; }
  .hint { margin: .3rem 0 0; color: #666; font-size: .85rem; text-align: center; }
  #status { min-height: 1.2em; margin: .2rem 0; color: #a00; }
  @media (max-width: 40rem) { body { padding: .4rem .5rem; } .pair { gap: 8px; } }
</style>
</head>
<body>
<header>
  <h1 id="question">__QUESTION__</h1>
  <p id="progress-line"><label for="progress">Progress</label>
    <progress id="progress" max="1" value="0"></progress> <span id="progress-text">0 / ?</span></p>
</header>
<section id="refs-section" aria-label="Reference images">
  <p class="caption">Reference images</p><div id="refs"></div>
</section>
<main id="voting" hidden>
  <div class="pair" id="pair">
    <figure><img id="left" alt="Left image"></figure>
    <figure><img id="right" alt="Right image"></figure>
  </div>
  <div class="controls">
    <div class="buttons">
      <button id="vote-left" data-choice="left" aria-keyshortcuts="ArrowLeft" disabled>Left</button>
      <button id="vote-tie" data-choice="tie" aria-keyshortcuts="ArrowDown" disabled>Tie</button>
      <button id="vote-right" data-choice="right" aria-keyshortcuts="ArrowRight" disabled>Right</button>
    </div>
    <p class="hint">Keys: &larr; left, &rarr; right, &darr; tie.</p>
  </div>
</main>
<p id="done" hidden>All done &mdash; thank you!</p>
<p id="status" role="status"></p>
<script>
"use strict";
let pair = null, busy = true;
const $ = (id) => document.getElementById(id);
const TOKEN = document.querySelector('meta[name="dreamdist-token"]').content;
function post(path, body) {
  return fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Dreamdist-Token": TOKEN },
    body: JSON.stringify(body),
  });
}
const buttons = () => document.querySelectorAll("button[data-choice]");
function enable(on) { buttons().forEach((b) => { b.disabled = !on; }); busy = !on; }
function say(text) { $("status").textContent = text || ""; layout(); }  // a long message takes room
function showProgress(done, total) {
  $("progress").max = Math.max(total, 1); $("progress").value = done;
  $("progress-text").textContent = done + " / " + total;
}
let refsReady = Promise.resolve();
function showRefs(urls) {
  const box = $("refs");
  if (box.dataset.count === String(urls.length)) return;
  $("refs-section").hidden = urls.length === 0;
  const imgs = urls.map((u, i) => {
    const img = document.createElement("img"); img.alt = "Reference image " + (i + 1); return img;
  });
  box.replaceChildren(...imgs);
  refsReady = Promise.all(imgs.map((img, i) => imageLoaded(img, urls[i])));
  box.dataset.count = String(urls.length);
}
function imageLoaded(img, url) {
  return new Promise((resolve) => {
    img.onload = img.onerror = () => resolve(); img.src = url;
  });
}
// Sizes: the pair as large as fits (at most PAIR_MAX CSS px a side) with the references, buttons and hint
// still in the window. An image shown at or above its natural size is magnified by a whole number of device
// pixels with nearest-neighbour scaling (sharp, not blurred; 1x is pixel for pixel); a larger one is scaled
// down smoothly. The references are shown at half the pair's magnification, but no smaller than half the
// pair's height and no larger than the pair: the pair is never magnified more than twice the references.
const PAIR_MAX = 480;  // images.MAX_SIDE (768 px) stays sharp at this size on a HiDPI screen
function snap(natural, height, round) {
  const dpr = window.devicePixelRatio || 1, device = (height / natural) * dpr;
  if (device < 1) return { mag: height / natural, pixelated: false };
  return { mag: Math.max(1, round(device)) / dpr, pixelated: true };
}
function flowHeight(items, width, gap) {  // height of items {w, h} wrapped into rows as flex-wrap does
  let x = 0, row = 0, total = 0;
  for (const it of items) {
    if (it.w > width) return Infinity;
    if (x > 0 && x + gap + it.w > width) { total += row + gap; x = 0; row = 0; }
    x += (x > 0 ? gap : 0) + it.w; row = Math.max(row, it.h);
  }
  return total + row;
}
function show(img, s) {
  img.style.width = img.naturalWidth * s.mag + "px"; img.style.height = "auto";
  img.style.imageRendering = s.pixelated ? "pixelated" : "auto";
}
function layout() {
  const left = $("left"), pairBox = $("pair"), refsBox = $("refs");
  if ($("voting").hidden || !left.naturalHeight) return;
  const refs = [...refsBox.children].filter((img) => img.naturalHeight > 0);
  const gap = (el) => parseFloat(getComputedStyle(el).columnGap) || 0;
  const height = (el) => el.getBoundingClientRect().height;
  const chrome = height(document.body) - height(refsBox) - height(pairBox);  // everything but the images
  const room = window.innerHeight - chrome - 1;  // 1 px spare for rounding
  const pairWidth = pairBox.clientWidth - 1, refsWidth = refsBox.clientWidth - 1;
  const nw = left.naturalWidth, nh = left.naturalHeight, pairGap = gap(pairBox), refsGap = gap(refsBox);
  let best = null;
  for (let t = Math.max(16, Math.floor((PAIR_MAX * nh) / Math.max(nw, nh))); t >= 16; t--) {
    const p = snap(nh, t, Math.floor), ph = nh * p.mag;
    const r = refs.map((img) => {
      const s = snap(img.naturalHeight, Math.min(Math.max((img.naturalHeight * p.mag) / 2, ph / 2), ph), Math.round);
      return { img, s, w: img.naturalWidth * s.mag, h: img.naturalHeight * s.mag };
    });
    best = { p, r };
    if (2 * nw * p.mag + pairGap <= pairWidth && flowHeight(r, refsWidth, refsGap) + ph <= room) break;
  }
  show(left, best.p); show($("right"), best.p);
  best.r.forEach(({ img, s }) => show(img, s));
}
window.addEventListener("resize", layout);
async function load() {
  enable(false);
  let data;
  try {
    const response = await fetch("api/next", { cache: "no-store", credentials: "same-origin" });
    data = await response.json();
    if (!response.ok) { say(data.error || "error " + response.status); return; }
  } catch (e) { say("cannot reach the study server; retry by reloading the page"); return; }
  showProgress(data.done, data.total);
  showRefs(data.refs);
  if (data.finished) { $("voting").hidden = true; $("done").hidden = false; pair = null; return; }
  $("voting").hidden = false;
  pair = data.pair;
  // both images shown before a vote counts
  await Promise.all([imageLoaded($("left"), data.left), imageLoaded($("right"), data.right), refsReady]);
  layout();
  enable(true);
}
async function vote(choice) {
  if (busy || !pair) return;
  enable(false);
  say("");
  try {
    const response = await post("api/vote", { pair: pair, choice: choice });
    const data = await response.json();
    if (!response.ok) say(data.error || "error " + response.status);
  } catch (e) {
    say("the vote was not saved (server unreachable); try again");
    enable(true);
    return;
  }
  await load();  // the vote is on disk: the server answers only after it commits
}
buttons().forEach((b) => b.addEventListener("click", () => vote(b.dataset.choice)));
document.addEventListener("keydown", (event) => {
  const choice = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "tie" }[event.key];
  if (choice) { event.preventDefault(); vote(choice); }
});
async function start() {
  const invite = new URLSearchParams(location.search).get("invite");
  if (invite !== null) {  // claim the invite link for this browser before the first pair
    try {
      const response = await post("api/join", { invite: invite });
      if (!response.ok) { say((await response.json()).error || "error " + response.status); return; }
    } catch (e) { say("cannot reach the study server; retry by reloading the page"); return; }
  }
  await load();
}
start();
</script>
</body>
</html>
"""


def render_page(question: str, token: str) -> bytes:
    """The page for one study and server: the question and the session token (both HTML-escaped)."""
    page = TEMPLATE.replace("__TOKEN__", html.escape(token)).replace("__QUESTION__", html.escape(question))
    return page.encode("utf-8")
