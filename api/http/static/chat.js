// The web chat over POST /v1/chat (SSE). Untrusted text (titles, explanations, errors) only ever goes
// through textContent or attributes: never innerHTML. A file of its own so the CSP needs no 'unsafe-inline'.
"use strict";
const $ = (id) => document.getElementById(id);
let sessionId = null;
let photo = null;  // data: URL of the attached photo
for (const id of ["temperature", "top_p", "top_k", "explore", "candidates", "mmr", "n", "diversity"]) {
  const fixed = ["top_p", "mmr", "diversity"].includes(id);
  const show = () => { $(id + "-v").textContent = fixed ? Number($(id).value).toFixed(2) : $(id).value; };
  $(id).addEventListener("input", show); show();
}
$("use-diversity").addEventListener("change", () => {
  const on = $("use-diversity").checked;
  $("diversity").disabled = !on;
  // A target diversity brings its own settings (and the candidate pools it was calibrated on).
  for (const id of ["temperature", "top_p", "top_k", "explore", "candidates", "mmr"]) $(id).disabled = on;
});
$("key").value = localStorage.getItem("tandem-key") || "";
$("key").addEventListener("change", () => localStorage.setItem("tandem-key", $("key").value));

function attach(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => { photo = reader.result; $("photo-name").textContent = file.name; };
  reader.readAsDataURL(file);
}
$("photo").addEventListener("change", (e) => attach(e.target.files[0]));
for (const target of [$("drop"), document.body]) {
  target.addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
  target.addEventListener("drop", (e) => { e.preventDefault(); $("drop").classList.remove("over");
                                           attach(e.dataTransfer.files[0]); });
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderCards(box, items) {
  box.replaceChildren(...items.map((item) => {
    const card = el("div", "card");
    card.dataset.productId = item.product_id;
    if (item.image_url) { const img = el("img"); img.src = item.image_url; img.alt = item.name; card.append(img); }
    card.append(el("div", "name", item.name), el("div", "meta", item.category),
                el("div", "meta", "score " + Number(item.score).toFixed(3)));
    if (item.reason) card.append(el("div", "meta", item.reason));
    return card;
  }));
}

async function send(text) {
  const turn = el("div", "turn");
  const ask = el("div", "ask", text || "(photo)");
  if (photo) { const img = el("img"); img.src = photo; ask.append(img); }
  const cards = el("div", "cards"), explanation = el("div", "explanation"), notes = el("div", "degraded");
  turn.append(ask, cards, explanation, notes);
  $("turns").append(turn);
  const message = {};
  if (text) message.text = text;
  if (photo) message.image_base64 = photo;
  const body = { message, stream: true, top_k: Number($("n").value) };
  if ($("use-diversity").checked) body.diversity = Number($("diversity").value);
  else {
    body.sampling = { temperature: Number($("temperature").value), top_p: Number($("top_p").value),
                      top_k: Number($("top_k").value) };
    body.candidates = Math.max(Number($("candidates").value), body.top_k);
    if (Number($("explore").value) > 0) body.explore = Math.min(Number($("explore").value), body.candidates - 1);
    if (Number($("mmr").value) < 1) body.mmr_lambda = Number($("mmr").value);
  }
  if (sessionId) body.session_id = sessionId;
  photo = null; $("photo-name").textContent = "photo"; $("photo").value = "";
  const headers = { "Content-Type": "application/json" };
  if ($("key").value) headers["X-API-Key"] = $("key").value;
  const response = await fetch("/v1/chat", { method: "POST", headers, body: JSON.stringify(body) });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    turn.append(el("div", "error", (problem.error && problem.error.message) || response.statusText));
    if (response.status === 404) sessionId = null;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const event = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "null");
      if (event === "candidates") { sessionId = data.session_id; $("session").textContent = "session " + sessionId.slice(0, 8); }
      else if (event === "ranking") renderCards(cards, data.items);
      else if (event === "token") explanation.textContent += data.text;
      else if (event === "revise") explanation.textContent = data.explanation;
      else if (event === "error") turn.append(el("div", "error", data.error.message));
      else if (event === "done") {
        renderCards(cards, data.items);
        explanation.textContent = data.explanation;
        const ild = data.diversity.ild_image === null ? "" : "ILD " + data.diversity.ild_image.toFixed(3);
        const used = data.diversity.settings;
        const explored = used.explore ? used.explore + " nearby categories" : "";
        const mmr = used.mmr_lambda === undefined ? "" : "MMR λ " + Number(used.mmr_lambda).toFixed(2);
        notes.textContent = [ild, explored, mmr, ...data.degraded.map((d) => d.part + ": " + d.reason)].filter(Boolean).join(" · ");
        turn.dataset.done = "true";
      }
    }
  }
}

$("ask").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text && !photo) return;
  $("text").value = "";
  $("send").disabled = true;
  try { await send(text); } catch (err) { $("turns").append(el("div", "error", String(err))); }
  finally { $("send").disabled = false; }
});
