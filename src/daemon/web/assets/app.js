// Distribox web GUI: a small script over the node's REST API (/api/v1). Pages are
// built from API answers with DOM calls (never innerHTML with data: file names are
// user input). The API key comes from the link `distribox gui` prints
// (`#key=...`, a fragment the browser never sends) and is sent as X-API-Key.
"use strict";

const KEY_STORE = "distribox-api-key";
// sessionStorage, not localStorage: the key lives as long as the tab, so a page
// served later from this address by someone else finds nothing to steal.
let apiKey = sessionStorage.getItem(KEY_STORE) || "";
let renderSeq = 0;

// ---------------------------------------------------------------- helpers
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + u[i];
}

function when(secs) {
  if (secs === null || secs === undefined) return "never";
  return new Date(secs * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function duration(secs) {
  if (secs === null || secs === undefined) return "-";
  if (secs < 60) return secs + " s";
  if (secs < 3600) return Math.floor(secs / 60) + " min " + (secs % 60) + " s";
  return Math.floor(secs / 3600) + " h " + Math.floor((secs % 3600) / 60) + " min";
}

function flash(msg, isError) {
  const f = document.getElementById("flash");
  f.textContent = msg;
  f.className = isError ? "error" : "";
  f.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { f.hidden = true; }, isError ? 8000 : 5000);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts) {
  const o = Object.assign({ headers: {} }, opts || {});
  o.headers["X-API-Key"] = apiKey;
  if (o.body !== undefined) {
    o.headers["Content-Type"] = "application/json";
    o.body = JSON.stringify(o.body);
  }
  const r = await fetch("/api/v1" + path, o);
  if (r.status === 401) {
    apiKey = "";
    sessionStorage.removeItem(KEY_STORE);
    throw new ApiError(401, "the API key was refused");
  }
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, msg);
  }
  return opts && opts.raw ? r : r.json();
}

const q = (path) => encodeURIComponent(path);

// Paths in the address are folder-relative, each component URI-encoded.
function fileHref(path) { return "#/file/" + path.split("/").map(encodeURIComponent).join("/"); }
function dirHref(path) { return "#/files/" + (path ? path.split("/").map(encodeURIComponent).join("/") + "/" : ""); }

function crumbs(path, leafIsFile) {
  const parts = path ? path.split("/") : [];
  const out = [h("a", { href: dirHref("") }, "Folder")];
  parts.forEach((p, i) => {
    const sub = parts.slice(0, i + 1).join("/");
    out.push(" / ");
    const last = i === parts.length - 1;
    out.push(last && leafIsFile ? h("strong", {}, p) : h("a", { href: dirHref(sub) }, p));
  });
  return h("div", { class: "crumbs" }, out);
}

