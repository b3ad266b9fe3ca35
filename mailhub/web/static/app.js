// mailhub's page: hand-written, no build step. Talks only to /api/v1 (see /api/v1/openapi.json).
"use strict";

const API = "/api/v1";
const state = { mailbox: "", q: "", messages: [], total: 0, selected: null, open: null, tab: "html", remote: false, limit: 100 };
const $ = (sel) => document.querySelector(sel);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

async function api(path, options = {}) {
  const init = { ...options, headers: { Accept: "application/json", ...(options.headers || {}) } };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(API + path, init);
  const body = response.headers.get("Content-Type")?.startsWith("application/json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function who(a) { return a ? (a.name ? `${a.name} <${a.address}>` : a.address) : ""; }
function short(a) { return a ? (a.name || a.address) : "(no sender)"; }
function size(n) { return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} kB` : `${(n / 1048576).toFixed(1)} MB`; }
function when(iso) {
  if (!iso) return "";
  const d = new Date(iso), now = new Date();
  return d.toDateString() === now.toDateString() ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString();
}
function status(text, error = false) { const s = $("#list-status"); s.textContent = text; s.classList.toggle("error", error); }

// --- mailboxes and the list -------------------------------------------------------------

async function loadMailboxes() {
  const { mailboxes } = await api("/mailboxes");
  const nav = $("#mailboxes");
  const total = mailboxes.reduce((n, b) => n + b.unread, 0);
  const link = (address, label, unread) => el("a", { href: "#", class: address === state.mailbox ? "current" : "", dataset: { mailbox: address },
      onclick: (e) => { e.preventDefault(); state.mailbox = address; refresh(); } },
    el("span", {}, label), el("span", { class: "count" }, unread ? String(unread) : ""));
  const names = await sandboxNames(mailboxes);
  const plain = mailboxes.filter((b) => !names.has(b.address));
  const boxes = mailboxes.filter((b) => names.has(b.address));
  nav.replaceChildren(link("", "All mail", total), ...plain.map((b) => link(b.address, b.address, b.unread)),
    ...(boxes.length ? [el("h2", { class: "nav-heading" }, "Sandboxes")] : []),
    ...boxes.map((b) => sandboxLink(link(b.address, names.get(b.address), b.unread), b.address)));
  retentionNote(nav);
}

// --- sandboxes (isolated inboxes for tests): their own group, by name ----------------------

// Names are asked for only when a sandbox mailbox the page has not seen appears (a list of
// 1,000 sandboxes on every live update would cost more than the update).
const SANDBOX_DOMAIN = "@sandbox.invalid";
const sandboxes = { names: new Map(), seen: new Set(), off: false };
async function sandboxNames(mailboxes) {
  const mine = mailboxes.map((b) => b.address).filter((a) => a.endsWith(SANDBOX_DOMAIN));
  if (mine.some((a) => !sandboxes.seen.has(a)) && !sandboxes.off) {
    try {
      const { sandboxes: found } = await api("/sandboxes");
      sandboxes.names = new Map(found.map((b) => [b.mailbox, b.name || b.id]));
    } catch (e) { sandboxes.off = true; }  // off in this server, or not an admin
    for (const a of mine) sandboxes.seen.add(a);  // asked about: not again
  }
  return sandboxes.names;
}

function sandboxLink(a, address) {
  a.classList.add("sandbox");
  a.title = `Sandbox ${address}`;
  return a;
}

// --- retention (the dev stack prunes the oldest mail: [dev] max_messages, max_age) -----------

function age(seconds) {
  return seconds % 86400 === 0 ? `${seconds / 86400} d` : seconds % 3600 === 0 ? `${seconds / 3600} h` : `${seconds} s`;
}

async function retentionNote(nav) {
  let info;
  try { info = await api("/info"); } catch (e) { return; }
  const r = info.retention;
  if (!r) return;
  const limits = [r.max_messages ? `at most ${r.max_messages} messages` : "", r.max_age ? `none older than ${age(r.max_age)}` : ""].filter(Boolean).join(", ");
  const text = `Keeps ${limits}; ${r.pruned} oldest pruned`;
  nav.append(el("p", { id: "retention", class: "retention", title: "The oldest go first ([dev] max_messages, max_age)" }, text));
}

function query() {
  const p = new URLSearchParams({ limit: String(state.limit) });
  if (state.q) p.set("q", state.q);
  if (state.mailbox) p.set("mailbox", state.mailbox);
  return p;
}

let refreshing = null;
async function refresh() {
  if (refreshing) { refreshing.again = true; return; }
  refreshing = { again: false };
  try {
    const page = await api("/messages?" + query());
    state.messages = page.messages; state.total = page.total;
    renderList();
    status(page.total ? `${page.total} message${page.total === 1 ? "" : "s"}, ${page.unread} unread` : "No messages");
    await loadMailboxes();
  } catch (e) { status(e.message, true); }
  const again = refreshing.again; refreshing = null;
  if (again) refresh();
}

// The list is kept, not redrawn: a row stays the same element while its message is listed
// (focus, selection and a pointer on it survive a live update); only rows whose message changed
// are updated, and rows move only when the order changed.
function rowContent(m) {
  return [el("span", { class: "from" }, short(m.from)), el("span", { class: "time", title: m.received }, when(m.received)),
    el("span", { class: "subj" }, ...tagChips(m, false), (m.has_attachments ? "📎 " : "") + (m.subject || "(no subject)")), el("span", { class: "size" }, size(m.size)),
    el("span", { class: "to" }, "To: " + (m.to.map(short).join(", ") || m.mailbox)), authBadge(m.auth),
    el("span", { class: "snippet" }, m.snippet)];
}

// The list's badge: our checks' DMARC result (SPF and DKIM in its title); nothing when the
// message's top-most Authentication-Results field is not ours.
function authBadge(a) {
  if (!a || !a.dmarc) return el("span");
  const known = ["pass", "fail", "none", "temperror", "permerror"].includes(a.dmarc) ? a.dmarc : "other";
  return el("span", { class: `result auth-badge r-${known}`, title: `SPF ${a.spf || "–"} · DKIM ${a.dkim || "–"} · DMARC ${a.dmarc}` },
    `DMARC ${a.dmarc}`);
}

function updateRow(li, m) {
  const selected = m.id === state.selected;
  const cls = "msg" + (m.seen ? "" : " unread") + (selected ? " selected" : "") + (m.has_attachments ? " has-attachment" : "");
  if (li.className !== cls) li.className = cls;
  if (li.getAttribute("aria-selected") !== String(selected)) li.setAttribute("aria-selected", String(selected));
  const shown = JSON.stringify([m.from, m.received, when(m.received), m.has_attachments, m.subject, m.size, m.to, m.mailbox, m.snippet, m.auth, m.tag_sources]);
  if (li.dataset.shown !== shown) { li.dataset.shown = shown; li.replaceChildren(...rowContent(m)); }
}

function renderList() {
  const ul = $("#messages");
  const rows = new Map([...ul.children].map((li) => [li.dataset.id, li]));
  const wanted = new Set(state.messages.map((m) => m.id));
  for (const [id, li] of rows) if (!wanted.has(id)) li.remove();
  state.messages.forEach((m, i) => {
    let li = rows.get(m.id);
    if (!li) li = el("li", { role: "option", tabindex: "0", dataset: { id: m.id }, onclick: () => openMessage(m.id) });
    updateRow(li, m);
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
  });
  $("#more").hidden = state.messages.length >= state.total;
}

// --- one message -------------------------------------------------------------------------

async function openMessage(id) {
  state.selected = id; state.remote = false;
  let m;
  try { m = await api(`/messages/${id}`); } catch (e) { status(e.message, true); return; }
  state.open = m;
  document.body.classList.add("reading");
  $("#detail").hidden = false;
  $("#subject").textContent = m.subject || "(no subject)";
  const meta = [["From", who(m.from)], ["To", m.to.map(who).join(", ")], ["Cc", m.cc.map(who).join(", ")],
    ["Date", m.date ? new Date(m.date).toLocaleString() : ""], ["Received", new Date(m.received).toLocaleString()],
    ["Mailbox", `${m.mailbox} / ${m.folder}`], ["Size", size(m.size)],
    ["Delivery", [m.envelope.protocol, m.envelope.tls ? "TLS" : "no TLS", m.envelope.authenticated ? "AUTH" : "no AUTH"].filter(Boolean).join(" · ")],
    ["Authentication", authLine(m.authentication)]];
  $("#meta").replaceChildren(...meta.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("#attachments").replaceChildren(...m.attachments.map((a) => el("li", {},
    el("a", { class: "attachment", href: a.url, download: a.filename || `part-${a.part}` }, `📎 ${a.filename || a.content_type} (${size(a.size)})`))));
  $("#text").textContent = m.text || "(no plain-text part)";
  $("#headers tbody").replaceChildren(...m.headers.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v))));
  renderAuth(m.authentication);
  renderTags(m);
  $("#envelope tbody").replaceChildren(...Object.entries(m.envelope).map(([k, v]) => el("tr", {}, el("td", {}, k.replace("_", " ")), el("td", {}, String(v ?? "")))));
  $("#raw").textContent = "";
  $("#checks").replaceChildren(); lab.loaded = null;
  $("#spam").dataset.id = ""; $("#spam").replaceChildren();
  $("#download-raw").href = `${API}/messages/${id}/raw?download=1`;
  $("#toggle-seen").textContent = "Mark unread";
  showTab(m.html_url ? "html" : "text");
  if (!m.seen) { try { await api(`/messages/${id}`, { method: "PATCH", json: { seen: true } }); } catch (e) { /* shown on next refresh */ } }
  state.open.seen = true;
  renderList();
}

// --- tags (mailhub.web.tags): chips that filter, manual ones removable ----------------------

function filterTag(tag) {
  state.q = `tag:${tag}`; $("#q").value = state.q;
  closeMessage(); refresh();
}

function tagChips(m, removable) {
  return (m.tags || []).map((t) => {
    const sources = (m.tag_sources || {})[t] || [];
    const chip = el("span", { class: "tag", dataset: { tag: t }, title: `tag from ${sources.join(" and ")}; click to list its messages` },
      el("button", { type: "button", class: "tag-name", onclick: (e) => { e.stopPropagation(); filterTag(t); } }, t));
    if (removable && sources.includes("manual")) {
      chip.append(el("button", { type: "button", class: "tag-remove", title: `Remove tag ${t}`, "aria-label": `Remove tag ${t}`,
        onclick: (e) => { e.stopPropagation(); changeTags({ remove: [t] }).catch((err) => status(err.message, true)); } }, "×"));
    }
    return chip;
  });
}

function renderTags(m) { $("#tags").replaceChildren(...tagChips(m, true)); }

async function changeTags(change) {
  const m = state.open; if (!m) return;
  const summary = await api(`/messages/${m.id}`, { method: "PATCH", json: { tags: change } });
  m.tags = summary.tags; m.tag_sources = summary.tag_sources;
  renderTags(m);
  refresh();
}

// --- authentication results (mailhub.checks.explain: the API's "authentication") ---------

function resultChip(result) {
  const known = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"];
  return el("span", { class: "result r-" + (known.includes(result) ? result : "other") }, result || "?");
}

function authLine(a) {
  if (!a) return "";
  if (!a.checked) return "not checked";
  const parts = [];
  if (a.spf) parts.push(`SPF ${a.spf.result}`);
  if (a.dkim.length) parts.push(`DKIM ${a.dkim.map((d) => d.result).join("/")}`);
  if (a.dmarc) parts.push(`DMARC ${a.dmarc.result}`);
  if (a.arc) parts.push(`ARC ${a.arc.result}`);
  return parts.join(" · ") || "no results";
}

function authBlock(name, r, facts) {
  return el("div", { class: "auth-block", dataset: { method: name.toLowerCase() } },
    el("div", { class: "auth-head" }, el("strong", {}, name), resultChip(r.result),
      el("span", { class: "auth-facts" }, facts.filter(Boolean).join(" · "))),
    el("p", { class: "why" }, r.why || ""));
}

function missing(name, text) {
  return el("div", { class: "auth-block", dataset: { method: name.toLowerCase() } },
    el("div", { class: "auth-head" }, el("strong", {}, name), el("span", { class: "result r-other" }, "not checked")),
    el("p", { class: "why" }, text));
}

const ALIGNMENT = { strict: "aligned (same domain)", relaxed: "aligned in relaxed mode (same organizational domain)", no: "not aligned" };

function renderAuth(a) {
  const box = $("#auth");
  if (!a) { box.replaceChildren(); return; }
  const verdict = !a.checked || a.bulk_sender === null ? "unknown" : a.bulk_sender ? "good" : "bad";
  const out = [el("p", { id: "auth-summary", class: `auth-summary ${verdict}` }, a.summary)];
  if (a.checked) {
    out.push(el("p", { class: "muted" }, `Authentication-Results written by ${a.authserv_id}`));
    const s = a.spf;
    // RFC 7208 2.4: for the null reverse-path (a bounce) the HELO name is the identity checked
    out.push(s ? authBlock("SPF", s, [s.domain && `domain ${s.domain}`,
      s.identity === "helo" ? `HELO ${s.helo} (MAIL FROM was empty)` : s.mailfrom && `MAIL FROM ${s.mailfrom}`])
      : missing("SPF", "No SPF result in the field."));
    if (!a.dkim.length) out.push(missing("DKIM", "No DKIM result in the field."));
    for (const d of a.dkim) {
      out.push(authBlock("DKIM", d, [d.domain && `d=${d.domain}`, d.selector && `s=${d.selector}`, d.algorithm && `a=${d.algorithm}`, d.signature && `b=${d.signature}…`]));
    }
    const r = a.dmarc;
    // policy: the one applied (after sp= and pct=); nothing to apply when DMARC passes
    out.push(r ? authBlock("DMARC", r, [r.from_domain && `From: ${r.from_domain}`, r.result !== "pass" && r.policy && `policy ${r.policy}`,
      r.spf_alignment && `SPF ${ALIGNMENT[r.spf_alignment] || r.spf_alignment}`,
      r.dkim_alignment && `DKIM ${ALIGNMENT[r.dkim_alignment] || r.dkim_alignment}`]) : missing("DMARC", "No DMARC result in the field."));
    if (a.arc) out.push(authBlock("ARC", a.arc, [a.arc.instances !== null ? `chain of ${a.arc.instances}` : ""]));
    for (const o of a.other_methods) out.push(authBlock(o.method, o, Object.entries(o.properties).map(([k, v]) => `${k}=${v}`)));
  }
  if (a.checked && a.other_servers.length) {
    out.push(el("p", { class: "muted" }, `Also in the message, not believed (anyone can write one): fields by ${a.other_servers.join(", ")}.`));
  }
  box.replaceChildren(...out);
}

// --- spam score (mailhub.web.spam: rspamd, asked only when this tab is opened) -----------

function spamAction(r) {
  return el("span", { class: "result " + (r.is_spam ? "r-fail" : "r-pass") }, r.action);
}

function renderSpam(r) {
  const box = $("#spam");
  if (!r.configured || !r.scanned) { box.replaceChildren(el("p", { id: "spam-summary", class: "spam-summary muted" }, r.why)); return; }
  const sign = (n) => (n > 0 ? "+" : "") + n.toFixed(2);
  const rows = r.symbols.map((s) => el("tr", { class: s.score > 0 ? "spam-plus" : s.score < 0 ? "spam-minus" : "" },
    el("td", { class: "symbol" }, s.name), el("td", { class: "num" }, sign(s.score)),
    el("td", {}, s.description + (s.options.length ? ` (${s.options.join(", ")})` : ""))));
  box.replaceChildren(
    el("p", { id: "spam-summary", class: "spam-summary " + (r.is_spam ? "bad" : "good") },
      el("strong", {}, `Score ${r.score.toFixed(2)} / ${r.required_score.toFixed(2)}`), " ", spamAction(r),
      r.skipped ? " (rspamd stopped early: a pre-filter decided)" : ""),
    ...Object.entries(r.messages || {}).map(([k, v]) => el("p", { class: "spam-message" }, `rspamd says (${k}): ${v}`)),
    el("p", { class: "muted" }, `rspamd at ${r.rspamd}, ${r.cached ? "asked" : "just asked"} at ${new Date(r.scanned_at).toLocaleString()} `,
      el("button", { id: "spam-rescan", type: "button", onclick: () => loadSpam(true) }, "Ask again")),
    el("table", { id: "spam-symbols", class: "spam-symbols" },
      el("thead", {}, el("tr", {}, el("th", {}, "Symbol"), el("th", {}, "Score"), el("th", {}, "Description"))),
      el("tbody", {}, ...rows)));
}

async function loadSpam(refresh = false) {
  const m = state.open; if (!m) return;
  const box = $("#spam");
  box.replaceChildren(el("p", { class: "muted" }, "Asking rspamd…"));
  try {
    const r = await api(`/messages/${m.id}/spam${refresh ? "?refresh=1" : ""}`);
    if (state.open === m) renderSpam(r);
  } catch (e) {
    if (state.open === m) box.replaceChildren(el("p", { id: "spam-summary", class: "spam-summary error" }, e.message));
  }
}

async function showTab(tab) {
  const m = state.open; if (!m) return;
  state.tab = tab;
  for (const b of document.querySelectorAll(".tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
  for (const p of document.querySelectorAll(".panels > *")) p.classList.toggle("shown", p.dataset.panel === tab);
  $("#remote-banner").hidden = !(tab === "html" && m.remote_content > 0 && !state.remote);
  $("#widths").hidden = !(tab === "html" && m.html_url);
  if (tab === "checks") loadChecks(m.id);
  if (tab === "html") $("#html").src = m.html_url ? `${m.html_url}${state.remote ? "?remote=1" : ""}` : "about:blank";
  if (tab === "raw" && !$("#raw").textContent) $("#raw").textContent = await api(`/messages/${m.id}/raw`);
  if (tab === "spam" && $("#spam").dataset.id !== m.id) { $("#spam").dataset.id = m.id; await loadSpam(); }
}

function closeMessage() {
  state.open = null; document.body.classList.remove("reading"); $("#detail").hidden = true;
  const row = document.querySelector(`.msg[data-id="${CSS.escape(state.selected || "")}"]`);
  if (row) row.focus();
}

async function deleteOpen() {
  const m = state.open; if (!m) return;
  const index = state.messages.findIndex((x) => x.id === m.id);
  await api(`/messages/${m.id}`, { method: "DELETE" });
  closeMessage();
  state.messages = state.messages.filter((x) => x.id !== m.id); renderList();
  const next = state.messages[Math.min(index, state.messages.length - 1)];
  if (next) select(next.id);
  refresh();
}

async function toggleSeen() {
  const m = state.open; if (!m) return;
  const seen = !m.seen;
  await api(`/messages/${m.id}`, { method: "PATCH", json: { seen } });
  m.seen = seen; $("#toggle-seen").textContent = seen ? "Mark unread" : "Mark read";
  refresh();
}

function select(id) {
  state.selected = id;
  for (const row of document.querySelectorAll(".msg")) {
    const on = row.dataset.id === id; row.classList.toggle("selected", on); row.setAttribute("aria-selected", String(on));
    if (on) { row.focus(); row.scrollIntoView({ block: "nearest" }); }
  }
}

function move(step) {
  const ids = state.messages.map((m) => m.id);
  if (!ids.length) return;
  const i = ids.indexOf(state.selected);
  select(ids[Math.max(0, Math.min(ids.length - 1, i < 0 ? 0 : i + step))]);
}

// --- live updates ------------------------------------------------------------------------

let pending = null;
function soon() { clearTimeout(pending); pending = setTimeout(refresh, 80); }

function listen() {
  const source = new EventSource(`${API}/events`);
  source.onopen = () => $("#live").classList.add("on");
  source.onerror = () => $("#live").classList.remove("on");
  for (const kind of ["new", "deleted", "flags"]) source.addEventListener(kind, (e) => {
    const data = JSON.parse(e.data);
    if (kind === "deleted" && state.open && state.open.id === data.id) closeMessage();
    soon();
  });
  // a message the server could not summarise (logged there): say so, the stream goes on
  source.addEventListener("failed", (e) => {
    const data = JSON.parse(e.data);
    status(`Message ${data.id} could not be shown: ${data.error}`, true);
  });
}

// --- checks and previews at widths (issue 15: /messages/{id}/checks, /links/check) ------

const lab = { loaded: null, width: "" };

function chip(status) { return el("span", { class: "result r-" + ({ pass: "pass", fail: "fail", warn: "softfail" }[status] || "other") }, status); }

function section(title, ...children) { return el("section", { class: "lab-section" }, el("h2", {}, title), ...children); }

function setWidth(width) {
  lab.width = width;
  const frame = $("#html");
  // The width is the frame's viewport: its border (1px each side) comes on top.
  frame.style.width = width ? `${Number(width) + 2}px` : "";
  frame.classList.toggle("fixed-width", Boolean(width));
  for (const b of document.querySelectorAll("#widths button")) b.setAttribute("aria-pressed", String(b.dataset.width === width));
}

async function loadChecks(id) {
  if (lab.loaded === id) return;
  lab.loaded = id;
  const box = $("#checks");
  box.replaceChildren(el("p", { class: "muted" }, "Checking…"));
  let c;
  try { c = await api(`/messages/${id}/checks`); } catch (e) { box.replaceChildren(el("p", { class: "status error" }, e.message)); lab.loaded = null; return; }
  if (!state.open || state.open.id !== id) return;
  box.replaceChildren(renderCompat(c.compatibility), renderChecklist(c.checklist), renderLinks(id, c.links), renderCodes(c.codes));
}

function renderCompat(r) {
  if (!r) return section("HTML compatibility", el("p", { class: "muted" }, "No HTML part."));
  const titles = Object.fromEntries(r.features.map((f) => [f.slug, f.title]));
  const clients = el("table", { id: "lab-clients", class: "lab-table" }, el("tbody", {}, ...r.clients.map((c) =>
    el("tr", { dataset: { client: c.id } }, el("td", {}, c.name), el("td", { class: "score" }, c.score === null ? "?" : `${c.score}%`),
      el("td", {}, c.unsupported.length ? "Not supported: " + c.unsupported.map((s) => titles[s] || s).join(", ") : "✓",
        c.partial.length ? el("span", { class: "muted" }, " · partly: " + c.partial.map((s) => titles[s] || s).join(", ")) : "")))));
  const features = el("ul", { id: "lab-features", class: "lab-list" }, ...r.features.filter((f) => f.unsupported.length || f.partial.length).map((f) =>
    el("li", { dataset: { slug: f.slug } }, el("a", { href: f.url, target: "_blank", rel: "noopener noreferrer" }, f.title),
      ` ×${f.count}: not in ${f.unsupported.length} clients`, f.partial.length ? `, partly in ${f.partial.length}` : "")));
  return section("HTML compatibility",
    el("p", { id: "lab-score", class: "lab-score" }, r.score === null ? "No known features" : `${r.score}%`,
      el("span", { class: "muted" }, ` over ${r.features.length} features used · data: ${r.data.source}, ${r.data.updated} (${r.data.licence})`)),
    r.truncated ? el("p", { class: "banner" }, `Only part of the HTML was read (limits: ${JSON.stringify(r.limits)}).`) : "",
    clients, features);
}

function renderChecklist(c) {
  return section("Bulk-sender checklist (Gmail, Yahoo)", el("ul", { id: "lab-checklist", class: "lab-list" }, ...c.items.map((i) =>
    el("li", { dataset: { item: i.id } }, chip(i.status), " ", el("strong", {}, i.title), el("span", { class: "muted" }, ` — ${i.detail}`)))));
}

function linkRow(l) {
  const c = l.check;
  const result = c ? el("span", {}, chip({ ok: "pass", broken: "fail", refused: "warn" }[c.result] || c.result), ` ${c.status ?? ""} ${c.reason}`) : "";
  return el("tr", {}, el("td", {}, l.kind), el("td", { class: "url" }, l.url), el("td", {}, l.text), el("td", { class: "check" }, result));
}

function renderLinks(id, links) {
  const table = el("table", { id: "lab-links", class: "lab-table" }, el("tbody", {}, ...links.links.map(linkRow)));
  const note = el("p", { class: "muted" }, `${links.total} links and images` + (links.truncated ? `, the first ${links.listed} shown` : ""));
  const button = el("button", { id: "check-links", type: "button", onclick: async () => {
    button.disabled = true; note.textContent = "Checking links…";
    try {
      const r = await api(`/messages/${id}/links/check`, { method: "POST" });
      table.tBodies[0].replaceChildren(...r.links.map(linkRow));
      note.textContent = `Checked ${r.check.checked} (at most ${r.check.limit}), ${r.check.skipped} not checked` +
        (r.check.private_allowed ? "" : "; private and loopback targets refused");
    } catch (e) { note.textContent = e.message; }
    button.disabled = false;
  } }, "Check links");
  return section("Links", el("div", { class: "lab-row" }, button, note), table);
}

function renderCodes(c) {
  return section("One-time codes", c.codes.length ? el("ul", { id: "lab-codes", class: "lab-list" }, ...c.codes.map((x) =>
    el("li", {}, el("code", { class: "otp" }, x.code), el("span", { class: "muted" }, ` (${x.source}, near “${x.keyword}”): ${x.context}`))))
    : el("p", { class: "muted" }, "None found."));
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#widths button")) b.addEventListener("click", () => setWidth(b.dataset.width));
});

// --- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#search").addEventListener("submit", (e) => { e.preventDefault(); state.q = $("#q").value.trim(); refresh(); });
  $("#home").addEventListener("click", (e) => { e.preventDefault(); state.mailbox = ""; state.q = ""; $("#q").value = ""; closeMessage(); refresh(); });
  $("#back").addEventListener("click", closeMessage);
  $("#delete").addEventListener("click", () => deleteOpen().catch((e) => status(e.message, true)));
  $("#toggle-seen").addEventListener("click", () => toggleSeen().catch((e) => status(e.message, true)));
  $("#more").addEventListener("click", () => { state.limit += 100; refresh(); });
  $("#show-remote").addEventListener("click", () => { state.remote = true; showTab("html"); });
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("#delete-all").addEventListener("click", async () => {
    const what = state.q || state.mailbox ? "every message shown" : "ALL messages in every mailbox";
    if (!confirm(`Delete ${what}?`)) return;
    try { await api("/messages?" + query(), { method: "DELETE" }); closeMessage(); refresh(); } catch (e) { status(e.message, true); }
  });
  $("#tag-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#tag-input"), tag = input.value.trim();
    if (!tag) return;
    changeTags({ add: [tag] }).then(() => { input.value = ""; }, (err) => status(err.message, true));
  });
  const dialog = $("#release-dialog");
  $("#release").addEventListener("click", () => { $("#release-result").textContent = ""; dialog.showModal(); });
  $("#release-cancel").addEventListener("click", () => dialog.close());
  $("#release-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = e.target, body = { host: f.host.value.trim(), port: Number(f.port.value) };
    if (f.to.value.trim()) body.to = f.to.value.split(",").map((s) => s.trim()).filter(Boolean);
    const out = $("#release-result"); out.textContent = "Sending…"; out.classList.remove("error");
    try {
      const r = await api(`/messages/${state.open.id}/release`, { method: "POST", json: body });
      out.textContent = "Delivered: " + r.results.map((x) => `${x.recipient} ${x.status}`).join(", ");
    } catch (err) { out.textContent = err.message; out.classList.add("error"); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, textarea") || dialog.open) { if (e.key === "Escape") e.target.blur(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const keys = {
      "/": () => $("#q").focus(), j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
      Enter: () => state.selected && openMessage(state.selected), o: () => state.selected && openMessage(state.selected),
      Escape: closeMessage, "#": () => deleteOpen(), Delete: () => deleteOpen(), u: () => toggleSeen(),
    };
    const action = keys[e.key];
    if (action) { e.preventDefault(); Promise.resolve(action()).catch((err) => status(err.message, true)); }
  });
  refresh();
  listen();
});
