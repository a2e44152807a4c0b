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
  body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 70rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; }
  #refs { display: flex; flex-wrap: wrap; gap: .4rem; margin-bottom: 1rem; }
  #refs img { height: 6rem; border-radius: 4px; }
  .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
  .pair figure { margin: 0; text-align: center; }
  .pair img { width: 100%; max-width: 30rem; max-height: 55vh; object-fit: contain; }
  .buttons { display: flex; justify-content: center; gap: 1rem; margin: 1rem 0; }
  button { font-size: 1.1rem; padding: .5rem 2rem; }
  #status { min-height: 1.5em; color: #a00; }
  .caption { margin: 0 0 .3rem; color: #666; font-size: .9rem; }
  .hint { color: #666; font-size: .9rem; text-align: center; }
</style>
</head>
<body>
<h1 id="question">__QUESTION__</h1>
<section aria-label="Reference images"><p class="caption">Reference images</p><div id="refs"></div></section>
<p id="progress-line"><label for="progress">Progress</label>
  <progress id="progress" max="1" value="0"></progress> <span id="progress-text">0 / ?</span></p>
<main id="voting" hidden>
  <div class="pair">
    <figure><img id="left" alt="Left image"></figure>
    <figure><img id="right" alt="Right image"></figure>
  </div>
  <div class="buttons">
    <button id="vote-left" data-choice="left" aria-keyshortcuts="ArrowLeft" disabled>Left</button>
    <button id="vote-tie" data-choice="tie" aria-keyshortcuts="ArrowDown" disabled>Tie</button>
    <button id="vote-right" data-choice="right" aria-keyshortcuts="ArrowRight" disabled>Right</button>
  </div>
  <p class="hint">Keys: &larr; left, &rarr; right, &darr; tie.</p>
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
function say(text) { $("status").textContent = text || ""; }
function showProgress(done, total) {
  $("progress").max = Math.max(total, 1); $("progress").value = done;
  $("progress-text").textContent = done + " / " + total;
}
function showRefs(urls) {
  const box = $("refs");
  if (box.dataset.count === String(urls.length)) return;
  box.replaceChildren(...urls.map((u, i) => {
    const img = document.createElement("img"); img.src = u; img.alt = "Reference image " + (i + 1); return img;
  }));
  box.dataset.count = String(urls.length);
}
function imageLoaded(img, url) {
  return new Promise((resolve) => {
    img.onload = img.onerror = () => resolve(); img.src = url;
  });
}
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
  await Promise.all([imageLoaded($("left"), data.left), imageLoaded($("right"), data.right)]);
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