// ---------------------------------------------------------------- views
const views = {
  async overview() {
    const [st, peers, tr] = await Promise.all([api("/status"), api("/peers").catch(() => []), api("/transfers")]);
    const rows = peers.map((p) => h("tr", { class: "peer", "data-node": p.node },
      h("td", { class: "mono" }, p.node),
      h("td", {}, h("span", { class: "state " + (p.online ? "online" : "offline") }, p.online ? "online" : "offline")),
      h("td", { class: "num" }, p.rtt_ms === null ? "-" : p.rtt_ms.toFixed(1) + " ms"),
      h("td", {}, when(p.last_seen)),
      h("td", { class: "sync" }, p.missing_here === 0 && p.missing_there === 0 ? "in sync"
        : `${p.missing_here} to receive, ${p.missing_there} to send`),
      h("td", { class: "mono muted" }, p.addrs[0] || "-")));
    return [
      h("h1", {}, "This node"),
      h("div", { class: "grid" },
        h("section", { class: "card" }, h("dl", { class: "kv" },
          h("dt", {}, "node"), h("dd", { id: "node-id", class: "mono" }, st.node),
          h("dt", {}, "group"), h("dd", { class: "mono" }, st.group.slice(0, 16)),
          h("dt", {}, "folder"), h("dd", {}, st.mountpoint || "(not mounted: always-on node)"),
          h("dt", {}, "data dir"), h("dd", {}, st.data_dir),
          h("dt", {}, "uptime"), h("dd", {}, duration(st.uptime_secs)))),
        h("section", { class: "card" }, h("dl", { class: "kv" },
          h("dt", {}, "versions"), h("dd", {}, st.local_versions + " made here"),
          h("dt", {}, "stored"), h("dd", {}, `${bytes(st.chunk_bytes)} in ${st.chunks} chunks`),
          h("dt", {}, "peers"), h("dd", { id: "peer-summary" }, `${st.peers_online} online of ${st.peers_known} known`),
          h("dt", {}, "incoming"), h("dd", {}, tr.versions_pending === 0 ? "nothing pending"
            : `${tr.versions_pending} version(s), ${bytes(tr.bytes_missing)} to go` +
              (tr.rate_bps > 0 ? ` at ${bytes(tr.rate_bps)}/s` : ""))))),
      h("h2", {}, "Members"),
      peers.length === 0
        ? h("div", { class: "card empty" }, "No members known yet. Invite one with ", h("code", {}, "distribox invite"), ".")
        : h("table", { id: "peers" },
          h("thead", {}, h("tr", {}, ["node", "state", "rtt", "last seen", "sync", "address"].map((c) => h("th", {}, c)))),
          h("tbody", {}, rows)),
      h("h2", {}, "Listening on"),
      h("div", { class: "card mono" }, st.listen.length ? st.listen.map((a) => h("div", {}, a)) : "no network (--no-net)"),
    ];
  },

  async files(path) {
    const [t, gone] = await Promise.all([api("/tree?path=" + q(path)), api("/deleted?path=" + q(path)).catch(() => [])]);
    const rows = t.items.map((it) => {
      const full = path ? path + "/" + it.name : it.name;
      const link = it.kind === "dir" ? h("a", { href: dirHref(full) }, it.name + "/")
        : h("a", { href: fileHref(it.conflict_of ? (path ? path + "/" + it.conflict_of : it.conflict_of) : full) }, it.name);
      return h("tr", { class: "item" + (it.conflict_of ? " conflict" : ""), "data-name": it.name },
        h("td", {}, link, it.conflict_of ? h("span", { class: "tag conflict" }, "conflict") : null,
          it.conflicts ? h("span", { class: "tag conflict" }, it.conflicts + " conflicting") : null),
        h("td", {}, it.kind),
        h("td", { class: "num" }, it.kind === "dir" ? "" : bytes(it.size)),
        h("td", { class: "mono" }, it.version),
        h("td", {}, when(it.mtime)));
    });
    // Deleted here: each still readable (history page) and restorable by its path.
    const goneRows = gone.map((g) => {
      const name = g.path.split("/").pop();
      return h("tr", { class: "deleted", "data-name": name },
        h("td", {}, g.kind === "dir" ? name + "/" : h("a", { href: fileHref(g.path) }, name)),
        h("td", {}, g.kind),
        h("td", { class: "num" }, g.kind === "dir" ? "" : bytes(g.size)),
        h("td", { class: "mono" }, g.last),
        h("td", {}, g.deleted.replace("T", " ")),
        h("td", { class: "mono" }, g.deleted_by),
        h("td", {}, h("button", { class: "restore", onclick: () => act("/restore", { path: g.path },
          `Bring ${name} back with its last content (${g.last})?`) }, "Restore")));
    });
    return [
      h("h1", {}, "Files"),
      crumbs(path, false),
      rows.length === 0 ? h("div", { class: "card empty" }, "This folder is empty.")
        : h("table", { id: "listing" },
          h("thead", {}, h("tr", {}, ["name", "kind", "size", "version", "modified"].map((c) => h("th", {}, c)))),
          h("tbody", {}, rows)),
      goneRows.length === 0 ? null : [
        h("h2", {}, "Deleted here"),
        h("table", { id: "deleted" },
          h("thead", {}, h("tr", {}, ["name", "kind", "size", "last", "deleted", "by", ""].map((c) => h("th", {}, c)))),
          h("tbody", {}, goneRows)),
      ],
    ];
  },

  async file(path) {
    const versions = await api("/versions?path=" + q(path));
    const base = path.split("/").pop();
    const viewer = h("pre", { id: "viewer", hidden: true });
    const lanes = layout(versions);
    const rows = versions.map((v) => {
      const named = path + "@" + v.name;
      const tags = [];
      if (v.shown) tags.push(h("span", { class: "tag shown" }, "shown"));
      if (v.conflict) tags.push(h("span", { class: "tag conflict" }, "conflict"));
      if (v.head && !v.shown && !v.conflict) tags.push(h("span", { class: "tag head" }, "head"));
      if (v.purged) tags.push(h("span", { class: "tag purged" }, "purged"));
      const readable = (v.kind === "file" || v.kind === "symlink") && !v.purged;
      const actions = [];
      if (readable) {
        actions.push(h("button", { class: "open", onclick: () => openVersion(named) }, "Open"));
        actions.push(h("button", { class: "download", onclick: () => download(named) }, "Download"));
      }
      if (v.conflict) {
        actions.push(h("button", { class: "keep primary", onclick: () => act("/resolve", { path, keep: v.name },
          `Keep ${base}@${v.name} on every member and retire the other versions?`) }, "Keep this version"));
      } else if (v.shown && versions.some((o) => o.conflict)) {
        actions.push(h("button", { class: "keep primary", onclick: () => act("/resolve", { path, keep: v.name },
          `Keep the shown version of ${base} and retire the conflicting ones?`) }, "Keep this version"));
      } else if (readable && !v.shown && v.kind === "file") {
        actions.push(h("button", { class: "restore", onclick: () => act("/restore", { path: named },
          `Make the content of ${base}@${v.name} the newest version of ${base}?`) }, "Restore"));
      }
      return h("tr", { class: "version", "data-name": v.name },
        h("td", { class: "mono" }, v.name), h("td", {}, tags),
        h("td", {}, v.time.replace("T", " ")), h("td", { class: "mono" }, v.author),
        h("td", { class: "num" }, v.kind === "file" ? bytes(v.size) : v.kind), h("td", {}, actions));
    });
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
    return [
      h("h1", {}, base),
      crumbs(path, true),
      h("p", { class: "muted" }, `${versions.length} version(s). Older versions stay readable as `,
        h("code", {}, base + "@vN"), " in the folder. ", h("a", { href: dirHref(dir) }, "Back to the folder")),
      h("div", { class: "history card" }, graph(versions, lanes),
        h("table", { id: "versions" },
          h("thead", {}, h("tr", {}, ["version", "", "time", "author", "size", ""].map((c) => h("th", {}, c)))),
          h("tbody", {}, rows))),
      viewer,
    ];
  },

  async conflicts() {
    const cs = await api("/conflicts");
    return [
      h("h1", {}, "Conflicts"),
      h("p", { class: "muted" }, "Files that members changed at the same time. Every version is kept; pick the one to keep."),
      cs.length === 0 ? h("div", { class: "card empty", id: "no-conflicts" }, "No conflicts.")
        : h("table", { id: "conflicts" },
          h("thead", {}, h("tr", {}, ["file", "shown", "other versions"].map((c) => h("th", {}, c)))),
          h("tbody", {}, cs.map((c) => h("tr", { class: "conflict-row", "data-path": c.path },
            h("td", {}, h("a", { href: fileHref(c.path) }, c.path)),
            h("td", { class: "mono" }, c.shown),
            h("td", { class: "mono" }, c.versions.join(", ")))))),
    ];
  },

  async log() {
    const f = logFilter();
    const params = new URLSearchParams({ limit: "200" });
    for (const [k, v] of Object.entries(f)) if (v) params.set(k, v);
    const lines = await api("/log?" + params.toString());
    const input = (id, name, placeholder) => h("input", { id, name, placeholder, value: f[name] || "" });
    const form = h("form", { class: "filters", id: "log-filter", onsubmit: (e) => {
      e.preventDefault();
      const p = new URLSearchParams();
      for (const el of e.target.querySelectorAll("input")) if (el.value) p.set(el.name, el.value);
      location.hash = "#/log" + (p.toString() ? "?" + p.toString() : "");
    } }, input("f-under", "under", "folder (e.g. docs)"), input("f-author", "author", "author id prefix"),
    input("f-since", "since", "since (2h, 3days, 2026-12-01)"), h("button", { type: "submit" }, "Filter"));
    return [
      h("h1", {}, "Recent changes"),
      form,
      lines.length === 0 ? h("div", { class: "card empty" }, "No changes match.")
        : h("table", { id: "log" },
          h("thead", {}, h("tr", {}, ["time", "author", "version", "size", "kind", "path"].map((c) => h("th", {}, c)))),
          h("tbody", {}, lines.map((l) => h("tr", { class: "log-line" },
            h("td", {}, l.time.replace("T", " ")), h("td", { class: "mono" }, l.author),
            h("td", { class: "mono" }, "v" + l.n), h("td", { class: "num" }, bytes(l.size)), h("td", {}, l.kind),
            h("td", {}, logPath(l)))))),
    ];
  },

  async transfers() {
    const t = await api("/transfers");
    return [
      h("h1", {}, "Transfers"),
      h("p", { id: "transfer-summary" }, t.versions_pending === 0 ? "Nothing is being received."
        : `${t.versions_pending} version(s) arriving: ${bytes(t.bytes_missing)} to go, ` +
          (t.rate_bps > 0 ? `${bytes(t.rate_bps)}/s` : "waiting for a peer that has the data") +
          (t.eta_secs !== null ? `, about ${duration(t.eta_secs)} left` : "") + `. ${bytes(t.bytes_received)} received since the node started.`),
      t.items.length === 0 ? null : h("table", { id: "transfers" },
        h("thead", {}, h("tr", {}, ["file", "from", "size", "progress"].map((c) => h("th", {}, c)))),
        h("tbody", {}, t.items.map((i) => h("tr", { class: "transfer" },
          h("td", {}, i.path), h("td", { class: "mono" }, i.author), h("td", { class: "num" }, bytes(i.size)),
          h("td", {}, h("progress", { max: Math.max(i.size, 1), value: i.size - i.bytes_missing }), " ",
            i.size ? Math.floor(100 * (i.size - i.bytes_missing) / i.size) + "%" : ""))))),
    ];
  },
};

