"use strict";
// The report page's table (sorted, filtered, rendered virtually: only the rows in view are in
// the DOM) and its detail view. Every value comes from the JSON in #report-data and is put in
// the page with textContent, never as HTML.
(function () {
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const ROWS = D.rows;
  const ROW_H = 30, OVERSCAN = 12;
  const NAME = 0, STATE = 1, FAMILY = 2, WORST = 3, COUNT = 4, SIZE = 5, SOURCES = 6,
    LOCATION = 7, REASON = 8, DETAIL = 9, FINDINGS = 10;
  const SEVERITIES = ["error", "warning", "info"];
  const RANK = { error: 0, warning: 1, info: 2 };
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const $ = (id) => document.getElementById(id);
  const family = (r) => r[FAMILY] ?? D.unknownFamily;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
    return node;
  }
  const fmt = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));
  const words = (s) => String(s).replace(/_/g, " ");
  const json = (v) => (typeof v === "string" ? v : JSON.stringify(v));

  // --- columns, filters, sorting -------------------------------------------------------------
  const columns = [
    { col: NAME, label: D.nameLabel, width: "30%" },
    { col: STATE, label: D.stateLabel, width: "9em" },
    { col: FAMILY, label: "family", width: "9em" },
    { col: WORST, label: "worst", width: "6.5em" },
    { col: COUNT, label: "findings", width: "6.5em", num: true },
  ];
  if (D.sizes) {
    columns.push({ col: SIZE, label: "size", width: "8.5em", num: true });
    columns.push({ col: SOURCES, label: "sources", width: "8.5em", num: true });
  }
  columns.push({ col: LOCATION, label: D.locationLabel, width: "auto" });

  // Findings, like details, are numbers of shared parts: [severity, code, message, hint, paths].
  const findingsOf = (r) => r[FINDINGS].map((p) => D.parts[p]);
  const masks = ROWS.map((r) => findingsOf(r).reduce((m, f) => m | (1 << (RANK[f[0]] ?? 3)), 0));
  let haystacks = null;
  const state = { family: "", state: "", severity: "", text: "", sort: -1, dir: 1, selected: -1 };
  let view = ROWS.map((_, i) => i);

  function haystack(i) {
    const r = ROWS[i];
    const parts = [r[NAME], r[STATE], r[FAMILY] || "", r[LOCATION], r[REASON]];
    for (const f of findingsOf(r)) parts.push(f[1], f[2]);
    return parts.join("\n").toLowerCase();
  }

  function matches(i) {
    const r = ROWS[i];
    if (state.family && family(r) !== state.family) return false;
    if (state.state && r[STATE] !== state.state) return false;
    if (state.severity === "none" ? masks[i] !== 0
      : state.severity && !(masks[i] & (1 << RANK[state.severity]))) return false;
    if (state.text) {
      haystacks = haystacks || ROWS.map((_, j) => haystack(j));
      if (!haystacks[i].includes(state.text)) return false;
    }
    return true;
  }

  function key(i, col) {
    const v = ROWS[i][col];
    if (col === WORST) return v === null ? 3 : RANK[v];
    return v;
  }

  function compare(a, b) {
    const col = state.sort;
    const x = key(a, col), y = key(b, col);
    if (x === y) return a - b;
    if (x === null || x === undefined) return 1; // unknown sizes last, whichever the direction
    if (y === null || y === undefined) return -1;
    const c = typeof x === "number" && typeof y === "number" ? x - y : collator.compare(String(x), String(y));
    return (c || a - b) * state.dir;
  }

  function refresh() {
    view = [];
    for (let i = 0; i < ROWS.length; i++) if (matches(i)) view.push(i);
    if (state.sort >= 0) view.sort(compare);
    $("shown").textContent = fmt(view.length);
    // The viewport's height is set, not grown by its rows: draw() fills what is in view.
    const rows = Math.max(view.length, 1) * ROW_H + head.offsetHeight + 2;
    viewport.style.height = `${Math.min(rows, Math.max(240, Math.round(window.innerHeight * 0.7)))}px`;
    viewport.scrollTop = 0;
    draw();
  }

  // --- the virtual table -----------------------------------------------------------------------
  const viewport = $("viewport"), tbody = $("tbody");
  const head = $("head"), colgroup = $("cols");
  for (const c of columns) {
    colgroup.append(el("col", { style: `width:${c.width}` }));
    const th = el("th", { scope: "col", class: c.num ? "n" : "", "data-col": c.col, "aria-sort": "none" },
      el("button", { type: "button" }, c.label));
    th.querySelector("button").addEventListener("click", () => sortBy(c.col));
    head.append(th);
  }

  function sortBy(col) {
    state.dir = state.sort === col ? -state.dir : 1;
    state.sort = col;
    for (const th of head.children) {
      const on = Number(th.dataset.col) === col;
      th.setAttribute("aria-sort", on ? (state.dir > 0 ? "ascending" : "descending") : "none");
    }
    refresh();
  }

  function cell(i, c) {
    const r = ROWS[i];
    const v = r[c.col];
    if (c.col === WORST) return el("td", { class: v ? `sev ${v}` : "" }, v || "-");
    if (c.col === STATE) return el("td", { class: `st ${v}` }, words(v));
    if (c.num) return el("td", { class: "n" }, fmt(v));
    const td = el("td", {}, v === null || v === "" ? "-" : v);
    td.title = v || "";
    return td;
  }

  function pad(height) {
    return el("tr", { class: "pad", "aria-hidden": "true" },
      el("td", { colspan: columns.length, style: `height:${height}px` }));
  }

  let pending = false;
  function draw() {
    pending = false;
    const top = viewport.scrollTop, height = viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(view.length, Math.ceil((top + height) / ROW_H) + OVERSCAN);
    const frag = document.createDocumentFragment();
    if (first > 0) frag.append(pad(first * ROW_H));
    for (let k = first; k < last; k++) {
      const i = view[k];
      const tr = el("tr", { class: i === state.selected ? "r sel" : "r", tabindex: "0", "data-row": i });
      for (const c of columns) tr.append(cell(i, c));
      frag.append(tr);
    }
    if (last < view.length) frag.append(pad((view.length - last) * ROW_H));
    if (!view.length) frag.append(el("tr", {}, el("td", { colspan: columns.length, class: "empty" }, "No deployment matches these filters.")));
    tbody.replaceChildren(frag);
  }
  const later = () => {
    if (!pending) { pending = true; requestAnimationFrame(draw); }
  };
  viewport.addEventListener("scroll", later, { passive: true });
  window.addEventListener("resize", later);
  tbody.addEventListener("click", (e) => {
    const tr = e.target.closest("tr.r");
    if (tr) open(Number(tr.dataset.row));
  });
  tbody.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr.r");
    if (tr && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); open(Number(tr.dataset.row)); }
  });

  // --- filters -----------------------------------------------------------------------------------
  function options(select, values, label) {
    select.append(el("option", { value: "" }, `all ${label}`));
    for (const [value, text] of values) select.append(el("option", { value }, text));
  }
  const count = (get) => {
    const m = new Map();
    for (const r of ROWS) m.set(get(r), (m.get(get(r)) || 0) + 1);
    return [...m.entries()].sort((a, b) => b[1] - a[1] || collator.compare(a[0], b[0]));
  };
  options($("f-family"), count(family).map(([v, n]) => [v, `${v} (${fmt(n)})`]), "families");
  options($("f-state"), count((r) => r[STATE]).map(([v, n]) => [v, `${words(v)} (${fmt(n)})`]),
    D.stateLabel === "kind" ? "kinds" : "outcomes");
  options($("f-severity"), [...SEVERITIES.map((s) => [s, `has ${s}`]), ["none", "no findings"]], "severities");
  const bind = (id, field, event, map) => $(id).addEventListener(event, (e) => {
    state[field] = map ? map(e.target.value) : e.target.value;
    refresh();
  });
  bind("f-family", "family", "change");
  bind("f-state", "state", "change");
  bind("f-severity", "severity", "change");
  bind("f-text", "text", "input", (v) => v.trim().toLowerCase());
  // Bars of the charts filter the table (the family and outcome charts, and severities).
  for (const bar of document.querySelectorAll("[data-filter]")) {
    bar.addEventListener("click", () => {
      const select = $(`f-${bar.dataset.filter}`);
      select.value = bar.dataset.value;
      select.dispatchEvent(new Event("change"));
      $("deployments").scrollIntoView();
    });
  }

  // --- the detail view ---------------------------------------------------------------------------
  const detail = $("detail");
  function dl(pairs) {
    const list = el("dl", { class: "kv" });
    for (const [k, v] of pairs) if (v !== null && v !== undefined && v !== "") list.append(el("dt", {}, k), el("dd", {}, v));
    return list;
  }
  function token(id, text) {
    const shown = id === null || id === undefined ? "none" : json(id);
    return text === null || text === undefined ? shown : el("span", {}, `${shown} `, el("code", {}, text));
  }
  function said(sources) {
    if (!sources || !sources.length) return null;
    return el("span", { class: "note" }, " from ", ...sources.flatMap((s, k) => [k ? ", " : "", el("code", {}, s.source), ` = ${json(s.value)}`]));
  }
  function table(headings, rows) {
    return el("table", {}, el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c))))));
  }
  function marked(text, tokens) {
    // The rendered prompt with every special token of the deployment marked.
    const pre = el("pre", { class: "prompt" });
    const known = [...new Set(tokens.filter((t) => t))].sort((a, b) => b.length - a.length);
    let at = 0;
    while (at < text.length) {
      let best = -1, which = null;
      for (const t of known) {
        const k = text.indexOf(t, at);
        if (k >= 0 && (best < 0 || k < best)) { best = k; which = t; }
      }
      if (best < 0) { pre.append(text.slice(at)); break; }
      pre.append(text.slice(at, best), el("mark", {}, which));
      at = best + which.length;
    }
    return pre;
  }

  function tokensSection(d) {
    const bos = d.bos || {}, eos = d.eos || {};
    const eosIds = eos.ids || [];
    const eosList = eosIds.length ? eosIds.flatMap((id, k) => [k ? ", " : "", token(id, (eos.tokens || [])[k])]) : ["-"];
    const runner = d.runner || {};
    const ran = Object.entries(runner).filter(([, v]) => v && typeof v === "object")
      .map(([k, v]) => `${k} ${json(v.value)} (from ${v.source})`).join("; ");
    return [
      el("h3", {}, "bos / eos"),
      dl([
        ["bos", el("span", {}, token(bos.id, bos.token), said(bos.sources))],
        ["eos", el("span", {}, ...eosList, said(eos.sources))],
        ["num_bos / num_eos", `${json(d.num_bos)} / ${json(d.num_eos)}`],
        ["the ExecuTorch runner takes", ran],
      ]),
      el("h3", {}, `Stop set (${(d.stop || []).length})`),
      (d.stop || []).length
        ? table(["id", "token", "sources"], d.stop.map((s) => [String(s.id), s.token === null ? "-" : el("code", {}, s.token), (s.sources || []).join(", ") || "-"]))
        : el("p", { class: "note" }, "No stop tokens."),
    ];
  }

  function sampleSection(d) {
    const s = d.sample || {};
    const out = [el("h3", {}, "A sample conversation, rendered with the model's chat template")];
    if (s.prompt === null || s.prompt === undefined) {
      out.push(el("p", { class: "error" }, `Not rendered: ${s.error || "no chat template"}`));
      return out;
    }
    const messages = (D.conversations[s.conversation] || []).map((m) => el("li", {}, el("b", {}, m.role), m.content));
    const tokens = [d.bos && d.bos.token, ...((d.eos && d.eos.tokens) || []), ...(d.stop || []).map((t) => t.token)];
    out.push(el("ul", { class: "messages" }, ...messages),
      el("p", { class: "note" }, "Template: ", el("code", {}, d.chat_template_source || "?"), "; its bos, eos and stop tokens are marked."),
      marked(s.prompt, tokens));
    if (s.truncated) out.push(el("p", { class: "note" }, "(cut: the rendering is longer)"));
    return out;
  }

  function findingsSection(r) {
    const findings = findingsOf(r);
    const items = findings.map((f) => el("li", {},
      el("span", { class: `sev ${f[0]}` }, f[0]), " ", el("code", {}, f[1]), ": ", f[2],
      f[4].length ? el("div", { class: "note" }, "in ", ...f[4].flatMap((p, k) => [k ? ", " : "", el("code", {}, p)])) : null,
      f[3] ? el("div", { class: "hint" }, `hint: ${f[3]}`) : null));
    return [el("h3", {}, `Findings (${findings.length})`),
      items.length ? el("ul", { class: "findings" }, ...items) : el("p", { class: "ok" }, "No findings.")];
  }

  function evidenceSection(d) {
    const ev = d.evidence || [];
    const out = [el("h3", {}, `Evidence (${ev.length}${d.evidence_total > ev.length ? ` of ${d.evidence_total}` : ""})`)];
    if (ev.length) out.push(table(["source", "field", "value", "detail"], ev.map((e) => [el("code", {}, e.source), e.field, json(e.value), e.detail || ""])));
    if ((d.conflicts || []).length) {
      out.push(el("h3", {}, "Conflicts"), table(["field", "values (the first is used)"],
        d.conflicts.map((c) => [c.field, (c.values || []).map((v) => `${json(v.value)} (${v.source})`).join("; ")])));
    }
    return out;
  }

  function expand(parts) {
    // A details object is stored as numbers of shared parts (evidence: one number per entry).
    const d = {};
    for (const [k, v] of Object.entries(parts)) d[k] = Array.isArray(v) ? v.map((p) => D.parts[p]) : D.parts[v];
    return d;
  }

  function open(i) {
    if (!(i >= 0 && i < ROWS.length)) return;
    state.selected = i;
    const r = ROWS[i];
    const d = r[DETAIL] >= 0 ? expand(D.details[r[DETAIL]]) : null;
    const family = d && d.family ? d.family : {};
    const close = el("button", { type: "button", class: "close" }, "close");
    close.addEventListener("click", () => { detail.hidden = true; state.selected = -1; draw(); });
    const parts = [
      el("header", {}, el("h2", { id: "detail-name" }, r[NAME]), close),
      dl([
        [D.stateLabel, words(r[STATE])],
        ["reason", r[REASON]],
        ["family", r[FAMILY] ? `${r[FAMILY]}${family.confidence ? ` (${family.confidence} confidence)` : ""}` : "unknown"],
        ["alternatives", (family.alternatives || []).join(", ")],
        [D.locationLabel, r[LOCATION]],
        ["size", D.sizes && r[SIZE] !== null ? `${fmt(r[SIZE])} bytes (sources ${fmt(r[SOURCES])} bytes)` : ""],
      ]),
      ...findingsSection(r),
    ];
    if (d) parts.push(...tokensSection(d), ...sampleSection(d), ...evidenceSection(d));
    else parts.push(el("p", { class: "note" }, "No details: the deployment was not read (see the reason)."));
    detail.replaceChildren(...parts);
    detail.hidden = false;
    draw();
    try {
      history.replaceState(null, "", `#d${i}`); // a link to this view
    } catch (e) { /* some origins (sandboxed frames) refuse it: the view works without */ }
    detail.scrollIntoView({ block: "start" });
  }

  refresh();
  const deep = /^#d(\d+)$/.exec(location.hash);
  if (deep) open(Number(deep[1]));
  document.documentElement.dataset.ready = "1";
})();
