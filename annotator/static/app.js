// conceptgen annotator: plain JavaScript, no build step. Every action goes through
// the JSON API with the CSRF token in X-CSRFToken; user text is set with textContent only.
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]').content;

function toast(message, kind) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = "show " + (kind || "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.className = ""; }, 6000);
}

async function api(path, body) {
  const res = await fetch(path, {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRFToken": csrfToken(), "Accept": "application/json"},
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  let data = {};
  try { data = await res.json(); } catch (e) { data = {error: "unexpected reply from the server (" + res.status + ")"}; }
  if (!res.ok) { throw new Error(data.error || ("request failed with status " + res.status)); }
  return data;
}

async function decide(path, body, successMessage) {
  try {
    await api(path, body);
    sessionStorage.setItem("conceptgen-toast", successMessage);
    location.reload();
  } catch (err) {
    toast(err.message, "error");
  }
}

// --- lazy looping previews: load when visible, pause when scrolled away ------------
let previewObserver = null;

function observePreviews(videos) {
  videos.forEach(v => { v.dataset.observed = "1"; });
  if (!("IntersectionObserver" in window)) {
    videos.forEach(v => { v.src = v.dataset.src; });
    return;
  }
  if (!previewObserver) {
    previewObserver = new IntersectionObserver(entries => {
      for (const entry of entries) {
        const v = entry.target;
        if (entry.isIntersecting) {
          if (!v.getAttribute("src")) { v.src = v.dataset.src; }
          v.play().catch(() => {});
        } else if (v.getAttribute("src")) {
          v.pause();
        }
      }
    }, {rootMargin: "200px"});
  }
  videos.forEach(v => previewObserver.observe(v));
}

function setupPreviews() {
  observePreviews(document.querySelectorAll("video.preview[data-src]"));
}

// --- accept dialog -----------------------------------------------------------------
function openAccept(target) {
  const dialog = document.getElementById("accept-dialog");
  document.getElementById("accept-cluster-label").textContent = "#" + target.dataset.label;
  document.getElementById("accept-name").value = target.dataset.name || "";
  document.getElementById("accept-description").value = target.dataset.description || "";
  document.getElementById("accept-error").textContent = "";
  dialog.dataset.clusterId = target.dataset.clusterId;
  dialog.dataset.version = target.dataset.version;
  dialog.showModal();
  document.getElementById("accept-name").focus();
}

function setupAcceptDialog() {
  const dialog = document.getElementById("accept-dialog");
  if (!dialog) { return; }
  document.getElementById("accept-cancel").addEventListener("click", () => dialog.close());
  document.getElementById("accept-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    const body = {
      version: Number(dialog.dataset.version),
      name: document.getElementById("accept-name").value,
      description: document.getElementById("accept-description").value,
      as_new_version: document.getElementById("accept-as-new-version").checked,
    };
    try {
      await api("/api/clusters/" + dialog.dataset.clusterId + "/accept", body);
      dialog.close();
      sessionStorage.setItem("conceptgen-toast", "Accepted as “" + body.name.trim() + "”.");
      location.reload();
    } catch (err) {
      document.getElementById("accept-error").textContent = err.message;
    }
  });
}

function reject(target) {
  const send = () => decide("/api/clusters/" + target.dataset.clusterId + "/reject",
                            {version: Number(target.dataset.version)}, "Rejected cluster #" + target.dataset.label + ".");
  if (target.dataset.status !== "accepted") { send(); return; }
  // an accepted cluster carries a concept: say which one rejecting retires, and ask first
  const dialog = document.getElementById("reject-dialog");
  document.getElementById("reject-cluster-label").textContent = "#" + target.dataset.label;
  document.getElementById("reject-concept").textContent = target.dataset.concept || "(unnamed)";
  document.getElementById("reject-error").textContent = "";
  dialog.onsubmit = ev => { ev.preventDefault(); dialog.close(); send(); };
  document.getElementById("reject-cancel").onclick = () => dialog.close();
  dialog.showModal();
  document.getElementById("reject-cancel").focus();
}

function undo() {
  decide("/api/undo", {}, "Undid your last decision.");
}

