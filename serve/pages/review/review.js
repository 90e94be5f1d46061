// promptlabel's review page: a thin client of the review JSON API (the same one scripts use).
// Keyboard first; every text from outside (class names, file names, the VLM's answers) is set
// with textContent, never as markup. Boxes are drawn and edited with Konva (vendored).
"use strict";

(() => {
  const COLORS = { accepted: "#2e9e4f", rejected: "#c0392b", needs_review: "#e0a100", current: "#1f6feb" };
  const PREFETCH_IMAGES = 3;
  const QUEUE_BATCH = 20;
  const MAX_QUEUE_LIMIT = 200; // the API's
  const $ = (id) => document.getElementById(id);

  const state = {
    apiBase: null, // ".../jobs/{job}/review"
    csrf: null,
    classes: [],
    // Two queues: boxes to review, and blind spot checks (S switches); each keeps its place.
    queues: {
      review: { path: "queue", items: [], index: 0, exhausted: false },
      spot: { path: "spot-checks", items: [], index: 0, exhausted: false },
    },
    kind: "review", // which queue is on screen
    images: new Map(), // image_sha256 -> HTMLImageElement (prefetched)
    undo: [], // proposal ids this reviewer decided, latest last
    chosenClass: 0,
    mode: "review", // review | edit | add | help
    showMasks: true, // M toggles the segmenter's masks over the boxes
    // ms from a key press (the event's own time) to the frame that shows the next item drawn:
    // what a reviewer waits, measured in the page (window.reviewTimings).
    timings: [],
  };
  window.reviewTimings = state.timings;

  // -- the API --------------------------------------------------------------------------------

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
    } catch (error) {
      return { status: 0, ok: false, payload: { detail: `the server did not answer (${error.message})` } };
    }
    let payload = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("application/json")) payload = await response.json();
    return { status: response.status, ok: response.ok, payload };
  }

  function detail(payload) {
    if (!payload) return "no answer";
    if (typeof payload.detail === "string") return payload.detail;
    return JSON.stringify(payload.detail ?? payload);
  }

  // -- sign-in and job choice -----------------------------------------------------------------

  async function start() {
    const session = await api("session");
    if (session.status !== 200) return showSignin();
    state.csrf = session.payload.csrf_token;
    if (session.payload.api_base) {
      // `promptlabel review DATASET_DIR`: one workspace, no sign-in.
      state.apiBase = session.payload.api_base;
      return openReview();
    }
    const projectId = session.payload.project_id;
    const job = new URLSearchParams(location.search).get("job");
    if (job) {
      state.apiBase = `/v1/projects/${encodeURIComponent(projectId)}/jobs/${encodeURIComponent(job)}/review`;
      return openReview();
    }
    return showJobs(projectId);
  }

  function show(section) {
    for (const id of ["signin", "jobs", "review"]) $(id).hidden = id !== section;
  }

  function showSignin() {
    show("signin");
    $("api-key").focus();
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    const answer = await api("session", { method: "POST", body: { api_key: key } });
    $("api-key").value = "";
    if (!answer.ok) {
      $("signin-error").textContent = detail(answer.payload);
      return;
    }
    start();
  });

  async function showJobs(projectId) {
    show("jobs");
    const answer = await api(
      `/v1/projects/${encodeURIComponent(projectId)}/jobs?status=succeeded&limit=100`,
    );
    const list = $("job-list");
    list.replaceChildren();
    for (const job of answer.payload || []) {
      if (job.kind !== "label") continue;
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `${job.id} (${job.created_at})`;
      button.addEventListener("click", () => {
        const url = new URL(location.href);
        url.searchParams.set("job", job.id);
        location.assign(url.toString());
      });
      item.append(button);
      list.append(item);
    }
    if (!list.children.length) list.textContent = "No finished labeling job yet.";
    const first = list.querySelector("button");
    if (first) first.focus();
  }

  // -- the queue --------------------------------------------------------------------------------

  async function openReview() {
    show("review");
    $("mode-button").hidden = false;
    $("export-button").hidden = false;
    const summary = await api(`${state.apiBase}/summary`);
    if (!summary.ok) return notice(detail(summary.payload), true);
    state.classes = summary.payload.classes;
    $("where").textContent = summary.payload.job_id || "";
    drawClassList();
    drawClassFilter();
    await fetchMore();
    render();
  }

  // The review queue's filters come from the page's address (?class=NAME&reason=PREFIX, each
  // repeatable), so a filtered queue can be bookmarked and shared.
  function queueQuery(queue) {
    // The server hands this reviewer's own claimed items out again until their decisions are
    // recorded (some may be on their way): ask for that many more, so a batch brings new ones.
    const held = queue.items.filter((item) => !item.recorded).length;
    const query = new URLSearchParams({ limit: String(Math.min(MAX_QUEUE_LIMIT, QUEUE_BATCH + held)) });
    if (queue === state.queues.review) {
      const params = new URLSearchParams(location.search);
      for (const name of ["class", "reason"]) {
        for (const value of params.getAll(name)) query.append(name, value);
      }
    }
    return query.toString();
  }

  function drawClassFilter() {
    const select = $("class-filter");
    const chosen = new URLSearchParams(location.search).get("class") ?? "";
    for (const name of state.classes) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.append(option);
    }
    select.value = chosen;
    $("filter-label").hidden = false;
    select.addEventListener("change", () => {
      const url = new URL(location.href);
      url.searchParams.delete("class");
      if (select.value) url.searchParams.set("class", select.value);
      location.assign(url.toString());
    });
  }

  function fetchMore() {
    // One request per queue at a time; callers share it.
    const queue = q();
    if (queue.exhausted) return Promise.resolve();
    if (!queue.fetching) {
      queue.fetching = (async () => {
        const query = queueQuery(queue);
        const answer = await api(`${state.apiBase}/${queue.path}?${query}`);
        if (!answer.ok) {
          queue.exhausted = true; // said on screen; switching queues or reloading tries again
          return notice(detail(answer.payload), true);
        }
        const known = new Set(queue.items.map((item) => item.proposal_id));
        const fresh = answer.payload.items.filter((item) => !known.has(item.proposal_id));
        // Fewer than asked for: the server has nothing beyond these; nothing new (this reviewer
        // holds more than one request may ask for): stop asking, never loop.
        const asked = Number(new URLSearchParams(query).get("limit"));
        if (answer.payload.items.length < asked || !fresh.length) queue.exhausted = true;
        queue.items.push(...fresh);
      })().finally(() => {
        queue.fetching = null;
      });
    }
    return queue.fetching.then(prefetch);
  }

  function imageFor(item) {
    let image = state.images.get(item.image_sha256);
    if (!image) {
      image = new Image();
      image.decoding = "async";
      image.src = item.image_url;
      state.images.set(item.image_sha256, image);
    }
    return image;
  }

  function prefetch() {
    for (let i = q().index; i < Math.min(q().items.length, q().index + 1 + PREFETCH_IMAGES); i++) {
      const image = imageFor(q().items[i]);
      if (image.decode) image.decode().catch(() => {});
    }
    if (q().items.length - q().index < QUEUE_BATCH / 2) fetchMore();
  }

  function q() {
    return state.queues[state.kind];
  }

  function current() {
    return q().items[q().index];
  }

  // -- drawing ----------------------------------------------------------------------------------

  const stage = new Konva.Stage({ container: "stage", width: 10, height: 10 });
  // Named, so that tests and scripts find them: the image, the masks over it, the boxes on top.
  const imageLayer = new Konva.Layer({ name: "image" });
  const maskLayer = new Konva.Layer({ name: "masks", listening: false });
  const boxLayer = new Konva.Layer({ name: "boxes" });
  stage.add(imageLayer, maskLayer, boxLayer);
  const transformer = new Konva.Transformer({ rotateEnabled: false, keepRatio: false, ignoreStroke: true });
  boxLayer.add(transformer);
  let view = { scale: 1, image: null };
  let currentRect = null;
  let drawing = null; // the rectangle being drawn in add mode

  function fitStage() {
    const wrap = $("stage-wrap");
    stage.width(wrap.clientWidth);
    stage.height(wrap.clientHeight);
  }
  window.addEventListener("resize", () => {
    fitStage();
    render();
  });

  function toImage(x, y) {
    return [x / view.scale, y / view.scale];
  }

  function rectFor(xyxy, color, width) {
    const [x1, y1, x2, y2] = xyxy;
    return new Konva.Rect({
      x: x1 * view.scale,
      y: y1 * view.scale,
      width: (x2 - x1) * view.scale,
      height: (y2 - y1) * view.scale,
      stroke: color,
      strokeWidth: width,
      strokeScaleEnabled: false,
    });
  }

  // -- masks: COCO RLE as pycocotools writes it, painted once per mask and colour ----------------

  // pycocotools' rleFrString: 5-bit groups ("0" + value), 0x20 continues, 0x10 signs the last
  // group; from the third count on, each is a difference to the count two before.
  function rleCounts(text) {
    const counts = [];
    let at = 0;
    while (at < text.length) {
      let value = 0;
      let shift = 1;
      let more = true;
      while (more) {
        const c = text.charCodeAt(at) - 48;
        value += (c & 0x1f) * shift;
        more = (c & 0x20) !== 0;
        at += 1;
        shift *= 32;
        if (!more && c & 0x10) value -= shift;
      }
      if (counts.length > 2) value += counts[counts.length - 2];
      counts.push(value);
    }
    return counts;
  }

  const maskCanvases = new WeakMap(); // rle object -> Map(colour -> canvas)

  function maskCanvas(rle, color) {
    let byColor = maskCanvases.get(rle);
    if (!byColor) maskCanvases.set(rle, (byColor = new Map()));
    if (byColor.has(color)) return byColor.get(color);
    const [h, w] = rle.size;
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(w, h);
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
    let position = 0;
    rleCounts(rle.counts).forEach((count, i) => {
      if (i % 2 === 1) {
        // Column-major runs: pixel p is at column p / h, row p % h.
        for (let p = position; p < position + count; p++) {
          const o = ((p % h) * w + Math.floor(p / h)) * 4;
          pixels.data[o] = r;
          pixels.data[o + 1] = g;
          pixels.data[o + 2] = b;
          pixels.data[o + 3] = 110;
        }
      }
      position += count;
    });
    context.putImageData(pixels, 0, 0);
    byColor.set(color, canvas);
    return canvas;
  }

  function drawMasks(item) {
    maskLayer.destroyChildren();
    const shown = [
      ...(item.boxes || []).filter((box) => box.mask).map((box) => [box.mask, COLORS[box.status] || "#999999"]),
      ...(item.mask ? [[item.mask, COLORS.current]] : []),
    ];
    const [w, h] = item.image_wh;
    for (const [rle, color] of shown) {
      maskLayer.add(new Konva.Image({ image: maskCanvas(rle, color), width: w * view.scale, height: h * view.scale }));
    }
    maskLayer.visible(state.showMasks);
    maskLayer.draw();
    document.body.dataset.masks = String(shown.length);
    $("masks-button").hidden = !shown.length;
  }

  function toggleMasks() {
    state.showMasks = !state.showMasks;
    maskLayer.visible(state.showMasks);
    maskLayer.draw();
    document.body.dataset.masksShown = String(state.showMasks);
    $("masks-button").setAttribute("aria-pressed", String(state.showMasks));
    const item = current();
    const image = item && state.images.get(item.image_sha256);
    if (image && image.complete) drawCrop(image, item);
  }

  function render() {
    const started = performance.now();
    const item = current();
    updateProgress();
    if (!item) {
      delete document.body.dataset.item;
      delete document.body.dataset.image;
      clearDetails();
      imageLayer.destroyChildren();
      maskLayer.destroyChildren();
      maskLayer.draw();
      delete document.body.dataset.masks;
      transformer.remove(); // kept: destroyChildren would destroy its handles
      boxLayer.destroyChildren();
      boxLayer.add(transformer);
      transformer.nodes([]);
      imageLayer.draw();
      boxLayer.draw();
      const empty = state.kind === "spot"
        ? "No spot checks waiting: draw a sample below."
        : "The queue is empty: every item is decided.";
      notice(q().exhausted ? empty : "Loading…");
      if (!q().exhausted) fetchMore().then(render);
      return;
    }
    fitStage();
    const image = imageFor(item);
    const draw = () => {
      if (current() !== item) return; // moved on while the image was loading
      const [w, h] = item.image_wh;
      view.scale = Math.min(stage.width() / w, stage.height() / h);
      imageLayer.destroyChildren();
      imageLayer.add(new Konva.Image({ image, width: w * view.scale, height: h * view.scale }));
      transformer.remove();
      boxLayer.destroyChildren();
      for (const box of item.boxes || []) {
        if (box.proposal_id === item.proposal_id) continue;
        boxLayer.add(rectFor(box.xyxy, COLORS[box.status] || "#999", 1));
      }
      currentRect = rectFor(item.xyxy, COLORS.current, 3);
      currentRect.name("current");
      boxLayer.add(currentRect);
      transformer.nodes([]);
      boxLayer.add(transformer);
      imageLayer.draw();
      boxLayer.draw();
      drawMasks(item);
      drawCrop(image, item);
      showDetails(item);
      const pressedAt = state.pressedAt ?? started;
      state.pressedAt = undefined;
      requestAnimationFrame(() => state.timings.push(performance.now() - pressedAt));
      document.body.dataset.item = String(item.proposal_id);
      document.body.dataset.image = item.image_sha256;
      prefetch();
    };
    if (image.complete && image.naturalWidth) draw();
    else image.addEventListener("load", draw, { once: true });
  }

  function drawCrop(image, item) {
    const canvas = $("crop");
    const context = canvas.getContext("2d");
    const [x1, y1, x2, y2] = item.xyxy;
    const margin = 0.15 * Math.max(x2 - x1, y2 - y1);
    const sx = Math.max(0, x1 - margin);
    const sy = Math.max(0, y1 - margin);
    const sw = Math.min(item.image_wh[0], x2 + margin) - sx;
    const sh = Math.min(item.image_wh[1], y2 + margin) - sy;
    const fit = Math.min(canvas.width / sw, canvas.height / sh);
    context.fillStyle = "#333";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(image, sx, sy, sw, sh, 0, 0, sw * fit, sh * fit);
    if (item.mask && state.showMasks && state.kind !== "spot") {
      context.drawImage(maskCanvas(item.mask, COLORS.current), sx, sy, sw, sh, 0, 0, sw * fit, sh * fit);
    }
  }

  function clearDetails() {
    // Nothing on screen: no earlier item's crop or evidence either (spot checks are blind).
    const canvas = $("crop");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    for (const id of ["item-class", "item-question", "item-answer", "item-yes", "item-score", "item-reason"]) {
      $(id).textContent = "";
    }
    $("evidence").hidden = state.kind === "spot";
  }

  function showDetails(item) {
    $("item-class").textContent = item.class;
    $("evidence").hidden = state.kind === "spot";
    if (state.kind === "spot") return; // blind: no verdict, answer, P(yes) or score
    $("item-question").textContent = item.question ?? "";
    $("item-answer").textContent = item.answer ?? "";
    $("item-yes").textContent = item.yes_prob == null ? "—" : item.yes_prob.toFixed(3);
    $("item-score").textContent = item.score == null ? "—" : item.score.toFixed(3);
    $("item-reason").textContent = item.reason;
    for (const [i, li] of [...$("classes").children].entries()) {
      li.classList.toggle("current", i === item.class_id);
    }
  }

  function drawClassList() {
    const list = $("classes");
    list.replaceChildren();
    state.classes.forEach((name, i) => {
      const li = document.createElement("li");
      li.textContent = name;
      li.title = i < 9 ? `press ${i + 1}` : "";
      li.addEventListener("click", () => decide("relabel", { class_id: i }));
      list.append(li);
    });
  }

  function updateProgress() {
    const left = q().items.length - q().index;
    $("progress").textContent = `${q().index} done here · ${left}${q().exhausted ? "" : "+"} left`;
  }

  function notice(text, conflict = false) {
    $("notice").textContent = text;
    $("notice").classList.toggle("conflict", conflict);
  }

  // -- decisions --------------------------------------------------------------------------------

  // Decisions go out one request at a time, in the order they were made: the screen moves on at
  // once, and the server (and the undo stack) still see them in order.
  let sending = Promise.resolve();

  function send(decisions) {
    const sent = sending.then(() => post(decisions));
    sending = sent.catch(() => null);
    return sent;
  }

  async function post(decisions) {
    const answer = await api(`${state.apiBase}/decisions`, { method: "POST", body: { decisions } });
    const stale = answer.status === 409 && (answer.payload?.results || []).find((r) => r.stale);
    if (stale) {
      notice(`Someone decided this box meanwhile (${stale.current?.reviewer ?? "undone"}): kept theirs.`, true);
      return null;
    }
    if (!answer.ok) {
      notice(detail(answer.payload), true);
      return null;
    }
    return answer.payload.results;
  }

  async function decide(action, extra = {}) {
    const item = current();
    if (!item || state.kind !== "review") return;
    state.pressedAt ??= performance.now();
    // Move on at once; the server's answer arrives while the next item is already drawn.
    const decision = { proposal_id: item.proposal_id, action, base_version: item.version, ...extra };
    q().index += 1;
    render();
    const results = await send([decision]);
    if (results) {
      item.recorded = true;
      item.version = results[0].state.version;
      state.undo.push(item);
      notice(`${action}: ${item.class}${extra.class_id != null ? ` → ${state.classes[extra.class_id]}` : ""}`);
    }
  }

  async function undo() {
    if (state.kind !== "review") return;
    await sending; // the decision to undo may still be on its way
    const item = state.undo.pop();
    if (!item) return notice("Nothing of yours to undo here.");
    const results = await send([{ proposal_id: item.proposal_id, action: "undo", base_version: item.version }]);
    if (!results) return;
    item.version = results[0].state.version;
    item.recorded = false;
    // Back to the item, which needs a decision again.
    const at = q().items.indexOf(item);
    if (at >= 0) q().index = at;
    render();
    notice(`undone: ${item.class}`);
  }

  // -- editing and adding boxes ---------------------------------------------------------------

  function startEdit() {
    if (!current() || !currentRect || state.kind !== "review") return;
    state.mode = "edit";
    currentRect.draggable(true);
    transformer.nodes([currentRect]);
    boxLayer.draw();
    notice("Drag the box or its handles; Enter saves, Esc cancels.");
  }

  function rectToXyxy(rect) {
    const box = rect.getClientRect({ skipStroke: true, relativeTo: boxLayer });
    const [x1, y1] = toImage(box.x, box.y);
    const [x2, y2] = toImage(box.x + box.width, box.y + box.height);
    return [x1, y1, x2, y2].map((v) => Math.round(v * 100) / 100);
  }

  function finishEdit(save) {
    state.mode = "review";
    transformer.nodes([]);
    if (currentRect) currentRect.draggable(false);
    if (save && currentRect) return decide("edit", { xyxy: rectToXyxy(currentRect) });
    render();
    notice("");
  }

  function startAdd() {
    if (!current() || state.kind !== "review") return;
    state.mode = "add";
    notice(`Drag on the image to add a ${state.classes[state.chosenClass]}; Esc cancels.`);
  }

  stage.on("mousedown touchstart", () => {
    if (state.mode !== "add") return;
    const at = stage.getPointerPosition();
    drawing = new Konva.Rect({ x: at.x, y: at.y, width: 1, height: 1, stroke: COLORS.accepted, strokeWidth: 2 });
    boxLayer.add(drawing);
  });
  stage.on("mousemove touchmove", () => {
    if (!drawing) return;
    const at = stage.getPointerPosition();
    drawing.width(at.x - drawing.x());
    drawing.height(at.y - drawing.y());
    boxLayer.batchDraw();
  });
  stage.on("mouseup touchend", async () => {
    if (!drawing) return;
    const xyxy = rectToXyxy(drawing);
    drawing.destroy();
    drawing = null;
    state.mode = "review";
    const item = current();
    const answer = await api(`${state.apiBase}/boxes`, {
      method: "POST",
      body: { image_sha256: item.image_sha256, class_id: state.chosenClass, xyxy },
    });
    if (!answer.ok) return notice(detail(answer.payload), true);
    item.boxes = [...(item.boxes || []), { ...answer.payload, status: "accepted", xyxy }];
    notice(`added: ${state.classes[state.chosenClass]}`);
    render();
  });

  // -- spot checks ------------------------------------------------------------------------------

  function switchQueue() {
    if (state.mode !== "review") return;
    state.kind = state.kind === "review" ? "spot" : "review";
    const spot = state.kind === "spot";
    document.body.classList.toggle("spot", spot);
    $("spot").hidden = !spot;
    $("actions").hidden = spot;
    $("classes").hidden = spot;
    $("mode-button").firstChild.textContent = spot ? "Review queue " : "Spot checks ";
    q().exhausted = false; // look again: colleagues may have drawn or left some
    notice("");
    if (spot) showReport();
    render();
  }

  async function answerSpotCheck(answer) {
    const item = current();
    if (!item || state.kind !== "spot") return;
    state.pressedAt ??= performance.now();
    q().index += 1;
    render();
    const sent = sending.then(() =>
      api(`${state.apiBase}/spot-checks/${item.proposal_id}/answer`, {
        method: "POST",
        body: { answer, base_version: item.version },
      }),
    );
    sending = sent.catch(() => null);
    const result = await sent;
    if (result.status === 409) return notice(detail(result.payload), true);
    if (!result.ok) return notice(detail(result.payload), true);
    item.version = result.payload.version;
    item.recorded = true;
    notice(`${answer}: ${item.class}`);
    showReport();
  }

  function share(estimate) {
    if (estimate.share_correct == null) return "not known yet";
    const [low, high] = estimate.interval;
    const percent = (value) => `${(100 * value).toFixed(1)}%`;
    return `${percent(estimate.share_correct)} (95%: ${percent(low)}–${percent(high)})`;
  }

  async function showReport() {
    const answer = await api(`${state.apiBase}/spot-checks/report`);
    if (!answer.ok) return ($("spot-report").textContent = detail(answer.payload));
    const report = answer.payload;
    const more = report.precision.checks_to_target;
    $("spot-report").textContent = [
      `Precision of auto-accepted labels: ${share(report.precision)}`,
      `from ${report.precision.checked} checks` +
        (more == null || !report.precision.checked
          ? ""
          : `; ${more} more to ±${(100 * report.target_half_width).toFixed(0)}%`),
      `Auto-rejected labels that were correct: ${share(report.rejected_share_correct)}`,
      `${report.checks.pending} checks waiting`,
    ].join("\n");
  }

  $("draw-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const perClass = Number($("draw-per-class").value);
    const answer = await api(`${state.apiBase}/spot-checks`, {
      method: "POST",
      body: { per_class: perClass },
    });
    if (!answer.ok) return notice(detail(answer.payload), true);
    notice(`${answer.payload.added} checks drawn, ${answer.payload.pending} waiting`);
    q().exhausted = false;
    await fetchMore();
    showReport();
    render();
    document.activeElement.blur(); // back to the keys
  });

  // -- export -------------------------------------------------------------------------------------

  async function exportDataset() {
    await sending; // with every decision made so far
    notice("Exporting…");
    const answer = await api(`${state.apiBase}/export`, { method: "POST" });
    if (!answer.ok) return notice(detail(answer.payload), true);
    const { accepted = 0 } = answer.payload.labels;
    const human = answer.payload.labels_by_decider?.human?.accepted ?? 0;
    notice(`exported: ${accepted} accepted labels (${human} by reviewers)`);
  }

  // -- keys and buttons -----------------------------------------------------------------------

  function toggleHelp() {
    const help = $("help");
    help.hidden = !help.hidden;
  }

  function go(step) {
    const next = q().index + step;
    if (next < 0 || next > q().items.length) return;
    state.pressedAt ??= performance.now();
    q().index = next;
    render();
  }

  const ACTIONS = {
    accept: () => decide("accept"),
    reject: () => decide("reject"),
    delete: () => decide("delete"),
    edit: startEdit,
    add: startAdd,
    undo,
    correct: () => answerSpotCheck("correct"),
    incorrect: () => answerSpotCheck("incorrect"),
    next: () => go(1),
    prev: () => go(-1),
  };

  for (const button of document.querySelectorAll("#actions button, #spot .answers button")) {
    button.addEventListener("click", () => ACTIONS[button.dataset.action]());
  }
  $("help-button").addEventListener("click", toggleHelp);
  $("masks-button").addEventListener("click", toggleMasks);
  $("mode-button").addEventListener("click", switchQueue);
  $("export-button").addEventListener("click", exportDataset);

  // The keys of each queue (lower case) and their actions; the help overlay lists the same.
  const REVIEW_KEYS = {
    a: "accept", r: "reject", d: "delete", delete: "delete", e: "edit", b: "add", u: "undo",
    j: "next", arrowright: "next", k: "prev", arrowleft: "prev",
  };
  const SPOT_KEYS = {
    c: "correct", y: "correct", x: "incorrect", n: "incorrect",
    j: "next", arrowright: "next", k: "prev", arrowleft: "prev",
  };
  // Actions that bring the next item: their timing starts with the key press itself.
  const MOVES_ON = new Set(["accept", "reject", "delete", "next", "prev", "correct", "incorrect"]);

  document.addEventListener("keydown", (event) => {
    if ($("review").hidden || event.target instanceof HTMLInputElement) return;
    if (event.target instanceof HTMLSelectElement) return;
    // Keys that bring the next item: its timing starts with the key press itself.
    const key = event.key.toLowerCase();
    const bound = (state.kind === "spot" ? SPOT_KEYS : REVIEW_KEYS)[key];
    if (MOVES_ON.has(bound) || /^[1-9]$/.test(key)) state.pressedAt = event.timeStamp;
    if (event.ctrlKey || event.metaKey || event.altKey) {
      if (event.key === "z") {
        event.preventDefault();
        undo();
      }
      return;
    }
    if (!$("help").hidden) {
      if (event.key === "Escape" || event.key === "?") toggleHelp();
      return;
    }
    if (state.mode === "edit") {
      if (event.key === "Enter") finishEdit(true);
      else if (event.key === "Escape") finishEdit(false);
      return;
    }
    if (state.mode === "add" && event.key === "Escape") {
      state.mode = "review";
      return notice("");
    }
    if (key === "?") return toggleHelp();
    if (key === "s") return switchQueue();
    if (key === "w") return exportDataset();
    if (key === "m") return toggleMasks();
    if (state.kind === "spot") {
      if (SPOT_KEYS[key]) {
        event.preventDefault();
        ACTIONS[SPOT_KEYS[key]]();
      }
      return;
    }
    if (/^[1-9]$/.test(key)) {
      const classId = Number(key) - 1;
      if (classId < state.classes.length) {
        state.chosenClass = classId;
        decide("relabel", { class_id: classId });
      }
      return;
    }
    if (REVIEW_KEYS[key]) {
      event.preventDefault();
      ACTIONS[REVIEW_KEYS[key]]();
    }
  });

  start();
})();