// The version graph: one lane per line of history, newest at the top (as
// `distribox versions` draws it).
function layout(versions) {
  const lanes = [];
  const col = new Map();
  for (const v of versions) {
    let c = lanes.indexOf(v.version);
    if (c < 0) { c = lanes.indexOf(null); if (c < 0) { c = lanes.length; lanes.push(null); } }
    col.set(v.version, c);
    lanes[c] = v.parents[0] || null;
    for (const p of v.parents.slice(1)) {
      if (lanes.includes(p)) continue;
      const free = lanes.indexOf(null);
      if (free < 0) lanes.push(p); else lanes[free] = p;
    }
    for (let i = 0; i < lanes.length; i++) if (i !== c && lanes[i] === lanes[c] && lanes[c] !== null && i > c) lanes[i] = null;
  }
  return col;
}

// Drawn once the table is on the page, at the rows' measured heights.
function graph(versions, col) {
  const ns = "http://www.w3.org/2000/svg";
  const gap = 18;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", (Math.max(0, ...col.values()) + 1) * gap + 12);
  svg.setAttribute("class", "graph");
  svg.draw = (table) => {
    const top = svg.getBoundingClientRect().top;
    const rows = [...table.querySelectorAll("tr.version")];
    const last = rows[rows.length - 1];
    svg.setAttribute("height", last ? last.getBoundingClientRect().bottom - top : 0);
    const index = new Map(versions.map((v, i) => [v.version, i]));
    const at = (i) => {
      const r = rows[i].getBoundingClientRect();
      return [8 + col.get(versions[i].version) * gap, r.top - top + r.height / 2];
    };
    versions.forEach((v, i) => {
      for (const p of v.parents) {
        if (!index.has(p)) continue;
        const [x1, y1] = at(i), [x2, y2] = at(index.get(p));
        const line = document.createElementNS(ns, "path");
        line.setAttribute("d", `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}`);
        line.setAttribute("stroke", "#9aa5b1");
        line.setAttribute("fill", "none");
        line.setAttribute("stroke-width", "2");
        svg.append(line);
      }
    });
    versions.forEach((v, i) => {
      const [x, y] = at(i);
      const dot = document.createElementNS(ns, "circle");
      dot.setAttribute("cx", x); dot.setAttribute("cy", y); dot.setAttribute("r", 6);
      dot.setAttribute("fill", v.shown ? "#1f8a4c" : v.conflict ? "#b86e00" : v.purged ? "#c5ccd3" : "#2c6bd6");
      svg.append(dot);
    });
  };
  return svg;
}