// --- gallery -----------------------------------------------------------------------
function setupGallery() {
  const cards = Array.from(document.querySelectorAll(".card"));
  const mergeBtn = document.getElementById("merge-btn");
  const selected = () => cards.filter(c => c.querySelector(".merge-select").checked);
  const refresh = () => {
    const n = selected().length;
    mergeBtn.disabled = n < 2;
    mergeBtn.textContent = n >= 2 ? "Merge " + n + " selected" : "Merge selected";
  };
  cards.forEach(card => {
    card.querySelector(".merge-select").addEventListener("change", refresh);
    const acc = card.querySelector(".act-accept");
    if (acc) { acc.addEventListener("click", () => openAccept(card)); }
    const rej = card.querySelector(".act-reject");
    if (rej) { rej.addEventListener("click", () => reject(card)); }
  });
  mergeBtn.addEventListener("click", () => {
    const chosen = selected();
    decide("/api/clusters/merge",
           {clusters: chosen.map(c => ({id: Number(c.dataset.clusterId), version: Number(c.dataset.version)}))},
           "Merged " + chosen.length + " clusters into #" + chosen[0].dataset.label + ".");
  });
  refresh();
  const current = () => cards.indexOf(document.activeElement.closest(".card"));
  const focusCard = i => { if (cards.length) { cards[Math.max(0, Math.min(cards.length - 1, i))].focus(); } };
  return key => {
    const i = current();
    const card = cards[i];
    if (key === "j" || key === "n") { focusCard(i + 1); return true; }
    if (key === "k" || key === "p") { focusCard(i < 0 ? 0 : i - 1); return true; }
    if (!card) { return false; }
    if (key === "a" && card.querySelector(".act-accept")) { openAccept(card); return true; }
    if (key === "r" && card.querySelector(".act-reject")) { reject(card); return true; }
    if (key === "x") { const box = card.querySelector(".merge-select"); box.checked = !box.checked; refresh(); return true; }
    if (key === "Enter" && document.activeElement === card) { location.href = card.dataset.href; return true; }
    return false;
  };
}

// --- cluster detail ----------------------------------------------------------------
function setupCluster() {
  const root = document.getElementById("cluster");
  const id = root.dataset.clusterId;
  const version = () => Number(root.dataset.version);
  const acc = root.querySelector(".decisions .act-accept");
  if (acc) { acc.addEventListener("click", () => openAccept(root)); }
  const rej = root.querySelector(".decisions .act-reject");
  if (rej) { rej.addEventListener("click", () => reject(root)); }
  const split = document.getElementById("split-form");
  if (split) {
    split.addEventListener("submit", ev => {
      ev.preventDefault();
      decide("/api/clusters/" + id + "/split", {version: version(), k: Number(split.k.value), seed: 0},
             "Split into " + split.k.value + " clusters.");
    });
  }
  const rename = document.getElementById("rename-form");
  rename.addEventListener("submit", ev => {
    ev.preventDefault();
    decide("/api/clusters/" + id + "/rename", {version: version(), name: rename.name.value}, "Renamed.");
  });
  const player = new TubePlayer(document.getElementById("player"));
  const tbody = document.getElementById("member-rows");
  // one delegated listener: rows loaded while scrolling work like the first ones
  tbody.addEventListener("click", ev => {
    const row = ev.target.closest("tr.member");
    if (!row) { return; }
    const mid = row.dataset.memberId;
    const b = ev.target.closest("button");
    if (ev.target.matches("video.preview")) { player.open(row, "zoom"); return; }
    if (!b) { return; }
    if (b.classList.contains("act-play")) { player.open(row, "context"); }
    else if (b.classList.contains("act-zoom")) { player.open(row, "zoom"); }
    else if (b.classList.contains("act-remove")) { decide("/api/members/" + mid + "/remove", {version: version()}, "Member removed."); }
    else if (b.classList.contains("act-restore")) { decide("/api/members/" + mid + "/restore", {version: version()}, "Member restored."); }
    else if (b.classList.contains("act-rep")) {
      decide("/api/members/" + mid + "/representative", {version: version(), representative: b.dataset.rep === "true"},
             "Representative updated.");
    }
  });
  tbody.addEventListener("submit", ev => {
    if (!ev.target.matches(".move-form")) { return; }
    ev.preventDefault();
    const mid = ev.target.closest("tr.member").dataset.memberId;
    const label = clusterNumber(ev.target.target.value);
    if (label === null) { toast("Type the #number of a cluster in this gallery, e.g. #3.", "error"); return; }
    decide("/api/members/" + mid + "/move", {version: version(), target_label: label}, "Moved to cluster #" + label + ".");
  });
  setupBulk(root, tbody, version);
  setupMoreMembers(root, tbody);
  loadSimilar();
  return key => {
    if (key === "Escape" && player.isOpen()) { player.close(); return true; }
    if ((key === "n" || key === "j") && root.dataset.next) { location.href = root.dataset.next; return true; }
    if ((key === "p" || key === "k") && root.dataset.prev) { location.href = root.dataset.prev; return true; }
    if (key === "a" && acc) { openAccept(root); return true; }
    if (key === "r" && rej) { reject(root); return true; }
    return false;
  };
}

