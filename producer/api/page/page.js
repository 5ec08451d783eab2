// The conversation page: a tree of turns over the /v1 API of the server that serves it.
// No framework and no build step: the page is three files the API process serves as they are.

const KEY_STORE = "zq-api-key";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const HD_SCALE = 2;
const MAX_SIDE = 4096;

const $ = (selector, root = document) => root.querySelector(selector);
const turnNumber = (job) => job.turn + 1; // records count from 0, people from 1

const state = {
  conversation: null, // id, once the first turn exists
  jobs: new Map(), // job_id -> public job record
  cards: new Map(), // job_id -> <article>
  images: new Map(), // job_id -> object URL of the finished image
  following: new Set(), // job ids with an open event stream
  target: null, // job id the next prompt edits; null = a new picture
  mask: null, // {key, label} of an uploaded mask for the next edit
};

// --- talking to the API -----------------------------------------------------------------

/** An error answer from the API, carrying its RFC 9457 problem body. */
class ApiError extends Error {
  constructor(status, problem) {
    super(describeProblem(status, problem));
    this.status = status;
    this.problem = problem;
  }
}

function describeProblem(status, problem) {
  if (!problem || typeof problem !== "object") return `the server answered ${status}`;
  let text = problem.detail || problem.title || `the server answered ${status}`;
  if (problem.field && !text.includes(problem.field)) text = `${problem.field}: ${text}`;
  if (problem.limit && !text.includes(problem.limit)) text += ` (${problem.limit})`;
  return text;
}

function withKey(headers = {}) {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: withKey(options.headers) });
  if (response.ok) return response;
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    // not JSON: a proxy's page; the status says enough
  }
  if (response.status === 401) askForKey();
  throw new ApiError(response.status, problem);
}

async function apiJson(path, options = {}) {
  return (await api(path, options)).json();
}