function logPath(l) {
  // A deleted file's history page still works (its versions stay readable).
  if (l.deleted) return l.kind === "dir" || l.path === "?" ? l.path + " (deleted)" : h("a", { href: fileHref(l.path) }, l.path + " (deleted)");
  if (l.kind === "deleted") return l.path;
  if (l.kind === "dir") return h("a", { href: dirHref(l.path) }, l.path ? l.path + "/" : "(the folder)");
  return h("a", { href: fileHref(l.path) }, l.path);
}

function logFilter() {
  const i = location.hash.indexOf("?");
  const p = new URLSearchParams(i < 0 ? "" : location.hash.slice(i + 1));
  return { under: p.get("under"), author: p.get("author"), since: p.get("since") };
}

// ---------------------------------------------------------------- actions
const VIEW_LIMIT = 1 << 20;

// Shows the first MiB of a version as text (reads no more than that).
async function openVersion(path) {
  try {
    const r = await api("/content?path=" + q(path), { raw: true });
    const reader = r.body.getReader();
    const parts = [];
    let got = 0;
    while (got < VIEW_LIMIT) {
      const { value, done } = await reader.read();
      if (done) break;
      parts.push(value);
      got += value.length;
    }
    reader.cancel().catch(() => {});
    const total = Number(r.headers.get("Content-Length") || got);
    const buf = new Uint8Array(Math.min(got, VIEW_LIMIT));
    let off = 0;
    for (const p of parts) { const n = Math.min(p.length, buf.length - off); buf.set(p.subarray(0, n), off); off += n; }
    let text;
    try { text = new TextDecoder("utf-8", { fatal: true }).decode(buf, { stream: total > buf.length }); }
    catch (_) { text = `(${bytes(total)} of binary data: use Download)`; }
    if (total > buf.length) text += `\n… (${bytes(total - buf.length)} more: use Download)`;
    // Look the viewer up now: a live re-render may have replaced the page meanwhile.
    const viewer = document.getElementById("viewer");
    if (!viewer) return;
    viewer.textContent = text;
    viewer.dataset.path = path;
    viewer.hidden = false;
    viewer.scrollIntoView({ block: "nearest" });
  } catch (e) { flash(e.message, true); }
}