// A cluster as people see it: "#3" or "3" -> 3 (the gallery's number, not the database id); else null.
function clusterNumber(text) {
  const m = /^\s*#?\s*(\d+)\s*$/.exec(text || "");
  return m ? Number(m[1]) : null;
}

function setupBulk(root, tbody, version) {
  const form = document.getElementById("bulk-form");
  const all = document.getElementById("select-all");
  const count = document.getElementById("selected-count");
  const removeBtn = document.getElementById("bulk-remove");
  const moveBtn = document.getElementById("bulk-move");
  const chosen = () => Array.from(tbody.querySelectorAll(".member-select:checked"))
    .map(box => Number(box.closest("tr.member").dataset.memberId));
  const refresh = () => {
    const n = chosen().length;
    count.textContent = n + " selected";
    removeBtn.disabled = moveBtn.disabled = n === 0;
  };
  tbody.addEventListener("change", ev => { if (ev.target.matches(".member-select")) { refresh(); } });
  all.addEventListener("change", () => {
    tbody.querySelectorAll(".member-select").forEach(box => { box.checked = all.checked; });
    refresh();
  });
  removeBtn.addEventListener("click", () => {
    const ids = chosen();
    decide("/api/clusters/" + root.dataset.clusterId + "/members/bulk", {version: version(), action: "remove", members: ids},
           "Removed " + ids.length + " member(s).");
  });
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    const ids = chosen();
    const label = clusterNumber(form.target.value);
    if (label === null) { toast("Type the #number of the cluster to move the selected members to, e.g. #3.", "error"); return; }
    decide("/api/clusters/" + root.dataset.clusterId + "/members/bulk",
           {version: version(), action: "move", members: ids, target_label: label},
           "Moved " + ids.length + " member(s) to cluster #" + label + ".");
  });
  refresh();
  root.refreshSelection = refresh;
}

// More rows as the reviewer scrolls, so a 500-member cluster is one list, not 20 pages.
function setupMoreMembers(root, tbody) {
  const more = document.getElementById("members-more");
  const loaded = document.getElementById("members-loaded");
  const total = Number(root.dataset.nMembers);
  let offset = Number(root.dataset.nextOffset);
  let busy = false;
  const load = async () => {
    if (busy || offset >= total) { return; }
    busy = true;
    try {
      const res = await fetch(root.dataset.membersUrl + "?offset=" + offset, {credentials: "same-origin"});
      if (!res.ok) { throw new Error("status " + res.status); }
      const tpl = document.createElement("template");
      tpl.innerHTML = await res.text();  // the server's own escaped row fragments
      const rows = tpl.content.querySelectorAll("tr.member");
      const all = document.getElementById("select-all");
      rows.forEach(r => { const box = r.querySelector(".member-select"); if (box && all.checked) { box.checked = true; } });
      tbody.append(tpl.content);
      offset += rows.length;
      loaded.textContent = tbody.rows.length;
      observePreviews(tbody.querySelectorAll("video.preview[data-src]:not([data-observed])"));
      if (root.refreshSelection) { root.refreshSelection(); }
      if (!rows.length) { offset = total; }
    } catch (err) {
      more.textContent = "Could not load more members (" + err.message + "); scroll again to retry.";
    } finally {
      busy = false;
    }
    more.hidden = offset >= total;
    if (!more.hidden && more.getBoundingClientRect().top < window.innerHeight + 800) { load(); }
  };
  if (offset >= total) { return; }
  new IntersectionObserver(entries => { if (entries.some(e => e.isIntersecting)) { load(); } },
                           {rootMargin: "800px"}).observe(more);
}

