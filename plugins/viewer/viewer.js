/* reason view: draws one search tree per problem from the JSON blocks in this page.
 *
 * The tree is one flat list of rows in depth-first order, indented by depth: collapsing
 * a node hides the contiguous run of rows of its subtree, so no row is rebuilt after the
 * first render. Rows are built once as one HTML string; the browser skips layout and
 * paint of rows off screen (content-visibility), so thousands of nodes stay smooth.
 * Everything else (path text, full step text, marks) is computed on demand.
 */
(function () {
  "use strict";
  var T0 = performance.now();
  var $ = function (id) { return document.getElementById(id); };
  var ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return ESC[c]; }); }
  function num(x, d) { return typeof x === "number" && isFinite(x) ? x.toFixed(d === undefined ? 2 : d) : ""; }
  function hue(s) { return "hsl(" + Math.round(Math.max(0, Math.min(1, s)) * 120) + ",62%,42%)"; }

  var index = JSON.parse($("rv-index").textContent);
  var rowsEl = $("rows"), treeEl = $("tree");
  var S = null; // the problem on screen and its view state
  var api = { timings: {}, problem: -1 };
  window.reasonView = api;

  // --- model -------------------------------------------------------------------------------

  function build(data) {
    var nodes = data.nodes, N = nodes.length, i, k;
    var kids = new Array(N);
    for (i = 0; i < N; i++) kids[i] = [];
    var roots = [];
    for (i = 0; i < N; i++) {
      var p = nodes[i].p;
      if (p === null || p === undefined || p < 0 || p >= N) roots.push(i); else kids[p].push(i);
    }
    var order = new Int32Array(N), pos = new Int32Array(N), size = new Int32Array(N);
    var stack = roots.slice().reverse();
    k = 0;
    while (stack.length) {
      i = stack.pop();
      pos[i] = k; order[k++] = i;
      for (var j = kids[i].length - 1; j >= 0; j--) stack.push(kids[i][j]);
    }
    for (k = N - 1; k >= 0; k--) {
      i = order[k]; size[i] += 1;
      if (nodes[i].p !== null && nodes[i].p !== undefined && nodes[i].p >= 0 && nodes[i].p < N) size[nodes[i].p] += size[i];
    }
    var pathTok = new Int32Array(N), onChosen = new Uint8Array(N);
    for (k = 0; k < N; k++) {
      i = order[k];
      var par = nodes[i].p;
      pathTok[i] = (par !== null && par !== undefined && par >= 0 ? pathTok[par] : 0) + (nodes[i].n || 0);
    }
    var chosen = typeof data.chosen === "number" && data.chosen >= 0 && data.chosen < N ? data.chosen : null;
    for (i = chosen; i !== null && i !== undefined && i >= 0; i = nodes[i].p) onChosen[i] = 1;
    var primary = (data.config && data.config.verifier) || null, hasS = false, hasQ = false, maxDepth = 0;
    for (i = 0; i < N; i++) {
      var n = nodes[i];
      if (n.s || n.ps !== undefined) hasS = true;
      if (n.v) hasQ = true;
      if (n.d > maxDepth) maxDepth = n.d;
      if (!primary && n.s) primary = Object.keys(n.s)[0];
    }
    return {
      data: data, nodes: nodes, N: N, kids: kids, order: order, pos: pos, size: size, pathTok: pathTok,
      chosen: chosen, onChosen: onChosen, primary: primary, hasS: hasS, hasQ: hasQ, maxDepth: maxDepth,
      collapsed: new Uint8Array(N), open: new Uint8Array(N), sel: -1, rows: null, lower: null,
      hits: null, hitAt: -1, filterKey: "", onFilter: null, groups: groups(data),
    };
  }

  function stepScore(S, n) {
    if (!n.s) return undefined;
    if (S.primary && n.s[S.primary] !== undefined) return n.s[S.primary];
    for (var key in n.s) return n.s[key];
    return undefined;
  }

  function groups(data) {
    var map = new Map(), list = [];
    (data.candidates || []).forEach(function (c) {
      var key = c.group !== null && c.group !== undefined ? "g" + c.group : "a" + (c.answer === null || c.answer === undefined ? "" : String(c.answer).trim());
      var g = map.get(key);
      if (!g) {
        g = { key: key, answer: c.answer, votes: 0, best: null, sum: 0, correct: c.correct, nodes: [], chosen: false };
        map.set(key, g); list.push(g);
      }
      g.votes += 1;
      if (typeof c.score === "number") { g.sum += c.score; if (g.best === null || c.score > g.best) g.best = c.score; }
      if (g.answer === null || g.answer === undefined) g.answer = c.answer;
      if (c.node !== null && c.node !== undefined && g.nodes.indexOf(c.node) < 0) g.nodes.push(c.node);
      if (c.node === data.chosen && data.chosen !== null) g.chosen = true;
    });
    list.forEach(function (g) {
      if (!g.chosen && data.chosen === null && data.answer !== null && data.answer !== undefined && String(g.answer) === String(data.answer)) g.chosen = true;
    });
    list.sort(function (a, b) { return b.votes - a.votes || (b.best || 0) - (a.best || 0); });
    return list;
  }

  // --- rows ----------------------------------------------------------------------------------

  function oneLine(text) {
    var t = text.length > 300 ? text.slice(0, 300) + "\u2026" : text;
    return esc(t).replace(/\n/g, '<span class="nl">\u23CE</span>');
  }

  function scoreCell(s) {
    if (typeof s !== "number") return '<span class="c sc"></span>';
    return '<span class="c sc" style="--w:' + Math.max(1, Math.round(Math.max(0, Math.min(1, s)) * 22)) + "px;--h:" + hue(s) + '">' + num(s) + "</span>";
  }

  // Every node has a row (an empty shell with its marks as classes: chosen path,
  // reflection, pruned, answer ...); a row's contents are built only while it is near the
  // viewport. Scrolling a list of thousands of full rows repaints them all; shells are cheap.
  function rowShell(S, i) {
    var n = S.nodes[i], cls = "row k-" + esc(n.k);
    if (S.kids[i].length) cls += " hk";
    if (S.onChosen[i]) cls += " ch";
    if (n.P) cls += " pr";
    if (n.T) cls += " te";
    if (n.a !== undefined && n.a !== null) cls += " an";
    return '<div class="' + cls + '" data-i="' + i + '" style="--d:' + (n.d | 0) + '"></div>';
  }

  function rowInner(S, i) {
    var n = S.nodes[i];
    var h = '<span class="ld"><span class="tw"></span><span class="id" title="depth ' + n.d + '">' + i + "</span>";
    if (n.k === "root") h += '<b class="bg b-root">question</b>';
    else if (n.k === "reflection") h += '<b class="bg b-re" title="' + esc((n.m && n.m.trigger) || "reflection") + '">\u21BB reflection</b>';
    if (n.P) h += '<b class="bg b-pr">\u2702 pruned</b>';
    if (n.m && n.m.rollout_of !== undefined) h += '<b class="bg b-ro">rollout</b>';
    if (n.m && n.m.particles) h += '<b class="bg b-pf" title="particle filtering: copies drawn of this path at each resampling">\u00D7' + n.m.particles.join(" \u2192 ") + "</b>";
    if (i === S.chosen) h += '<b class="bg b-ch">\u2605 chosen</b>';
    var text = n.k === "root" ? S.data.question || "(the prompt)" : n.t;
    if (S.open[i]) h += '<span class="tx">' + (esc(text) || '<span class="end">(empty)</span>') + "</span></span>";
    else h += '<span class="tx">' + (text ? oneLine(text) : '<span class="end">(empty)</span>') + "</span></span>";
    h += scoreCell(stepScore(S, n)) + scoreCell(n.ps);
    h += '<span class="c n">' + (n.v || "") + '</span><span class="c q">' + (n.v ? num(n.q) : "") + "</span>";
    h += '<span class="c tk">' + (n.n || "") + "</span>";
    h += '<span class="c an">' + (n.a !== undefined && n.a !== null ? '<b class="ans" title="' + esc(n.a) + '">' + esc(n.a) + "</b>" : n.T ? '<span class="end">end</span>' : "") + "</span>";
    return h;
  }

  var FILL_MARGIN = 40, FILL_MAX = 500;

  function fill(k) {
    if (S.filled[k]) return;
    S.rows[k].innerHTML = rowInner(S, S.order[k]);
    S.filled[k] = 1;
    S.filledList.push(k);
  }

  function visibleAt(y) {
    var r = treeEl.getBoundingClientRect(), el = document.elementFromPoint(r.left + 40, y);
    var row = el && el.closest ? el.closest("#rows .row") : null;
    return row ? S.visIdx[S.pos[+row.dataset.i]] : -1;
  }

  // Fill the rows on screen and FILL_MARGIN visible rows either side; empty the rest
  // once more than FILL_MAX are filled (open and selected rows stay).
  function fillVisible() {
    if (!S || !S.vis.length) return;
    var r = treeEl.getBoundingClientRect(), head = $("thead").offsetHeight;
    var a = visibleAt(r.top + head + 2), b = visibleAt(r.bottom - 3);
    var rowH = S.rowH || 24;
    if (a < 0) a = Math.min(S.vis.length - 1, Math.floor(treeEl.scrollTop / rowH));
    if (b < 0) b = Math.min(S.vis.length - 1, a + Math.ceil(r.height / rowH));
    var lo = Math.max(0, a - FILL_MARGIN), hi = Math.min(S.vis.length - 1, b + FILL_MARGIN), j;
    for (j = lo; j <= hi; j++) fill(S.vis[j]);
    if (S.filledList.length > FILL_MAX) {
      var keep = [];
      for (j = 0; j < S.filledList.length; j++) {
        var k = S.filledList[j], v = S.visIdx[k];
        if ((v >= lo && v <= hi) || S.open[S.order[k]] || S.order[k] === S.sel) keep.push(k);
        else { S.rows[k].textContent = ""; S.filled[k] = 0; }
      }
      S.filledList = keep;
    }
  }

  function renderRows() {
    var t = performance.now(), parts = new Array(S.N);
    for (var k = 0; k < S.N; k++) parts[k] = rowShell(S, S.order[k]);
    treeEl.classList.toggle("nos", !S.hasS);
    treeEl.classList.toggle("noq", !S.hasQ);
    rowsEl.innerHTML = parts.join("");
    S.rows = rowsEl.children;
    S.filled = new Uint8Array(S.N);
    S.filledList = [];
    if (S.N > 600) foldToChosen(); else refreshVisibility();
    fillVisible();
    void rowsEl.offsetHeight; // the layout is part of the cost
    return performance.now() - t;
  }

  function rowOf(i) { return S.rows[S.pos[i]]; }

  function refreshVisibility() {
    var rows = S.rows, k = 0, N = S.N, vis = [], visIdx = S.visIdx || new Int32Array(N);
    visIdx.fill(-1);
    while (k < N) {
      var i = S.order[k];
      rows[k].hidden = false;
      visIdx[k] = vis.length; vis.push(k);
      var folded = S.collapsed[i] && S.kids[i].length;
      rows[k].classList.toggle("col", !!folded);
      if (folded) {
        var end = k + S.size[i];
        for (var j = k + 1; j < end; j++) rows[j].hidden = true;
        k = end;
      } else k += 1;
    }
    S.vis = vis; S.visIdx = visIdx;
    if (S.filled) fillVisible();
  }

  function toggleCollapse(i, state) {
    S.collapsed[i] = state === undefined ? (S.collapsed[i] ? 0 : 1) : state ? 1 : 0;
    refreshVisibility();
  }

  function expandTo(i) {
    var changed = false;
    for (var a = S.nodes[i].p; a !== null && a !== undefined && a >= 0; a = S.nodes[a].p) {
      if (S.collapsed[a]) { S.collapsed[a] = 0; changed = true; }
    }
    return changed;
  }

  function foldToChosen() {
    for (var i = 0; i < S.N; i++) S.collapsed[i] = S.chosen === null ? (S.nodes[i].d >= 1 ? 1 : 0) : S.onChosen[i] ? 0 : 1;
    if (S.sel >= 0) expandTo(S.sel);
    refreshVisibility();
  }

  function expandAll() { S.collapsed.fill(0); refreshVisibility(); }

  function toggleText(i) {
    var row = rowOf(i);
    S.open[i] = S.open[i] ? 0 : 1;
    row.classList.toggle("open", !!S.open[i]);
    row.innerHTML = rowInner(S, i);
    S.filled[S.pos[i]] || (S.filled[S.pos[i]] = 1, S.filledList.push(S.pos[i]));
  }

  // --- marks: search hits and the answer filter ----------------------------------------------

  function applyMarks() {
    var rows = S.rows, hits = S.hits, on = S.onFilter;
    var hitSet = null;
    if (hits) { hitSet = new Uint8Array(S.N); for (var h = 0; h < hits.length; h++) hitSet[hits[h]] = 1; }
    for (var k = 0; k < S.N; k++) {
      var i = S.order[k], row = rows[k];
      var dim = (on && !on[i]) || (hitSet && !hitSet[i]);
      row.classList.toggle("dim", !!dim);
      row.classList.toggle("hit", !!(hitSet && hitSet[i]));
    }
  }

  function search(q) {
    q = (q || "").trim().toLowerCase();
    if (!q) { S.hits = null; $("hits").textContent = ""; applyMarks(); return 0; }
    if (!S.lower) S.lower = S.nodes.map(function (n) { return (n.t || "").toLowerCase(); });
    var hits = [], changed = false;
    for (var k = 0; k < S.N; k++) { var i = S.order[k]; if (S.lower[i].indexOf(q) >= 0) hits.push(i); }
    hits.forEach(function (i) { if (expandTo(i)) changed = true; });
    if (changed) refreshVisibility();
    S.hits = hits; S.hitAt = -1;
    $("hits").textContent = hits.length ? hits.length + " found" : "no match";
    applyMarks();
    return hits.length;
  }

  function nextHit(step) {
    if (!S.hits || !S.hits.length) return;
    S.hitAt = (S.hitAt + step + S.hits.length) % S.hits.length;
    select(S.hits[S.hitAt], true);
    $("hits").textContent = S.hitAt + 1 + " of " + S.hits.length;
  }

  function filterAnswer(key) {
    S.filterKey = key || "";
    $("afilter").value = S.filterKey;
    var g = S.groups.filter(function (x) { return x.key === S.filterKey; })[0];
    if (!g) { S.onFilter = null; }
    else {
      var on = new Uint8Array(S.N), changed = false;
      g.nodes.forEach(function (i) {
        if (expandTo(i)) changed = true;
        for (var a = i; a !== null && a !== undefined && a >= 0; a = S.nodes[a].p) on[a] = 1;
      });
      if (changed) refreshVisibility();
      S.onFilter = on;
    }
    Array.prototype.forEach.call(document.querySelectorAll(".ct tr.grp"), function (tr) { tr.classList.toggle("on", tr.dataset.k === S.filterKey); });
    applyMarks();
    drawShape();
  }

  // --- selection and the path panel -----------------------------------------------------------

  function select(i, scroll) {
    if (i === null || i === undefined || i < 0 || i >= S.N) return;
    if (S.sel >= 0) rowOf(S.sel).classList.remove("sel");
    S.sel = i;
    if (expandTo(i)) refreshVisibility();
    var row = rowOf(i);
    row.classList.add("sel");
    if (scroll) row.scrollIntoView({ block: "center" });
    fillVisible();
    renderDetail(i);
    drawShape();
    try { history.replaceState(null, "", "#p=" + api.problem + "&n=" + i); } catch (e) { /* a sandboxed frame */ }
  }

  function moveSel(step) {
    var v = S.visIdx[S.pos[S.sel < 0 ? 0 : S.sel]] + step;
    if (v < 0 || v >= S.vis.length) return;
    var k = S.vis[v];
    S.rows[k].scrollIntoView({ block: "nearest" });
    select(S.order[k], false);
  }

  function kv(label, value) { return value === "" || value === undefined || value === null ? "" : "<dt>" + esc(label) + "</dt><dd>" + value + "</dd>"; }

  function renderDetail(i) {
    var n = S.nodes[i], path = [];
    for (var a = i; a !== null && a !== undefined && a >= 0; a = S.nodes[a].p) path.push(a);
    path.reverse();
    var h = '<div class="dh">Node ' + i + ' <span style="font-weight:400;color:var(--muted)">depth ' + n.d + " \u00B7 " + esc(n.k) + "</span>";
    if (S.onChosen[i]) h += '<b class="bg b-ch">' + (i === S.chosen ? "\u2605 chosen leaf" : "on the chosen path") + "</b>";
    if (n.P) h += '<b class="bg b-pr">\u2702 pruned</b>';
    if (n.k === "reflection") h += '<b class="bg b-re">\u21BB ' + esc((n.m && n.m.trigger) || "reflection") + "</b>";
    h += "</div><dl class=\"kv\">";
    h += kv("step tokens", n.n || 0) + kv("path tokens", S.pathTok[i]);
    if (n.s) for (var name in n.s) h += kv("step score", num(n.s[name], 3) + ' <span style="color:var(--muted)">' + esc(name) + "</span>");
    if (n.ps !== undefined) h += kv("path score", num(n.ps, 3) + ' <span style="color:var(--muted)">' + esc(S.data.aggregation || "last") + " of " + (n.ss ? n.ss.length : 0) + "</span>");
    if (n.v) h += kv("visits N", n.v) + kv("value Q", num(n.q, 3));
    if (n.m && n.m.particles) h += kv("particles drawn", esc(n.m.particles.join(" \u2192 "))) + kv("weight share", num(n.m.weight, 3));
    if (n.m && n.m.rewards) h += kv("rewards", esc(n.m.rewards.map(function (r) { return num(r, 3); }).join(" ")));
    if (n.lp !== undefined) h += kv("mean p(token)", num(Math.exp(n.lp), 3));
    if (n.f) h += kv("finish", esc(n.f));
    if (n.a !== undefined && n.a !== null) h += kv("answer", '<b class="ans">' + esc(n.a) + "</b>");
    if (n.T) h += kv("terminal", "yes");
    if (n.ok !== undefined) h += kv("passed", n.ok ? '<span class="ok">yes</span>' : '<span class="no">no</span>');
    h += "</dl>";
    if (n.fb) h += '<div class="fb">' + esc(n.fb) + "</div>";
    h += '<div class="blk q"><div class="bh" data-i="' + path[0] + '"><b>Question</b></div><div class="bt">' + esc(S.data.question || "") + "</div></div>";
    for (var k = 1; k < path.length; k++) {
      var j = path[k], m = S.nodes[j], cls = "blk";
      if (S.onChosen[j]) cls += " chp";
      if (m.k === "reflection") cls += " re";
      if (m.P) cls += " pr";
      if (j === i) cls += " cur";
      var sc = stepScore(S, m);
      h += '<div class="' + cls + '"><div class="bh" data-i="' + j + '"><b>#' + j + "</b><span>step " + k + "</span>" + (m.k === "reflection" ? "<span>reflection</span>" : "") + (typeof sc === "number" ? "<span>score " + num(sc) + "</span>" : "") + (m.v ? "<span>N " + m.v + " Q " + num(m.q) + "</span>" : "") + "<span>" + (m.n || 0) + " tok</span></div>";
      h += '<div class="bt">' + (m.t ? esc(m.t) : '<span class="end">(empty)</span>') + "</div></div>";
    }
    if (n.m) h += '<details class="meta"><summary>meta</summary><pre>' + esc(JSON.stringify(n.m, null, 1)) + "</pre></details>";
    $("dbody").innerHTML = h;
  }

  // --- the summary and the candidates ------------------------------------------------------

  function chip(label, value, cls) { return value === "" || value === undefined || value === null ? "" : '<span class="chip ' + (cls || "") + '"><i>' + esc(label) + "</i>" + value + "</span>"; }

  function renderSummary() {
    var d = S.data, c = d.config || {}, u = d.usage || {};
    var h = '<div class="ttl"><span class="pid">' + esc(d.id || "") + '</span><span class="qu" id="qu" title="click to show all">' + esc(d.question || "") + "</span></div><div class=\"chips\">";
    h += chip("search", esc(c.search || "")) + chip("verifier", esc(c.verifier || "")) + chip("n", c.n) + chip("splitter", esc(c.splitter || ""));
    if (c.reflect && c.reflect.length) h += chip("reflect", esc([].concat(c.reflect).join(", ")));
    h += chip("nodes", S.N) + chip("depth", S.maxDepth);
    h += chip("tokens", u.completion_tokens !== undefined ? u.completion_tokens : "") + chip("time", typeof d.seconds === "number" ? num(d.seconds, 1) + " s" : "");
    var ans = d.answer === null || d.answer === undefined ? "(none)" : "<b>" + esc(d.answer) + "</b>";
    var cls = d.correct === false ? "wrong" : "good";
    h += chip("answer", ans + (typeof d.score === "number" ? ' <i>score</i> ' + num(d.score, 3) : "") + (d.correct === true ? ' <span class="ok">\u2714</span>' : d.correct === false ? ' <span class="no">\u2718</span>' : ""), cls);
    if (d.reference !== null && d.reference !== undefined) h += chip("reference", esc(d.reference));
    if (S.chosen === null) h += chip("chosen path", "unknown", "warn");
    h += '</div><div class="how">chosen leaf: ' + esc(d.chosen_from || "") + "</div>";
    $("summary").innerHTML = h;
    $("qu").addEventListener("click", function () { this.classList.toggle("full"); });
  }

  function renderCandidates() {
    var gs = S.groups, d = S.data;
    $("cnote").textContent = gs.length ? (d.candidates || []).length + " path" + ((d.candidates || []).length === 1 ? "" : "s") + ", " + gs.length + " answer" + (gs.length === 1 ? "" : "s") + (d.candidates_from === "tree" ? " (from the tree's answers)" : "") : "";
    var known = gs.some(function (g) { return g.correct === true || g.correct === false; });
    var maxVotes = gs.reduce(function (m, g) { return Math.max(m, g.votes); }, 1);
    var h = '<table class="ct"><thead><tr><th>answer</th><th class="num">votes</th><th class="num">best</th><th class="num" title="sum of the scores">sum</th>' + (known ? "<th>ok</th>" : "") + "<th>nodes</th></tr></thead><tbody>";
    gs.forEach(function (g) {
      h += '<tr class="grp' + (g.chosen ? " chosen" : "") + '" data-k="' + esc(g.key) + '"><td><b class="ans">' + esc(g.answer === null || g.answer === undefined ? "(none)" : g.answer) + "</b></td>";
      h += '<td class="num">' + g.votes + '<span class="vb" style="width:' + Math.round((g.votes / maxVotes) * 36) + 'px"></span></td><td class="num">' + num(g.best) + '</td><td class="num">' + num(g.sum) + "</td>";
      if (known) h += "<td>" + (g.correct === true ? '<span class="ok">\u2714</span>' : g.correct === false ? '<span class="no">\u2718</span>' : "") + "</td>";
      var shown = g.nodes.indexOf(S.chosen) > 11 ? [S.chosen].concat(g.nodes.filter(function (i) { return i !== S.chosen; })) : g.nodes;
      h += '<td><span class="nodes">' + shown.slice(0, 12).map(function (i) { return '<span class="nc' + (i === S.chosen ? " ch" : "") + '" data-i="' + i + '">#' + i + "</span>"; }).join("") + (g.nodes.length > 12 ? '<span class="more">+' + (g.nodes.length - 12) + "</span>" : "") + "</span></td></tr>";
    });
    h += "</tbody></table>";
    $("ctable").innerHTML = gs.length ? h : '<div class="empty">No candidates recorded.</div>';
    var sel = $("afilter"), opts = '<option value="">All answers</option>';
    gs.forEach(function (g) { opts += '<option value="' + esc(g.key) + '">' + esc(g.answer === null || g.answer === undefined ? "(none)" : g.answer) + " \u00B7 " + g.votes + " vote" + (g.votes === 1 ? "" : "s") + "</option>"; });
    sel.innerHTML = opts;
  }

  // --- the overview: the tree's shape, depth left to right ------------------------------------

  function layoutShape() {
    var ys = new Float32Array(S.N), leaves = 0, k, i;
    for (k = 0; k < S.N; k++) { i = S.order[k]; if (!S.kids[i].length) ys[i] = leaves++; }
    for (k = S.N - 1; k >= 0; k--) {
      i = S.order[k];
      var ks = S.kids[i];
      if (ks.length) ys[i] = (ys[ks[0]] + ys[ks[ks.length - 1]]) / 2;
    }
    S.ys = ys; S.leaves = leaves;
  }

  function shapeXY(i, W, H) {
    var pad = 8;
    return [pad + (S.nodes[i].d / Math.max(1, S.maxDepth)) * (W - 2 * pad), pad + (S.leaves > 1 ? S.ys[i] / (S.leaves - 1) : 0.5) * (H - 2 * pad)];
  }

  function drawShape() {
    var cv = $("shape"), W = cv.clientWidth || 400, H = cv.clientHeight || 150, dpr = window.devicePixelRatio || 1;
    if (cv.width !== Math.round(W * dpr)) { cv.width = Math.round(W * dpr); cv.height = Math.round(H * dpr); }
    var g = cv.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, W, H);
    if (!S || !S.ys) return;
    var i, a, b, n, on = S.onFilter;
    var edges = function (test, color, width) {
      g.beginPath();
      for (i = 0; i < S.N; i++) {
        n = S.nodes[i];
        if (n.p === null || n.p === undefined || n.p < 0 || !test(i)) continue;
        a = shapeXY(n.p, W, H); b = shapeXY(i, W, H);
        g.moveTo(a[0], a[1]); g.lineTo((a[0] + b[0]) / 2, a[1]); g.lineTo((a[0] + b[0]) / 2, b[1]); g.lineTo(b[0], b[1]);
      }
      g.strokeStyle = color; g.lineWidth = width; g.stroke();
    };
    edges(function (i) { return !S.onChosen[i] && !(on && on[i]); }, "#cfd5de", 1);
    if (on) edges(function (i) { return on[i] && !S.onChosen[i]; }, "#7c4ddb", 1.8);
    edges(function (i) { return S.onChosen[i]; }, "#2457d6", 2.4);
    var dots = function (test, color, r) {
      g.fillStyle = color; g.beginPath();
      for (i = 0; i < S.N; i++) { if (!test(S.nodes[i], i)) continue; a = shapeXY(i, W, H); g.moveTo(a[0] + r, a[1]); g.arc(a[0], a[1], r, 0, 6.2832); }
      g.fill();
    };
    dots(function (n) { return n.P; }, "#a3aab4", 1.6);
    dots(function (n) { return n.a !== undefined && n.a !== null; }, "#0f7b55", 2.4);
    dots(function (n) { return n.k === "reflection"; }, "#c26a05", 2.8);
    if (S.chosen !== null) dots(function (n, i) { return i === S.chosen; }, "#2457d6", 3.6);
    if (S.sel >= 0) {
      a = shapeXY(S.sel, W, H);
      g.beginPath(); g.arc(a[0], a[1], 5.5, 0, 6.2832); g.strokeStyle = "#1c2330"; g.lineWidth = 1.5; g.stroke();
    }
  }

  function shapeClick(ev) {
    var cv = $("shape"), r = cv.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top, best = -1, bd = Infinity;
    for (var i = 0; i < S.N; i++) {
      var p = shapeXY(i, r.width, r.height), dd = (p[0] - x) * (p[0] - x) + (p[1] - y) * (p[1] - y);
      if (dd < bd) { bd = dd; best = i; }
    }
    if (best >= 0) select(best, true);
  }

  // --- problems ------------------------------------------------------------------------------

  function renderProblemList() {
    var ps = index.problems;
    if (ps.length < 2) return;
    $("problems").hidden = false;
    var h = "";
    ps.forEach(function (p, k) {
      var mark = p.correct === true ? '<span class="pk ok">\u2714</span>' : p.correct === false ? '<span class="pk no">\u2718</span>' : '<span class="pk"></span>';
      h += '<div class="pi' + (p.nodes === null ? " off" : "") + '" data-k="' + k + '" title="' + (p.nodes === null ? "no tree saved (reason eval --save-tree)" : "") + '">' + mark + "<span>" + esc(p.id) + '</span><span class="pa">' + esc(p.answer === null || p.answer === undefined ? "" : p.answer) + '</span><span class="pn">' + (p.nodes === null ? "no tree" : p.nodes) + "</span></div>";
    });
    $("plist").innerHTML = h;
  }

  function showProblem(k, node) {
    var t = performance.now();
    var meta = index.problems[k];
    if (!meta) return;
    var data = JSON.parse($("rv-p" + k).textContent);
    api.problem = k;
    Array.prototype.forEach.call(document.querySelectorAll(".pi"), function (el) { el.classList.toggle("cur", +el.dataset.k === k); });
    if (!data.nodes) {
      S = null;
      rowsEl.innerHTML = '<div class="empty">No tree was saved for this problem: run the eval with --save-tree.</div>';
      $("summary").textContent = meta.id; $("dbody").innerHTML = ""; $("ctable").innerHTML = "";
      return;
    }
    var tb = performance.now();
    S = build(data);
    api.timings.build = performance.now() - tb;
    $("search").value = ""; $("hits").textContent = "";
    api.timings.rows = renderRows();
    layoutShape();
    renderSummary();
    renderCandidates();
    select(node !== undefined && node !== null ? node : S.chosen !== null ? S.chosen : 0, true);
    api.timings.render = performance.now() - t;
  }

  // --- events --------------------------------------------------------------------------------

  rowsEl.addEventListener("click", function (ev) {
    var row = ev.target.closest(".row");
    if (!row || !S) return;
    var i = +row.dataset.i;
    if (ev.target.closest(".tw")) { if (S.kids[i].length) toggleCollapse(i); return; }
    if (ev.target.closest(".tx") && S.sel === i) { toggleText(i); return; }
    select(i, false);
  });
  rowsEl.addEventListener("dblclick", function (ev) {
    var row = ev.target.closest(".row");
    if (row && S && !ev.target.closest(".tx")) toggleText(+row.dataset.i);
  });
  $("dbody").addEventListener("click", function (ev) { var h = ev.target.closest(".bh"); if (h && S) select(+h.dataset.i, true); });
  $("ctable").addEventListener("click", function (ev) {
    if (!S) return;
    var nc = ev.target.closest(".nc");
    if (nc) { select(+nc.dataset.i, true); return; }
    var tr = ev.target.closest("tr.grp");
    if (tr) filterAnswer(S.filterKey === tr.dataset.k ? "" : tr.dataset.k);
  });
  $("afilter").addEventListener("change", function () { if (S) filterAnswer(this.value); });
  var timer = 0;
  $("search").addEventListener("input", function () { var q = this.value; clearTimeout(timer); timer = setTimeout(function () { if (S) search(q); }, 120); });
  $("search").addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && S) { clearTimeout(timer); if (S.hits === null || S.lastQ !== this.value) { search(this.value); S.lastQ = this.value; } nextHit(ev.shiftKey ? -1 : 1); }
  });
  $("b-chosen").addEventListener("click", function () { if (S && S.chosen !== null) select(S.chosen, true); });
  $("b-focus").addEventListener("click", function () { if (S) { foldToChosen(); if (S.sel >= 0) rowOf(S.sel).scrollIntoView({ block: "center" }); } });
  $("b-expand").addEventListener("click", function () { if (S) expandAll(); });
  $("shape").addEventListener("click", function (ev) { if (S) shapeClick(ev); });
  $("plist").addEventListener("click", function (ev) {
    var el = ev.target.closest(".pi");
    if (el && !el.classList.contains("off")) showProblem(+el.dataset.k);
  });
  $("pfilter").addEventListener("input", function () {
    var q = this.value.trim().toLowerCase();
    Array.prototype.forEach.call(document.querySelectorAll(".pi"), function (el) { el.hidden = !!q && el.textContent.toLowerCase().indexOf(q) < 0; });
  });
  document.addEventListener("keydown", function (ev) {
    if (!S) return;
    var typing = ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT";
    if (ev.key === "/" && !typing) { ev.preventDefault(); $("search").focus(); return; }
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var i = S.sel;
    if (ev.key === "ArrowDown" || ev.key === "j") moveSel(1);
    else if (ev.key === "ArrowUp" || ev.key === "k") moveSel(-1);
    else if (ev.key === "ArrowLeft") { if (S.kids[i].length && !S.collapsed[i]) toggleCollapse(i, true); else if (S.nodes[i].p !== null && S.nodes[i].p >= 0) select(S.nodes[i].p, true); }
    else if (ev.key === "ArrowRight") { if (S.collapsed[i]) toggleCollapse(i, false); else if (S.kids[i].length) select(S.kids[i][0], true); }
    else if (ev.key === "Enter") toggleText(i);
    else if (ev.key === "c" && S.chosen !== null) select(S.chosen, true);
    else return;
    ev.preventDefault();
  });
  treeEl.addEventListener("scroll", function () { fillVisible(); }, { passive: true });
  var resizeTimer = 0;
  window.addEventListener("resize", function () { clearTimeout(resizeTimer); resizeTimer = setTimeout(function () { drawShape(); fillVisible(); }, 100); });

  // --- the API the page's tests (and a curious user in the console) use ------------------------

  api.nodeCount = function () { return S ? S.N : 0; };
  api.filledRows = function () { return S ? S.filledList.length : 0; };
  api.select = function (i) { select(i, true); };
  api.search = function (q) { $("search").value = q; return search(q); };
  api.filterAnswer = function (key) { filterAnswer(key); };
  api.groups = function () { return S ? S.groups.map(function (g) { return { key: g.key, answer: g.answer, votes: g.votes, nodes: g.nodes.slice() }; }) : []; };
  api.expandAll = function () { var t = performance.now(); expandAll(); void rowsEl.offsetHeight; return performance.now() - t; };
  api.rerender = function () { return renderRows(); };
  api.show = function (k, node) { showProblem(k, node); };

  // --- start -----------------------------------------------------------------------------------

  renderProblemList();
  var start = 0, startNode = null, m = /p=(\d+)(?:&n=(\d+))?/.exec(location.hash || "");
  if (m && index.problems[+m[1]]) { start = +m[1]; if (m[2] !== undefined) startNode = +m[2]; }
  else for (var k = 0; k < index.problems.length; k++) if (index.problems[k].nodes !== null) { start = k; break; }
  showProblem(start, startNode);
  api.timings.total = performance.now() - T0;
  api.ready = true;
  document.documentElement.dataset.ready = "1";
})();