async function submitJob(body) {
  return apiJson("/v1/jobs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

async function uploadMask(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  form.append("field", "mask");
  return apiJson("/v1/uploads", { method: "POST", body: form });
}

const jobPath = (jobId) => `/v1/jobs/${encodeURIComponent(jobId)}`;

// --- the conversation -------------------------------------------------------------------

async function openConversation(conversationId) {
  resetState();
  if (!conversationId) {
    render();
    return;
  }
  state.conversation = conversationId;
  try {
    const tree = await apiJson(`/v1/conversations/${encodeURIComponent(conversationId)}`);
    const walk = (nodes) => nodes.forEach((node) => {
      state.jobs.set(node.job.job_id, node.job);
      walk(node.children);
    });
    walk(tree.turns);
  } catch (error) {
    showError(error);
  }
  const newest = [...state.jobs.values()].sort(byCreation).at(-1);
  state.target = newest ? newest.job_id : null;
  render();
  state.jobs.forEach((job) => watch(job));
}

function resetState() {
  state.images.forEach((url) => URL.revokeObjectURL(url));
  state.conversation = null;
  state.jobs.clear();
  state.cards.clear();
  state.images.clear();
  state.following.clear();
  state.target = null;
  state.mask = null;
  document.querySelectorAll("#tree .turn").forEach((card) => card.remove());
}

function remember(job) {
  state.jobs.set(job.job_id, job);
  if (!state.conversation) {
    state.conversation = job.conversation_id;
    history.replaceState(null, "", `#c=${encodeURIComponent(job.conversation_id)}`);
  }
  render();
  watch(job);
}

/** Follow a job until it ends: its event stream, then its image. */
function watch(job) {
  if (!TERMINAL.has(job.status)) follow(job.job_id);
  else if (job.status === "succeeded") loadImage(job.job_id);
}

async function follow(jobId) {
  if (state.following.has(jobId)) return;
  state.following.add(jobId);
  try {
    // EventSource cannot send an Authorization header; a streamed fetch can.
    const response = await api(`${jobPath(jobId)}/events`, {
      headers: { Accept: "text/event-stream" },
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        onEvent(jobId, buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) {
    showError(error);
  } finally {
    state.following.delete(jobId);
  }
  const job = state.jobs.get(jobId);
  if (job && !TERMINAL.has(job.status)) setTimeout(() => follow(jobId), 2000); // stream cut
}

function onEvent(jobId, frame) {
  let event = "message";
  let data = "";
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  const job = state.jobs.get(jobId);
  if (!data || !job) return; // a keep-alive comment, or a conversation left behind
  const payload = JSON.parse(data);
  if (event === "status") job.status = payload.status;
  else if (event === "progress") job.progress = { step: payload.step, total: payload.total };
  else if (event === "end") {
    Object.assign(job, payload);
    if (job.status === "succeeded") loadImage(jobId);
  }
  renderJob(job);
  renderComposer();
}

async function loadImage(jobId) {
  if (state.images.has(jobId)) return;
  try {
    // Through the API, not a redirect to storage: the key goes with it, no CORS needed.
    const blob = await (await api(`${jobPath(jobId)}/image?redirect=false`)).blob();
    if (!state.jobs.has(jobId) || state.images.has(jobId)) return;
    state.images.set(jobId, URL.createObjectURL(blob));
    renderJob(state.jobs.get(jobId));
    renderComposer();
  } catch (error) {
    showError(error);
  }
}

async function downloadManifest(jobId) {
  try {
    const blob = await (await api(`${jobPath(jobId)}/manifest`)).blob();
    const url = URL.createObjectURL(blob);
    const link = Object.assign(document.createElement("a"), {
      href: url, download: `${jobId}.manifest.json`,
    });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    showError(error);
  }
}

// --- drawing ------------------------------------------------------------------------------

const byCreation = (a, b) => (a.created_at || 0) - (b.created_at || 0);

function render() {
  $("#conversation").textContent = state.conversation
    ? `conversation ${state.conversation}` : "new conversation";
  $("#empty").hidden = state.jobs.size > 0;
  for (const job of [...state.jobs.values()].sort(byCreation)) {
    const card = cardFor(job);
    const parentCard = state.cards.get(job.parent_id);
    const home = parentCard ? $(":scope > .children", parentCard) : $("#tree");
    if (card.parentElement !== home) home.append(card);
    renderJob(job);
  }
  renderComposer();
}

function cardFor(job) {
  let card = state.cards.get(job.job_id);
  if (card) return card;
  card = $("#turn-template").content.firstElementChild.cloneNode(true);
  card.dataset.jobId = job.job_id;
  $(".edit", card).addEventListener("click", () => setTarget(job.job_id));
  $(".hd", card).addEventListener("click", () => hdRedraw(job.job_id));
  $(".download-manifest", card).addEventListener("click", () => downloadManifest(job.job_id));
  state.cards.set(job.job_id, card);
  return card;
}

function renderJob(job) {
  const card = state.cards.get(job.job_id);
  if (!card) return;
  card.dataset.status = job.status;
  card.classList.toggle("selected", state.target === job.job_id);
  $(".turn-label", card).textContent = `Turn ${turnNumber(job)}`;
  $(".kind", card).textContent = job.kind;
  $(".model", card).textContent = job.model;
  const status = $(".status", card);
  status.textContent = job.status;
  status.dataset.status = job.status;
  $(".prompt", card).textContent = job.prompt || "(the parent's prompt)";
  const facts = [`seed ${job.seed}`, `${job.steps} steps`];
  if (job.width && job.height) facts.push(`${job.width}×${job.height}`);
  if (job.strength !== null && job.kind !== "generate") facts.push(`strength ${job.strength}`);
  if (job.mask) facts.push("masked");
  if (job.infra_retries) facts.push(`retried ${job.infra_retries}× (${job.infra_error})`);
  facts.push(job.job_id);
  $(".details", card).textContent = facts.join(" · ");
  const progress = $("progress", card);
  progress.hidden = TERMINAL.has(job.status);
  if (job.progress && job.progress.total) {
    progress.max = job.progress.total;
    progress.value = job.progress.step;
  } else {
    progress.removeAttribute("value"); // indeterminate while queued
  }
  const error = $(".job-error", card);
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error_code || "error"}: ${job.error}` : "";
  const url = state.images.get(job.job_id);
  const picture = $(".picture", card);
  const download = $(".download-image", card);
  picture.hidden = download.hidden = !url;
  if (url && picture.src !== url) {
    picture.src = url;
    picture.alt = `turn ${turnNumber(job)}: ${job.prompt}`;
    download.href = url;
    download.download = job.image ? job.image.split("/").pop().replace("image", job.job_id)
      : `${job.job_id}.png`;
  }
  $(".download-manifest", card).hidden = job.status !== "succeeded";
  $(".hd", card).disabled = job.status !== "succeeded";
  $(".edit", card).disabled = job.status === "failed" || job.status === "cancelled";
}

function renderComposer() {
  const target = state.target ? state.jobs.get(state.target) : null;
  const editing = Boolean(target);
  const branching = editing && [...state.jobs.values()].some((j) => j.parent_id === target.job_id);
  $("#target-text").textContent = !editing ? "New picture"
    : `${branching ? "Branch from" : "Edit"} turn ${turnNumber(target)}: “${target.prompt}”`;
  $("#target-clear").hidden = !editing;
  $("#mask-tools").hidden = !editing;
  $("#strength-label").hidden = !editing;
  $("#send").textContent = editing ? (branching ? "Branch" : "Edit") : "Generate";
  const paint = $("#paint-mask");
  paint.disabled = !editing || !state.images.has(target.job_id);
  paint.title = paint.disabled ? "the picture is not finished yet" : "";
  $("#mask-state").textContent = state.mask ? `mask: ${state.mask.label}`
    : "no mask: the whole picture may change";
  $("#mask-clear").hidden = !state.mask;
  state.cards.forEach((card, jobId) => card.classList.toggle("selected", jobId === state.target));
}

function setTarget(jobId) {
  state.target = jobId;
  state.mask = null;
  renderComposer();
  $("#prompt").focus();
}

function showError(error) {
  $("#error").textContent = error instanceof Error ? error.message : String(error);
}

// --- the composer -------------------------------------------------------------------------

function numberField(id) {
  const raw = $(`#${id}`).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function commonOptions() {
  const options = { steps: numberField("steps"), seed: numberField("seed") };
  if (state.conversation) options.conversation_id = state.conversation;
  return options;
}

async function onSubmit(event) {
  event.preventDefault();
  showError("");
  const prompt = $("#prompt").value.trim();
  if (!prompt) {
    showError("prompt: type what to draw or what to change");
    return;
  }
  const target = state.target ? state.jobs.get(state.target) : null;
  const model = $("#model").value;
  const body = target
    ? { kind: "edit", parent_id: target.job_id, prompt, model,
        strength: Number($("#strength").value), mask: state.mask ? state.mask.key : undefined,
        ...commonOptions() }
    : { kind: "generate", prompt, model, width: numberField("width"),
        height: numberField("height"), ...commonOptions() };
  await send(body, () => {
    $("#prompt").value = "";
  });
}

async function hdRedraw(jobId) {
  const parent = state.jobs.get(jobId);
  const side = (n) => Math.min(MAX_SIDE, n * HD_SCALE);
  showError("");
  await send({ kind: "refine", parent_id: jobId, width: side(parent.width),
               height: side(parent.height), ...commonOptions() });
}

async function send(body, onSent = () => {}) {
  const button = $("#send");
  button.disabled = true;
  try {
    const job = await submitJob(body);
    onSent();
    state.mask = null;
    state.target = job.job_id; // the next prompt continues from the newest turn
    remember(job);
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

async function onMaskFile(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  showError("");
  try {
    const stored = await uploadMask(file, file.name);
    state.mask = { key: stored.key, label: `${file.name} (${stored.width}×${stored.height})` };
  } catch (error) {
    showError(error);
  }
  renderComposer();
}

// --- the mask painter -------------------------------------------------------------------

const painter = { drawing: false, painted: false, last: null };

function openPainter() {
  const url = state.images.get(state.target);
  if (!url) return;
  const image = $("#painter-image");
  const canvas = $("#painter-canvas");
  image.onload = () => {
    canvas.width = image.naturalWidth; // paint at the picture's own resolution
    canvas.height = image.naturalHeight;
    painter.painted = false;
    fitStage(image);
  };
  image.src = url;
  $("#painter").showModal();
}

/** As large as the screen allows, both ways: a 6000 px photo shrinks, a thumbnail grows. */
function fitStage(image) {
  const maxWidth = Math.min(window.innerWidth * 0.92, 960) - 32;
  const maxHeight = window.innerHeight * 0.65;
  const scale = Math.min(maxWidth / image.naturalWidth, maxHeight / image.naturalHeight);
  image.style.width = `${Math.floor(image.naturalWidth * scale)}px`;
  image.style.height = `${Math.floor(image.naturalHeight * scale)}px`;
}

function canvasPoint(event) {
  const canvas = $("#painter-canvas");
  const box = canvas.getBoundingClientRect();
  return { x: (event.clientX - box.left) * (canvas.width / box.width),
           y: (event.clientY - box.top) * (canvas.height / box.height),
           scale: canvas.width / box.width };
}

function paintTo(event) {
  const point = canvasPoint(event);
  const context = $("#painter-canvas").getContext("2d");
  context.strokeStyle = context.fillStyle = "#ff3b30";
  context.lineCap = context.lineJoin = "round";
  context.lineWidth = Number($("#brush").value) * point.scale;
  context.beginPath();
  const from = painter.last || point;
  context.moveTo(from.x, from.y);
  context.lineTo(point.x + 0.01, point.y);
  context.stroke();
  painter.last = point;
  painter.painted = true;
}

function maskBlob() {
  const paint = $("#painter-canvas");
  const mask = document.createElement("canvas");
  mask.width = paint.width;
  mask.height = paint.height;
  const context = mask.getContext("2d");
  context.drawImage(paint, 0, 0);
  context.globalCompositeOperation = "source-in"; // painted -> white
  context.fillStyle = "#fff";
  context.fillRect(0, 0, mask.width, mask.height);
  context.globalCompositeOperation = "destination-over"; // the rest -> black (kept)
  context.fillStyle = "#000";
  context.fillRect(0, 0, mask.width, mask.height);
  return new Promise((resolve) => mask.toBlob(resolve, "image/png"));
}

async function usePaintedMask() {
  const dialog = $("#painter");
  if (!painter.painted) {
    dialog.close();
    return;
  }
  $("#painter-done").disabled = true;
  try {
    const stored = await uploadMask(await maskBlob(), "painted-mask.png");
    state.mask = { key: stored.key, label: `painted (${stored.width}×${stored.height})` };
    dialog.close();
  } catch (error) {
    dialog.close();
    showError(error);
  } finally {
    $("#painter-done").disabled = false;
  }
  renderComposer();
}

function clearPainting() {
  const canvas = $("#painter-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  painter.painted = false;
}

// --- the API key --------------------------------------------------------------------------

function askForKey() {
  $("#key-form").hidden = false;
  $("#key").focus();
}

function onKey(event) {
  event.preventDefault();
  const key = $("#key").value.trim();
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
  $("#key-form").hidden = true;
  showError("");
  openConversation(conversationInHash());
}

// --- start --------------------------------------------------------------------------------

function conversationInHash() {
  const match = /(?:^#|&)c=([^&]+)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function start() {
  $("#composer").addEventListener("submit", onSubmit);
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#composer").requestSubmit();
  });
  $("#target-clear").addEventListener("click", () => setTarget(null));
  $("#new-conversation").addEventListener("click", () => {
    history.pushState(null, "", location.pathname);
    openConversation(null);
  });
  $("#key-form").addEventListener("submit", onKey);
  $("#key-button").addEventListener("click", askForKey);
  $("#strength").addEventListener("input", (event) => {
    $("#strength-value").textContent = event.target.value;
  });
  $("#mask-file").addEventListener("change", onMaskFile);
  $("#mask-clear").addEventListener("click", () => {
    state.mask = null;
    renderComposer();
  });
  $("#paint-mask").addEventListener("click", openPainter);
  $("#painter-done").addEventListener("click", usePaintedMask);
  $("#painter-cancel").addEventListener("click", () => $("#painter").close());
  $("#painter-clear").addEventListener("click", clearPainting);
  const canvas = $("#painter-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    painter.drawing = true;
    painter.last = null;
    paintTo(event);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (painter.drawing) paintTo(event);
  });
  const stop = () => {
    painter.drawing = false;
    painter.last = null;
  };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  // Back, forward, or an edited address: popstate covers all three (hashchange would double).
  window.addEventListener("popstate", () => openConversation(conversationInHash()));
  openConversation(conversationInHash());
}

start();