// --- the tube player: the source video, from just before the tube, looping its span,
// with the tube's masks and boxes drawn in the browser (no server-side render) -----
class TubePlayer {
  constructor(section) {
    this.section = section;
    this.video = section.querySelector("#player-video");
    this.canvas = section.querySelector("#player-canvas");
    this.ctx = this.canvas.getContext("2d");
    this.note = section.querySelector("#player-note");
    this.frameLabel = section.querySelector("#player-frame");
    this.maskCache = new Map();
    this.mode = "context";
    this.tube = null;
    this.token = 0;
    section.querySelector("#player-close").addEventListener("click", () => this.close());
    section.querySelector("#player-context").addEventListener("click", () => this.setMode("context"));
    section.querySelector("#player-zoom").addEventListener("click", () => this.setMode("zoom"));
    this.pauseBtn = section.querySelector("#player-pause");
    this.pauseBtn.addEventListener("click", () => {
      if (this.video.paused) { this.video.play().catch(() => {}); } else { this.video.pause(); }
      this.pauseBtn.textContent = this.video.paused ? "Play" : "Pause";
    });
    this.video.addEventListener("ended", () => { if (this.tube) { this.video.currentTime = this.loopStart; this.video.play().catch(() => {}); } });
    this.video.addEventListener("seeked", () => this.draw());
    this.video.addEventListener("error", () => this.fallback());
  }

  isOpen() { return !this.section.hidden; }

  async open(row, mode) {
    const token = ++this.token;
    this.section.hidden = false;
    document.body.classList.add("player-open");  // the list makes room: the player covers no row
    this.section.dataset.state = "loading";
    this.section.querySelector("#player-title").textContent = row.dataset.title;
    this.note.textContent = "";
    this.fallbackSrc = row.dataset.fallback;
    this.setMode(mode, true);
    let tube;
    try { tube = await getJSON("/api/tubes/" + row.dataset.tubeId); }
    catch (err) { this.note.textContent = "Cannot play this tube: " + err.message; return; }
    if (token !== this.token) { return; }
    this.tube = tube;
    this.maskCache.clear();
    this.frameOf = new Map(tube.frame_indices.map((f, k) => [f, k]));
    this.fps = tube.fps || 25;
    const lead = Math.round(this.fps * 0.5);  // half a second before the tube's first frame
    this.loopStart = Math.max(0, tube.start_frame - lead) / this.fps;
    this.loopEnd = tube.end_frame / this.fps;  // end_frame is exclusive
    this.video.src = "/videos/" + tube.video_id + "/source";
    this.video.addEventListener("loadedmetadata", () => {
      if (token !== this.token) { return; }
      this.video.currentTime = this.loopStart;
      this.video.play().catch(() => {});
      this.section.dataset.state = "playing";
      this.pauseBtn.textContent = "Pause";
      this.tick();
    }, {once: true});
  }

  fallback() {
    // a source the browser cannot decode: the server renders it once with the tube outlined
    if (!this.tube || this.video.src.endsWith(this.fallbackSrc)) { return; }
    this.note.textContent = "This browser cannot play the source format; showing the server's rendered copy.";
    this.tube = null;
    this.video.src = this.fallbackSrc;
    this.video.loop = true;
    this.video.play().catch(() => {});
    this.tickFallback();
  }

  tickFallback() {
    if (this.section.hidden || this.tube) { return; }
    const v = this.video;
    if (v.videoWidth) {
      this.canvas.width = v.videoWidth; this.canvas.height = v.videoHeight;
      this.ctx.drawImage(v, 0, 0);
    }
    requestAnimationFrame(() => this.tickFallback());
  }