// Downloads go to disk as the browser streams them: the API hands out a
// one-time link (a plain link cannot carry the key header).
async function download(path) {
  try {
    const r = await api("/download", { method: "POST", body: { path } });
    const a = h("a", { href: r.url, download: "" });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) { flash(e.message, true); }
}

async function act(endpoint, body, question) {
  if (!window.confirm(question)) return;
  try {
    const r = await api(endpoint, { method: "POST", body });
    flash(r.message);
    render();
  } catch (e) { flash(e.message, true); }
}

// ---------------------------------------------------------------- routing
function route() {
  // Each segment is decoded exactly once: a name with "%2F" in it stays that name.
  const hash = location.hash.replace(/^#/, "") || "/";
  const path = hash.split("?")[0];
  const rest = (prefix) => path.slice(prefix.length).split("/").filter(Boolean)
    .map((s) => { try { return decodeURIComponent(s); } catch (_) { return s; } }).join("/");
  if (path.startsWith("/files")) return ["files", rest("/files")];
  if (path.startsWith("/file/")) return ["file", rest("/file/")];
  if (path === "/conflicts") return ["conflicts"];
  if (path === "/log") return ["log"];
  if (path === "/transfers") return ["transfers"];
  return ["overview"];
}

function askForKey() {
  const view = document.getElementById("view");
  view.replaceChildren(document.getElementById("key-template").content.cloneNode(true));
  document.getElementById("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = document.getElementById("key-input").value.trim();
    sessionStorage.setItem(KEY_STORE, apiKey);
    start();
  });
}

