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
function setupPreviews() {
  const videos = document.querySelectorAll("video.preview[data-src]");
  if (!("IntersectionObserver" in window)) {
    videos.forEach(v => { v.src = v.dataset.src; });
    return;
  }
  const observer = new IntersectionObserver(entries => {
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
  videos.forEach(v => observer.observe(v));
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
  decide("/api/clusters/" + target.dataset.clusterId + "/reject", {version: Number(target.dataset.version)},
         "Rejected cluster #" + target.dataset.label + ".");
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
  const acc = root.querySelector(".act-accept");
  if (acc) { acc.addEventListener("click", () => openAccept(root)); }
  const rej = root.querySelector(".act-reject");
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
  root.querySelectorAll("tr.member").forEach(row => {
    const mid = row.dataset.memberId;
    const on = (sel, fn) => { const b = row.querySelector(sel); if (b) { b.addEventListener("click", fn); } };
    on(".act-remove", () => decide("/api/members/" + mid + "/remove", {version: version()}, "Member removed."));
    on(".act-restore", () => decide("/api/members/" + mid + "/restore", {version: version()}, "Member restored."));
    on(".act-rep", ev => decide("/api/members/" + mid + "/representative",
                                {version: version(), representative: ev.currentTarget.dataset.rep === "true"},
                                "Representative updated."));
    on(".act-play", ev => play(ev.currentTarget.dataset.src, ev.currentTarget.dataset.title));
    row.querySelector(".move-form").addEventListener("submit", ev => {
      ev.preventDefault();
      const target = Number(ev.currentTarget.target.value);
      decide("/api/members/" + mid + "/move", {version: version(), target: target}, "Moved to cluster " + target + ".");
    });
  });
  document.getElementById("player-close").addEventListener("click", () => {
    const v = document.getElementById("player-video");
    v.pause();
    document.getElementById("player").hidden = true;
  });
  loadSimilar();
  return key => {
    if ((key === "n" || key === "j") && root.dataset.next) { location.href = root.dataset.next; return true; }
    if ((key === "p" || key === "k") && root.dataset.prev) { location.href = root.dataset.prev; return true; }
    if (key === "a" && acc) { openAccept(root); return true; }
    if (key === "r" && rej) { reject(root); return true; }
    return false;
  };
}

function play(src, title) {
  const player = document.getElementById("player");
  const v = document.getElementById("player-video");
  document.getElementById("player-title").textContent = title;
  player.hidden = false;
  v.src = src;  // the server renders the highlighted video once, then redirects to it
  v.play().catch(() => {});
  player.scrollIntoView({block: "nearest"});
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
    cap.append(el("span", null, "tube #" + s.tube_id + " · sim " + s.score.toFixed(2) + " · "));
    if (s.cluster_id) {
      const a = el("a", null, "cluster " + s.cluster_id + " (" + s.cluster_status + ")");
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