  setMode(mode, quiet) {
    this.mode = mode;
    this.section.dataset.mode = mode;
    this.section.querySelector("#player-context").setAttribute("aria-pressed", String(mode === "context"));
    this.section.querySelector("#player-zoom").setAttribute("aria-pressed", String(mode === "zoom"));
    if (!quiet) { this.draw(); }
  }

  close() {
    this.token++;
    this.tube = null;
    this.video.pause();
    this.video.removeAttribute("src");
    this.video.load();
    this.section.hidden = true;
    document.body.classList.remove("player-open");
    this.section.dataset.state = "closed";
  }

  tick() {
    if (!this.tube || this.section.hidden) { return; }
    const v = this.video;
    if (!v.seeking && (v.currentTime >= this.loopEnd || v.currentTime < this.loopStart - 0.25)) {
      v.currentTime = this.loopStart;  // loop the tube's span
    }
    this.draw();
    requestAnimationFrame(() => this.tick());
  }

  frameIndex() { return Math.floor(this.video.currentTime * this.fps + 1e-3); }

  // the union of the tube's boxes (mask pixels), with a margin
  cropBox() {
    const t = this.tube;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const [a, b, c, d] of t.boxes) { x0 = Math.min(x0, a); y0 = Math.min(y0, b); x1 = Math.max(x1, c); y1 = Math.max(y1, d); }
    const mx = (x1 - x0) * 0.15 + 2, my = (y1 - y0) * 0.15 + 2;
    return [Math.max(0, x0 - mx), Math.max(0, y0 - my), Math.min(t.mask_width, x1 + mx), Math.min(t.mask_height, y1 + my)];
  }

  maskImage(k) {
    if (this.maskCache.has(k)) { return this.maskCache.get(k); }
    const t = this.tube, w = t.mask_width, h = t.mask_height;
    const inside = new Uint8Array(w * h);
    let pos = 0, on = false;
    for (const run of t.masks[k]) { if (on) { inside.fill(1, pos, pos + run); } pos += run; on = !on; }
    const img = new ImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!inside[i]) { continue; }
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !inside[i - 1] || !inside[i + 1] || !inside[i - w] || !inside[i + w];
        img.data.set(edge ? [255, 221, 0, 255] : [255, 221, 0, 70], 4 * i);
      }
    }
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    c.getContext("2d").putImageData(img, 0, 0);
    this.maskCache.set(k, c);
    return c;
  }

  draw() {
    const t = this.tube, v = this.video;
    if (!t || !v.videoWidth) { return; }
    const sx = v.videoWidth / t.mask_width, sy = v.videoHeight / t.mask_height;
    // the region shown, in source pixels: the whole frame, or the tube's crop at source resolution
    let [rx, ry, rw, rh] = [0, 0, v.videoWidth, v.videoHeight];
    if (this.mode === "zoom") {
      const [x0, y0, x1, y1] = this.cropBox();
      [rx, ry, rw, rh] = [Math.floor(x0 * sx), Math.floor(y0 * sy), Math.ceil((x1 - x0) * sx), Math.ceil((y1 - y0) * sy)];
    }
    if (this.canvas.width !== rw || this.canvas.height !== rh) { this.canvas.width = rw; this.canvas.height = rh; }
    const ctx = this.ctx;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(v, rx, ry, rw, rh, 0, 0, rw, rh);
    const f = this.frameIndex();
    const k = this.frameOf.get(f);
    this.frameLabel.textContent = "frame " + f + " · tube " + t.start_frame + "–" + (t.end_frame - 1) +
      (k === undefined ? " (outside the tube)" : "");
    this.section.dataset.frame = f;
    if (k === undefined) { return; }
    // mask pixels -> canvas: scale to source, then shift by the shown region
    ctx.drawImage(this.maskImage(k), 0, 0, t.mask_width, t.mask_height, -rx, -ry, t.mask_width * sx, t.mask_height * sy);
    const [a, b, c, d] = t.boxes[k];
    ctx.strokeStyle = "rgb(255, 221, 0)";
    ctx.lineWidth = Math.max(2, Math.round(rw / 320));
    ctx.strokeRect(a * sx - rx, b * sy - ry, (c - a) * sx, (d - b) * sy);
  }
}

