"""The style sheet and the script of report.html (see :mod:`prp.eval.html`).

The script reads the page's data from ``<script type="application/json" id="prp-data">`` and builds
the per-query browser with ``createElement`` / ``textContent`` only: no model text ever passes
through ``innerHTML``, so an answer like ``<script>alert(1)</script>`` shows as text.  Only the
current page of rows is in the DOM (pages of 100 by default), which keeps 5,000 queries fast.
Image sources are accepted only as ``data:image/`` URIs and links only as relative paths.
"""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
summary { cursor: pointer; } summary h2 { display: inline-block; width: 95%; }
table.num td { text-align: right; } table.num td:first-child { text-align: left; }
#queries th[data-key] { cursor: pointer; user-select: none; }
#queries th[data-key]::after { content: " \\2195"; color: #aaa; }
#queries th.asc::after { content: " \\2191"; color: #222; }
#queries th.desc::after { content: " \\2193"; color: #222; }
#queries td.text { max-width: 22em; white-space: pre-wrap; word-break: break-word; }
#queries th { white-space: nowrap; }
#queries img { max-height: 64px; max-width: 96px; }
tr.route-target td.route { color: #8a4b00; } tr.route-fallback td.route { color: #b00; font-weight: bold; }
td.ok { color: #176b2c; } td.bad { color: #b00; }
.controls { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: center; margin: 0.5em 0; }
.controls input[type=number] { width: 5em; }
.plots img { max-width: min(100%, 960px); height: auto; border: 1px solid #ddd; margin: 2px; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #ddd; padding: 0.5em; width: 230px; font-size: 12px; }
.card img { max-width: 220px; max-height: 160px; display: block; }
.card .text { white-space: pre-wrap; word-break: break-word; }
.muted { color: #777; }
"""

JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("prp-data").textContent);
  var QUERIES = DATA.queries;
  var state = { key: null, dir: 1, page: 0, pageSize: DATA.page_size, rows: QUERIES };

  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function num(x, digits) { return (typeof x === "number") ? x.toFixed(digits) : "-"; }
  // IPR terms are often tiny (1e-4): two significant digits instead of a row of zeros
  function small(x) {
    return (typeof x === "number" && x !== 0 && Math.abs(x) < 0.01) ? x.toExponential(1) : num(x, 3);
  }
  function yesNo(c) { return c === true ? "yes" : (c === false ? "no" : "-"); }
  // only embedded images and relative links: nothing on the page can reach the network
  function safeSrc(s) { return (typeof s === "string" && s.indexOf("data:image/") === 0) ? s : null; }
  function safeHref(s) {
    return (typeof s === "string" && !/^[a-zA-Z][a-zA-Z0-9+.\-]*:/.test(s) && s.indexOf("//") !== 0) ? s : null;
  }
  function image(q) {
    var src = safeSrc(q.thumb), href = safeHref(q.image_href);
    if (!src) { return el("span", q.has_image ? "(no preview)" : "-", "muted"); }
    var img = el("img"); img.src = src; img.alt = "image of " + q.id; img.loading = "lazy";
    if (!href) { return img; }
    var a = el("a"); a.href = href; a.target = "_blank"; a.rel = "noopener"; a.appendChild(img);
    return a;
  }

  // ---- filters -------------------------------------------------------------------------------
  function bound(id) {
    var v = $(id).value.trim();
    if (v === "") { return null; }
    var x = Number(v);
    return isFinite(x) ? x : null;
  }
  function filters() {
    return { route: $("f-route").value, correct: $("f-correct").value, split: $("f-split").value,
             lo: bound("f-score-min"), hi: bound("f-score-max"), text: $("f-text").value.trim().toLowerCase() };
  }
  function matches(q, f) {
    if (f.route && q.route !== f.route) { return false; }
    if (f.correct && yesNo(q.correct) !== f.correct) { return false; }
    if (f.split && (q.split || "") !== f.split) { return false; }
    if (f.lo !== null || f.hi !== null) {
      if (typeof q.score !== "number") { return false; }
      if (f.lo !== null && q.score < f.lo) { return false; }
      if (f.hi !== null && q.score > f.hi) { return false; }
    }
    if (f.text) {
      var hay = [q.id, q.question, q.gold, q.draft_answer, q.target_answer].join(" ").toLowerCase();
      if (hay.indexOf(f.text) < 0) { return false; }
    }
    return true;
  }
  function compare(a, b) {
    var x = a[state.key], y = b[state.key];
    var xm = (x === null || x === undefined), ym = (y === null || y === undefined);
    if (xm || ym) { return xm === ym ? a.index - b.index : (xm ? 1 : -1); }  // missing values last
    if (typeof x === "boolean") { x = x ? 1 : 0; y = y ? 1 : 0; }
    if (typeof x === "number" && typeof y === "number") { return (x - y) * state.dir || a.index - b.index; }
    return String(x).localeCompare(String(y)) * state.dir || a.index - b.index;
  }
  function apply() {
    var f = filters();
    state.rows = QUERIES.filter(function (q) { return matches(q, f); });
    if (state.key) { state.rows.sort(compare); }
    state.page = 0;
    render();
  }

  // ---- rows ----------------------------------------------------------------------------------
  function row(q) {
    var tr = el("tr"); tr.className = "route-" + (q.route || "none"); tr.setAttribute("data-id", q.id);
    var td = el("td"); td.appendChild(image(q)); tr.appendChild(td);
    tr.appendChild(el("td", q.id));
    tr.appendChild(el("td", q.split || "-"));
    tr.appendChild(el("td", q.question, "text"));
    tr.appendChild(el("td", q.gold, "text"));
    tr.appendChild(el("td", num(q.d, 2)));
    tr.appendChild(el("td", num(q.t, 2)));
    tr.appendChild(el("td", small(q.ipr_d) + " / " + small(q.ipr_t)));
    tr.appendChild(el("td", num(q.score, 3)));
    tr.appendChild(el("td", q.route || "-", "route"));
    tr.appendChild(el("td", q.draft_answer, "text draft-answer"));
    tr.appendChild(el("td", q.target_answer, "text target-answer"));
    tr.appendChild(el("td", yesNo(q.correct), q.correct === true ? "ok" : (q.correct === false ? "bad" : "")));
    tr.appendChild(el("td", num(q.latency_s, 3)));
    tr.title = q.error ? "error: " + q.error : "";
    return tr;
  }
  function render() {
    var size = state.pageSize > 0 ? state.pageSize : Math.max(state.rows.length, 1);
    var pages = Math.max(1, Math.ceil(state.rows.length / size));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    var start = state.page * size, shown = state.rows.slice(start, start + size);
    var body = $("query-rows"), frag = document.createDocumentFragment();
    shown.forEach(function (q) { frag.appendChild(row(q)); });
    body.replaceChildren(frag);
    $("match-count").textContent = String(state.rows.length);
    $("page-info").textContent = state.rows.length
      ? "rows " + (start + 1) + "-" + (start + shown.length) + ", page " + (state.page + 1) + " of " + pages
      : "no query matches";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  // ---- set-up --------------------------------------------------------------------------------
  function options(id, values) {
    var select = $(id);
    values.forEach(function (v) { var o = el("option", v); o.value = v; select.appendChild(o); });
  }
  function cards() {
    var box = $("mislabel-cards"), byId = {};
    if (!box) { return; }
    QUERIES.forEach(function (q) { byId[q.id] = q; });
    DATA.mislabel_ids.forEach(function (id) {
      var q = byId[id], card = el("div", null, "card");
      if (!q) { return; }
      card.setAttribute("data-id", q.id);
      card.appendChild(image(q));
      card.appendChild(el("div", q.id + (q.split ? " (" + q.split + ")" : "")));
      card.appendChild(el("div", "Q: " + (q.question || "-"), "text"));
      card.appendChild(el("div", "gold: " + (q.gold || "-"), "text"));
      card.appendChild(el("div", "d " + num(q.d, 2) + ", t " + num(q.t, 2) + ", score " + num(q.score, 3)));
      card.appendChild(el("div", "draft: " + (q.draft_answer || "-") + " (" + yesNo(q.draft_correct) + ")", "text"));
      card.appendChild(el("div", "target: " + (q.target_answer || "-") + " (" + yesNo(q.target_correct) + ")", "text"));
      box.appendChild(card);
    });
  }
  options("f-route", DATA.routes);
  options("f-split", DATA.splits);
  $("n-total").textContent = String(QUERIES.length);
  ["f-route", "f-correct", "f-split", "f-score-min", "f-score-max", "f-text"].forEach(function (id) {
    $(id).addEventListener($(id).tagName === "SELECT" ? "change" : "input", apply);
  });
  $("f-page-size").value = String(state.pageSize);
  $("f-page-size").addEventListener("change", function () {
    state.pageSize = Number(this.value); state.page = 0; render();
  });
  $("prev").addEventListener("click", function () { state.page -= 1; render(); });
  $("next").addEventListener("click", function () { state.page += 1; render(); });
  Array.prototype.forEach.call(document.querySelectorAll("#queries th[data-key]"), function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      state.dir = (state.key === key) ? -state.dir : 1;
      state.key = key;
      Array.prototype.forEach.call(document.querySelectorAll("#queries th"),
                                   function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(state.dir > 0 ? "asc" : "desc");
      apply();
    });
  });
  cards();
  apply();
  document.body.setAttribute("data-ready", "1");
})();
"""