async function render() {
  if (!apiKey) return askForKey();
  const [name, arg] = route();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
  const seq = ++renderSeq;
  const view = document.getElementById("view");
  try {
    const nodes = await views[name](arg || "");
    if (seq !== renderSeq) return; // a newer render started meanwhile
    view.replaceChildren(...nodes.flat().filter(Boolean));
    view.dataset.view = name;
    const g = view.querySelector("svg.graph");
    if (g && g.draw) g.draw(view.querySelector("#versions"));
  } catch (e) {
    if (seq !== renderSeq) return;
    if (e.status === 401) return askForKey();
    view.replaceChildren(h("div", { class: "card", id: "error" }, h("strong", {}, "Cannot show this page: "), e.message));
  }
  refreshBadges();
}

async function refreshBadges() {
  try {
    const [cs, tr] = await Promise.all([api("/conflicts"), api("/transfers")]);
    const c = document.getElementById("conflict-count");
    c.textContent = cs.length; c.hidden = cs.length === 0;
    const t = document.getElementById("transfer-count");
    t.textContent = tr.versions_pending; t.hidden = tr.versions_pending === 0;
  } catch (_) { /* shown by the page itself */ }
}

// Live updates: the event stream is read with fetch (EventSource cannot send the
// key header); each change re-renders the page, at most every 300 ms.
let pending = null;
function soon() {
  if (pending) return;
  pending = setTimeout(() => {
    pending = null;
    // Keep what the user is reading or typing: refresh only the badges then.
    const busy = document.querySelector("pre#viewer:not([hidden])") ||
      (document.activeElement && document.activeElement.tagName === "INPUT");
    if (busy) refreshBadges(); else render();
  }, 300);
}

let listening = false;
async function listen() {
  if (listening) return;
  listening = true;
  const live = document.getElementById("live");
  for (;;) {
    if (!apiKey) { listening = false; return; }
    try {
      const r = await fetch("/api/v1/events", { headers: { "X-API-Key": apiKey } });
      if (!r.ok) throw new Error("status " + r.status);
      live.textContent = "live"; live.className = "live on";
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          if (/^event: (change|resync)$/m.test(block)) soon();
        }
      }
    } catch (_) { /* node restarting or gone: retry */ }
    live.textContent = "offline"; live.className = "live off";
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function start() {
  render();
  listen();
}

window.addEventListener("hashchange", () => {
  const m = location.hash.match(/^#key=([0-9a-fA-F]+)/);
  if (m) { apiKey = m[1]; sessionStorage.setItem(KEY_STORE, apiKey); location.replace("#/"); start(); return; }
  render();
});

(function init() {
  const m = location.hash.match(/^#key=([0-9a-fA-F]+)/);
  if (m) {
    apiKey = m[1];
    sessionStorage.setItem(KEY_STORE, apiKey);
    history.replaceState(null, "", location.pathname + "#/");
  }
  start();
  // Peers' online state and transfer progress change without commits.
  setInterval(() => {
    const v = document.getElementById("view").dataset.view;
    if (v === "overview" || v === "transfers") render();
  }, 3000);
})();