async function loadSimilar() {
  const box = document.getElementById("similar");
  let data;
  try {
    const res = await fetch(box.dataset.url, {headers: {"Accept": "application/json"}, credentials: "same-origin"});
    data = await res.json();
    if (!res.ok) { throw new Error(data.error || "could not load similar tubes"); }
  } catch (err) {
    box.replaceChildren(el("p", "muted", "Similar tubes unavailable: " + err.message));
    return;
  }
  if (!data.similar.length) { box.replaceChildren(el("p", "muted", "No similar tubes in other clusters.")); return; }
  const list = el("div", "similar-list");
  for (const s of data.similar) {
    const item = el("figure", "similar-item");
    if (s.preview_path) {
      const v = el("video", "preview");
      Object.assign(v, {loop: true, muted: true, autoplay: true, playsInline: true, preload: "none"});
      v.dataset.src = "/media/" + s.preview_path.split("/").map(encodeURIComponent).join("/");
      v.src = v.dataset.src;
      item.append(v);
    }
    const cap = el("figcaption");
    // Relative distance (1.0 = two random tubes of the run), as the member list shows; raw cosine only for old clusterings.
    const near = s.distance === null ? "cosine " + s.score.toFixed(2) : "distance " + s.distance.toFixed(2);
    cap.append(el("span", null, "tube #" + s.tube_id + " · " + near + " · "));
    if (s.cluster_id) {
      // "#n · name", as the gallery and the cluster page title it (the id is the database's).
      const title = "#" + s.cluster_label + (s.cluster_name ? " · " + s.cluster_name : "");
      const a = el("a", null, "cluster " + title + " (" + s.cluster_status + ")");
      a.href = "/clusters/" + s.cluster_id;
      cap.append(a);
    }
    cap.append(el("small", null, " " + s.video_name + " · frames " + s.start_frame + "–" + s.end_frame));
    item.append(cap);
    list.append(item);
  }
  box.replaceChildren(list);
}

// --- background jobs (export): progress, ETA, cancel; found again after a reload ------
async function getJSON(path) {
  const res = await fetch(path, {headers: {"Accept": "application/json"}, credentials: "same-origin"});
  let data = {};
  try { data = await res.json(); } catch (e) { data = {error: "unexpected reply from the server (" + res.status + ")"}; }
  if (!res.ok) { throw new Error(data.error || ("request failed with status " + res.status)); }
  return data;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) { e.className = cls; }
  if (text !== undefined) { e.textContent = text; }
  return e;
}

function formatSeconds(s) {
  if (s === null || s === undefined) { return "estimating…"; }
  if (s < 60) { return Math.round(s) + " s left"; }
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s left";
}

function renderJob(job) {
  const box = el("div", "job state-" + job.state);
  box.dataset.jobId = job.id;
  const names = (job.params.names || []).join(", ");
  const head = el("div", "job-head");
  head.append(el("b", null, job.kind + " #" + job.id), el("span", "badge " + job.state, job.state),
              el("span", "muted", names));
  box.append(head);
  const active = job.state === "queued" || job.state === "running";
  if (active || job.state === "cancelled") {
    const bar = el("progress", "progress");
    bar.max = Math.max(job.total, 1);
    bar.value = job.done;
    bar.setAttribute("aria-label", "progress of job " + job.id);
    const text = job.total ? job.done + " / " + job.total + " clips" : "starting…";
    box.append(bar, el("span", "job-progress", text + (job.state === "running" ? " · " + formatSeconds(job.eta_s) : "")));
  }
  if (active) {
    const cancel = el("button", "btn job-cancel", "Cancel");
    cancel.type = "button";
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try { await api("/api/jobs/" + job.id + "/cancel", {}); } catch (err) { toast(err.message, "error"); }
      refreshJobs();
    });
    box.append(cancel);
  }
  if (job.state === "failed" || job.state === "cancelled") { box.append(el("p", "job-error", job.error || "")); }
  if (job.state === "done" && job.result) {
    const skipped = (job.result.skipped || []).length;
    box.append(el("p", "job-result", "Exported " + job.result.n_clips + " clips to " + job.result.out_dir +
                  (skipped ? " (" + skipped + " skipped)" : "")));
  }
  return box;
}

async function refreshJobs() {
  const box = document.getElementById("jobs");
  if (!box) { return; }
  clearTimeout(refreshJobs.timer);
  let data;
  try { data = await getJSON("/api/jobs?limit=5&kind=" + encodeURIComponent(box.dataset.kind)); }
  catch (err) { box.replaceChildren(el("p", "job-error", "Jobs unavailable: " + err.message)); return; }
  box.replaceChildren(...data.jobs.map(renderJob));
  if (data.jobs.some(j => j.state === "queued" || j.state === "running")) {
    refreshJobs.timer = setTimeout(refreshJobs, 700);
  }
}

// --- concept library ---------------------------------------------------------------
function setupConcepts() {
  refreshJobs();
  const btn = document.getElementById("export-btn");
  if (!btn) { return; }
  btn.addEventListener("click", async () => {
    const names = Array.from(document.querySelectorAll(".concept"))
      .filter(c => c.querySelector(".export-select").checked).map(c => c.dataset.name);
    if (!names.length) { toast("Select at least one concept to export.", "error"); return; }
    try {
      await api("/api/concepts/export", {names: names});
    } catch (err) {
      toast("Export failed: " + err.message, "error");
    }
    refreshJobs();
  });
}

// --- experiments: sortable, filterable verdict table; a running one refreshes ----------
function setupExperiment() {
  const root = document.getElementById("experiment");
  if (root.dataset.running) { setTimeout(() => location.reload(), 3000); }
  const table = document.getElementById("verdicts");
  if (!table) { return; }
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const form = document.getElementById("verdict-filters");
  const count = document.getElementById("verdict-count");
  const filter = () => {
    const want = {};
    for (const key of ["target", "layer", "variant", "comparison"]) { want[key] = form.elements[key].value; }
    const text = form.elements.concept.value.trim().toLowerCase();
    const sigOnly = form.elements.significant.checked;
    let shown = 0;
    for (const r of rows) {
      const ok = Object.entries(want).every(([k, v]) => !v || r.dataset[k] === v) &&
        (!text || r.dataset.concept.toLowerCase().includes(text)) && (!sigOnly || r.dataset.significant === "true");
      r.hidden = !ok;
      shown += ok ? 1 : 0;
    }
    count.textContent = shown;
  };
  form.addEventListener("input", filter);
  form.addEventListener("change", filter);
  form.addEventListener("submit", ev => ev.preventDefault());
  table.querySelectorAll("th[data-key]").forEach(th => {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.key, numeric = th.dataset.kind === "number";
      const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      table.querySelectorAll("th[data-key]").forEach(o => o.setAttribute("aria-sort", "none"));
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      const value = r => {
        const v = r.dataset[key];
        if (!numeric) { return v; }
        return v === "" ? Infinity : Number(v);  // missing numbers sort last
      };
      rows.sort((a, b) => {
        const x = value(a), y = value(b);
        if (numeric) { return x === y ? 0 : (x === Infinity ? 1 : y === Infinity ? -1 : dir * (x - y)); }
        return dir * x.localeCompare(y);
      });
      body.append(...rows);
    });
  });
}

// --- keyboard shortcuts ------------------------------------------------------------
function setupKeys(pageHandler) {
  document.addEventListener("keydown", ev => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    if (t.closest && (t.closest("input, textarea, select, dialog[open]") || t.isContentEditable)) { return; }
    if (ev.key === "u") { ev.preventDefault(); undo(); return; }
    if (pageHandler && pageHandler(ev.key)) { ev.preventDefault(); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const pending = sessionStorage.getItem("conceptgen-toast");
  if (pending) { sessionStorage.removeItem("conceptgen-toast"); toast(pending, "ok"); }
  const undoBtn = document.getElementById("undo-btn");
  if (undoBtn) { undoBtn.addEventListener("click", undo); }
  setupPreviews();
  setupAcceptDialog();
  const page = document.body.dataset.page;
  let handler = null;
  if (page === "gallery") { handler = setupGallery(); }
  if (page === "cluster") { handler = setupCluster(); }
  if (page === "concepts") { setupConcepts(); }
  if (page === "experiment") { setupExperiment(); }
  if (page !== "login") { setupKeys(handler); }
});
