/* attnviz explorer, core: data decoding, state, colour scales, the view registry and the head view.
 * Hand-written, no framework, no network. Every text that comes from the data (tokens, model name,
 * text) goes in with textContent or as an SVG/canvas text value, never parsed as markup.
 * Other views (matrix.js, overview.js, and any extra mode) register with AttnViz.addView. */
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"];
  // viridis, 9 stops (matplotlib's), interpolated linearly
  var VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  var MASKED = "#d9d9d9";
  var MIN_LINE = 0.01; // head view: weights below this draw no line
  var DENSE_HEAD_VIEW = 100; // tokens: beyond this the head view draws the strongest lines, or a hovered token's
  var STRONGEST_LINES = 2; // a long text's head view at rest: this many lines per token
  var LOG_RANGE = 1e-3; // the log scale spans top * LOG_RANGE .. top
  var CACHE_HEADS = 24; // decoded heads kept (each n x n float32)

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function rgb(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    var i = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [Math.round(a[0] + f * (b[0] - a[0])), Math.round(a[1] + f * (b[1] - a[1])),
      Math.round(a[2] + f * (b[2] - a[2]))];
  }
  function colour(t) { var c = rgb(t); return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }
  var LUT = new Uint8Array(256 * 3); // viridis at 256 steps, for painting pixels
  for (var li = 0; li < 256; li++) { var c0 = rgb(li / 255); LUT.set(c0, li * 3); }
  function headColour(h) { return HEAD_COLOURS[h % HEAD_COLOURS.length]; }
  function fmt(w) { return w.toFixed(3); }

  function b64bytes(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  // float16 (little-endian, base64) -> Float32Array
  function decodeHalf(b64) {
    var bytes = b64bytes(b64), n = bytes.length >> 1, out = new Float32Array(n);
    for (var i = 0; i < n; i++) {
      var h = bytes[2 * i] | (bytes[2 * i + 1] << 8);
      var s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
      out[i] = e === 0 ? s * m * Math.pow(2, -24) : e === 31 ? (m ? NaN : s * Infinity) :
        s * (1 + m / 1024) * Math.pow(2, e - 15);
    }
    return out;
  }
  function inflate(bytes) {
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer().then(function (b) { return new Uint8Array(b); });
  }

  // Weights of [layers, heads, n, n] in the q6-deflate encoding (see views/html.py encode_weights).
  function Block(w, L, H, n) {
    this.L = L; this.H = H; this.n = n; this.steps = w.steps; this.top = w.top;
    this.first = decodeHalf(w.first);
    var self = this;
    this.ready = inflate(b64bytes(w.data)).then(function (codes) { self.codes = codes; return self; });
  }
  Block.prototype.head = function (l, h) {
    var n = this.n, nn = n * n, k = l * this.H + h, off = k * nn, f = this.top[k] / this.steps;
    var out = new Float32Array(nn), codes = this.codes, first = this.first, fo = k * n;
    for (var i = 0; i < nn; i++) out[i] = codes[off + i] * f;
    for (var q = 0; q < n; q++) out[q * n] = first[fo + q];
    return out;
  };

  // The heads of one text: decoded on demand from an inline block, or fetched one at a time. Fetches
  // wait in a queue, one in flight: a head a view needs now goes before the background ones (the
  // rest of the shown layer), which a server answers one at a time anyway.
  function Store(data, fetchHead) {
    this.data = data; this.n = data.n; this.fetchHead = fetchHead; this.cache = new Map();
    this.pending = {}; this.loaded = {}; this.queue = []; this.busy = 0; this.sent = [];
    this.block = data.weights ? new Block(data.weights, data.layers.length, data.heads.length, data.n) : null;
    this.ready = this.block ? this.block.ready : Promise.resolve();
    if (!this.block && data.head0) { // a served long text comes with its first head
      var first = new Block(data.head0, 1, 1, data.n), self = this;
      this.ready = first.ready.then(function () { self.loaded["0,0"] = first.head(0, 0); });
    }
  }
  Store.prototype.has = function (l, h) { return !!this.block || (l + "," + h) in this.loaded; };
  Store.prototype.head = function (l, h) {
    var key = l + "," + h, hit = this.cache.get(key);
    if (hit) { this.cache.delete(key); this.cache.set(key, hit); return hit; }
    if (!this.block && !(key in this.loaded)) return null;
    var out = this.block ? this.block.head(l, h) : this.loaded[key];
    this.cache.set(key, out);
    if (this.cache.size > CACHE_HEADS) this.cache.delete(this.cache.keys().next().value);
    return out;
  };
  // -> a Promise resolved once head (l, h) is loaded; `background`: after every head asked for now.
  Store.prototype.load = function (l, h, background) {
    var key = l + "," + h, job = this.pending[key];
    if (this.block || key in this.loaded) return Promise.resolve();
    if (job) {
      if (!background) job.background = false; // wanted now: it goes before the background ones
      return job.promise;
    }
    job = { key: key, l: l, h: h, background: !!background };
    job.promise = new Promise(function (resolve, reject) { job.resolve = resolve; job.reject = reject; });
    this.pending[key] = job;
    this.queue.push(job);
    this.pump();
    return job.promise;
  };
  // Drop the fetches not yet sent (another text replaces this one).
  Store.prototype.stop = function () {
    this.stopped = true;
    this.queue.forEach(function (job) { job.reject(new Error("stopped")); });
    this.queue = [];
  };
  Store.prototype.pump = function () {
    var self = this, q = this.queue;
    if (this.busy || !q.length || this.stopped) return;
    var i = 0;
    while (i < q.length && q[i].background) i++;
    var job = q.splice(i < q.length ? i : 0, 1)[0];
    this.busy = 1;
    this.sent.push(job.key);
    var done = function (e) {
      delete self.pending[job.key];
      self.busy = 0;
      if (e) job.reject(e); else job.resolve();
      self.pump();
    };
    Promise.resolve().then(function () {
      return self.fetchHead(self.data.layers[job.l], self.data.heads[job.h]);
    }).then(function (w) {
      var b = new Block(w, 1, 1, self.n);
      return b.ready.then(function () { self.loaded[job.key] = b.head(0, 0); });
    }).then(function () { done(null); }, function (e) { done(e || new Error("cannot load the head")); });
  };

  // -- the view registry: a view is {name, label, head (uses the head selector), render(ex)} ------
  var VIEWS = [];
  function addView(spec) {
    for (var i = 0; i < VIEWS.length; i++) if (VIEWS[i].name === spec.name) { VIEWS[i] = spec; return; }
    VIEWS.push(spec);
  }
  function viewSpec(name) {
    for (var i = 0; i < VIEWS.length; i++) if (VIEWS[i].name === name) return VIEWS[i];
    return VIEWS[0];
  }

  function Explorer(root, data, options) {
    this.root = root;
    this.data = data;
    this.options = options || {};
    this.store = new Store(data, this.options.fetchHead);
    this.levels = {};
    this.state = {
      view: this.options.view || data.view || (data.lazy ? "matrix" : "head"),
      level: data.level === "word" && data.words ? "word" : "token", layer: 0, head: 0,
      heads: data.heads.map(function () { return true; }),
      hideSpecial: false, scale: data.scale || "auto", hover: null, focus: null, zoom: null,
    };
    root.classList.add("av");
    root.textContent = "";
    root.attnviz = this;
    var self = this;
    this.ready = this.store.ready.then(function () { self.build(); self.render(); return self; });
  }

  // Spans come as code-point offsets (Python's); a JS string counts UTF-16 units, in which every
  // character beyond the BMP (an emoji, a rare CJK ideograph) is two. -> spans in UTF-16 units.
  function utf16Spans(text, spans) {
    if (!spans || !/[\uD800-\uDFFF]/.test(text)) return spans || [];
    var at = [0];
    for (var i = 0; i < text.length; i++) {
      var c = text.charCodeAt(i);
      if (c >= 0xD800 && c <= 0xDBFF && i + 1 < text.length) {
        var lo = text.charCodeAt(i + 1);
        if (lo >= 0xDC00 && lo <= 0xDFFF) i++;
      }
      at.push(i + 1);
    }
    var end = at.length - 1;
    return spans.map(function (s) { return [at[Math.min(s[0], end)], at[Math.min(s[1], end)]]; });
  }

  // A level: labels, flags, spans into the text (UTF-16 units), and (word level) each token's unit.
  Explorer.prototype.level = function () {
    var name = this.state.level, lv = this.levels[name], d = this.data;
    if (lv) return lv;
    if (!this.spans) this.spans = utf16Spans(d.text, d.spans);
    var spans = this.spans;
    if (name === "word") {
      var w = d.words, U = w.tokens.length, count = new Float32Array(U), wspans = [];
      for (var u = 0; u < U; u++) wspans.push(null);
      w.unit.forEach(function (u, i) {
        count[u] += 1;
        var s = spans[i];
        if (s && !(s[0] === 0 && s[1] === 0)) wspans[u] = wspans[u] ? [wspans[u][0], s[1]] : [s[0], s[1]];
      });
      lv = { tokens: w.tokens, special: w.special, n: U, unit: w.unit, count: count,
        spans: wspans.map(function (s) { return s || [0, 0]; }) };
    } else {
      lv = { tokens: d.tokens, special: d.special, n: d.n, spans: spans };
    }
    lv.heads = new Map();
    this.levels[name] = lv;
    return lv;
  };

  // One head of the current level, [n][n] as a Float32Array; null while a served head loads.
  Explorer.prototype.head = function (layer, head) {
    var lv = this.level(), tok = this.store.head(layer, head);
    if (!tok) { this.need(layer, head); return null; }
    if (!lv.unit) return tok;
    var key = layer + "," + head, hit = lv.heads.get(key);
    if (hit) return hit;
    var n = this.data.n, U = lv.n, unit = lv.unit, out = new Float32Array(U * U);
    for (var q = 0; q < n; q++) {
      var row = unit[q] * U, base = q * n;
      for (var k = 0; k < n; k++) out[row + unit[k]] += tok[base + k];
    }
    for (var u = 0; u < U; u++) for (var v = 0; v < U; v++) out[u * U + v] /= lv.count[u];
    lv.heads.set(key, out);
    if (lv.heads.size > CACHE_HEADS) lv.heads.delete(lv.heads.keys().next().value);
    return out;
  };
  // Ask for a head a view needs now (a served long text), and draw again once it is there.
  Explorer.prototype.need = function (layer, head) {
    this.want(layer, head, false);
  };
  // The rest of the shown layer, in the background: the head view and a change of head are then at hand.
  Explorer.prototype.prefetch = function () {
    var self = this, layer = this.state.layer;
    if (this.store.block || !this.store.fetchHead) return;
    this.data.heads.forEach(function (_, h) { self.want(layer, h, true); });
  };
  Explorer.prototype.want = function (layer, head, background) {
    var self = this, key = layer + "," + head;
    if (this.store.has(layer, head) || !this.store.fetchHead) return;
    var first = !this.store.pending[key];
    var job = this.store.load(layer, head, background);
    if (!first) return; // already asked for: its promise draws (and load() moved it up if now wanted)
    job.then(function () { if (!self.store.stopped && self.shows(layer, head)) self.render(); },
      function (e) { if (!self.store.stopped && self.shows(layer, head)) self.fail(e); });
  };
  // Whether the view on screen draws head (layer, head).
  Explorer.prototype.shows = function (layer, head) {
    var st = this.state;
    return st.layer === layer && (viewSpec(st.view).name === "head" || st.head === head);
  };
  Explorer.prototype.fail = function (e) {
    this.body.textContent = "";
    this.body.appendChild(el("div", "av-error", e && e.message ? e.message : String(e)));
  };

  // The shown tokens (special ones dropped when hidden) and one head's [q][k] rows for them,
  // renormalised so each row still sums to 1; masked: causal and key after query.
  Explorer.prototype.shown = function () {
    var lv = this.level(), keep = [];
    for (var i = 0; i < lv.n; i++) if (!(this.state.hideSpecial && lv.special[i])) keep.push(i);
    return { lv: lv, keep: keep, labels: keep.map(function (i) { return lv.tokens[i]; }),
      names: keep.map(function (i) { return lv.tokens[i] + "#" + i; }) };
  };
  Explorer.prototype.matrix = function (layer, head, sh) {
    sh = sh || this.shown();
    var w = this.head(layer, head);
    if (!w) return null;
    var n = sh.lv.n, keep = sh.keep, m = keep.length;
    if (m === n) return w;
    var out = new Float32Array(m * m);
    for (var a = 0; a < m; a++) {
      var sum = 0, base = keep[a] * n;
      for (var b = 0; b < m; b++) { var v = w[base + keep[b]]; out[a * m + b] = v; sum += v; }
      if (sum > 0) for (b = 0; b < m; b++) out[a * m + b] /= sum;
    }
    return out;
  };
  Explorer.prototype.masked = function (sh, a, b) {
    return this.data.causal && sh.keep[b] > sh.keep[a];
  };

  // The key column the auto scale leaves out: the first key of a causal model, or a first
  // [CLS]/BOS key that holds the largest weight.
  Explorer.prototype.sink = function (mats, sh) {
    var m = sh.keep.length;
    if (m < 2) return null;
    if (this.data.causal) return 0;
    if (!sh.lv.special[sh.keep[0]]) return null;
    for (var i = 0; i < mats.length; i++) {
      var mat = mats[i], top = 0, col = 0;
      for (var j = 0; j < mat.length; j++) if (mat[j] > top) top = mat[j];
      for (var a = 0; a < m; a++) if (mat[a * m] > col) col = mat[a * m];
      if (top > 0 && col >= top) return 0;
    }
    return null;
  };
  // {top, log, vmin, sink, sinkTop, t(v) -> 0..1}: auto, max, log, or a fixed number.
  Explorer.prototype.scaleOf = function (mats, sh, rows) {
    var m = sh.keep.length, mode = this.state.scale, top = 0, rest = 0, causal = this.data.causal;
    var sink = mode === "auto" ? this.sink(mats, sh) : null;
    mats.forEach(function (mat) { // shown tokens keep their order: key b is masked for a when b > a
      for (var a = 0; a < m; a++) {
        if (rows && rows.indexOf(a) < 0) continue;
        for (var b = 0, end = causal ? a + 1 : m, base = a * m; b < end; b++) {
          var v = mat[base + b];
          if (v > top) top = v;
          if (v > rest && b !== sink) rest = v;
        }
      }
    });
    var sc = { top: top > 0 ? top : 1, log: false, sink: null };
    if (mode === "log") { sc.log = true; sc.vmin = sc.top * LOG_RANGE; }
    else if (!isNaN(parseFloat(mode)) && mode !== "max" && mode !== "auto") sc.top = parseFloat(mode);
    else if (sink !== null && rest > 0 && rest < top) { sc.top = rest; sc.sink = sink; sc.sinkTop = top; }
    var lo = sc.log ? Math.log(sc.vmin) : 0, span = sc.log ? Math.log(sc.top) - lo : sc.top;
    sc.t = sc.log ? function (v) { return v <= sc.vmin ? 0 : Math.min(1, (Math.log(v) - lo) / span); }
      : function (v) { return Math.min(1, v / span); };
    return sc;
  };

  Explorer.prototype.build = function () {
    var self = this, d = this.data, st = this.state;
    var title = el("div", "av-title", d.model + " \u00b7 " + (d.kind || "") + (d.causal ? " (causal)" : "") +
      " \u00b7 " + d.n + " tokens");
    this.root.appendChild(title);
    if (d.note) this.root.appendChild(el("div", "av-note", d.note));
    var bar = el("div", "av-bar");
    var tabs = el("span", "av-tabs");
    this.tabs = {};
    VIEWS.forEach(function (v) {
      var b = el("button", "", v.label);
      b.type = "button";
      b.setAttribute("data-view", v.name);
      b.addEventListener("click", function () { self.set({ view: v.name }); });
      tabs.appendChild(b);
      self.tabs[v.name] = b;
    });
    bar.appendChild(tabs);
    this.layerSel = this.picker(bar, "Layer ", "av-layer", d.layers, "layer");
    this.headSel = this.picker(bar, "Head ", "av-head", d.heads, "head");
    this.headLabel = this.headSel.parentNode;
    if (d.words) {
      this.wordBox = this.checkbox(bar, "av-words", " words", st.level === "word", function (on) {
        self.set({ level: on ? "word" : "token", hover: null, focus: null, zoom: null });
      });
    }
    this.specialBox = this.checkbox(bar, "av-special", " hide special tokens", false, function (on) {
      self.set({ hideSpecial: on, hover: null, focus: null, zoom: null });
    });
    var lab = el("label", "", "Colour scale ");
    this.scaleSel = el("select", "av-scale");
    var scales = [["auto", "auto (sink left out)"], ["max", "largest weight"], ["log", "log"], ["1", "0-1"]];
    if (!scales.some(function (s) { return s[0] === st.scale; })) scales.push([st.scale, "0-" + st.scale]);
    scales.forEach(function (s) { var o = el("option", "", s[1]); o.value = s[0]; self.scaleSel.appendChild(o); });
    this.scaleSel.value = st.scale;
    this.scaleSel.addEventListener("change", function () { self.set({ scale: self.scaleSel.value }); });
    lab.appendChild(this.scaleSel);
    bar.appendChild(lab);
    this.root.appendChild(bar);

    this.headBar = el("div", "av-heads");
    this.headButtons = d.heads.map(function (h, i) {
      var b = el("button", "", h);
      b.type = "button";
      b.title = "head " + h + " (double-click: only this head)";
      b.style.background = headColour(i);
      b.setAttribute("data-head", i);
      b.addEventListener("click", function () {
        var heads = st.heads.slice(); heads[i] = !heads[i]; self.set({ heads: heads });
      });
      b.addEventListener("dblclick", function () {
        self.set({ heads: st.heads.map(function (_, j) { return j === i; }) });
      });
      self.headBar.appendChild(b);
      return b;
    });
    this.root.appendChild(this.headBar);
    this.body = el("div", "av-body");
    this.root.appendChild(this.body);
    this.tip = el("div", "av-tip");
    this.root.appendChild(this.tip);
  };
  Explorer.prototype.picker = function (bar, text, cls, values, key) {
    var self = this, lab = el("label", "", text), sel = el("select", cls);
    values.forEach(function (v, i) { var o = el("option", "", v); o.value = i; sel.appendChild(o); });
    sel.addEventListener("change", function () { var c = {}; c[key] = +sel.value; self.set(c); });
    lab.appendChild(sel);
    bar.appendChild(lab);
    return sel;
  };
  Explorer.prototype.checkbox = function (bar, cls, text, checked, change) {
    var lab = el("label", ""), box = el("input", cls);
    box.type = "checkbox";
    box.checked = checked;
    box.addEventListener("change", function () { change(box.checked); });
    lab.appendChild(box);
    lab.appendChild(document.createTextNode(text));
    bar.appendChild(lab);
    return box;
  };

  Explorer.prototype.set = function (change) {
    for (var k in change) this.state[k] = change[k];
    this.render();
  };

  // Select one head and show it in the matrix view (used by thumbnails and find-head rows).
  Explorer.prototype.select = function (layer, head) {
    var li = this.data.layers.indexOf(layer), hi = this.data.heads.indexOf(head);
    if (li < 0 || hi < 0) return false;
    this.set({ view: "matrix", layer: li, head: hi });
    return true;
  };

  Explorer.prototype.render = function () {
    var st = this.state, self = this, spec = viewSpec(st.view);
    st.view = spec.name;
    Object.keys(this.tabs).forEach(function (v) { self.tabs[v].setAttribute("aria-pressed", String(v === st.view)); });
    this.layerSel.value = st.layer;
    this.headSel.value = st.head;
    this.headLabel.style.display = spec.head ? "" : "none";
    this.headBar.style.display = spec.name === "head" ? "" : "none";
    this.headButtons.forEach(function (b, i) { b.setAttribute("aria-pressed", String(st.heads[i])); });
    if (this.cleanup) { this.cleanup(); this.cleanup = null; }
    this.body.textContent = "";
    this.tip.style.display = "none";
    this.root.setAttribute("data-level", st.level);
    this.root.setAttribute("data-layer", this.data.layers[st.layer]);
    this.root.setAttribute("data-head", this.data.heads[st.head]);
    spec.render(this);
    this.prefetch();
    if (!this.root.hasAttribute("data-drawn-at")) { // ms since the page started: for benchmarks/browser.py
      this.root.setAttribute("data-drawn-at", performance.now().toFixed(1));
    }
    this.root.setAttribute("data-view", st.view);
    this.root.setAttribute("data-rendered", String((+this.root.getAttribute("data-rendered") || 0) + 1));
  };
  Explorer.prototype.loading = function (layer, head) {
    this.body.appendChild(el("div", "av-note av-loading", "loading layer " + this.data.layers[layer] +
      ", head " + this.data.heads[head] + "\u2026"));
  };
  Explorer.prototype.showTip = function (text, ev) {
    this.tip.textContent = text;
    this.tip.style.left = ev.clientX + 12 + "px"; this.tip.style.top = ev.clientY + 12 + "px";
    this.tip.style.display = "block";
  };

  // -- head view: two columns of tokens, a line per (query, key, head) with opacity = weight ----
  function renderHead(ex) {
    var st = ex.state, sh = ex.shown(), m = sh.keep.length;
    var rowH = 20, width = 420, top = 10, left = 150, right = width - 150;
    var mats = [], missing = [];
    st.heads.forEach(function (on, h) { // a served long text: the heads loaded so far, the others asked for
      if (!on) return;
      var mat = ex.matrix(st.layer, h, sh);
      if (mat) mats.push([h, mat]); else missing.push(h);
    });
    if (missing.length && !mats.length) { ex.loading(st.layer, missing[0]); return; }
    var box = el("div", "av-main");
    var s = svg("svg", { width: width, height: top * 2 + m * rowH, class: "av-headview" });
    var lines = svg("g", { class: "av-lines" });
    s.appendChild(lines);
    // A long text draws the strongest lines, and a hovered token's lines: every line of 500 tokens
    // is too many to move.
    var dense = m > DENSE_HEAD_VIEW, sink = ex.data.causal || sh.lv.special[sh.keep[0]] ? 0 : -1;
    function line(h, a, b, w) {
      lines.appendChild(svg("line", {
        x1: left, y1: top + a * rowH + rowH / 2, x2: right, y2: top + b * rowH + rowH / 2,
        stroke: headColour(h), "stroke-width": 1.5, "stroke-opacity": Math.min(1, w).toFixed(3),
        "data-q": a, "data-k": b, "data-head": ex.data.heads[h], "data-w": w.toFixed(4),
      }));
    }
    // Each query's strongest key in each head (the first key, a sink, left out), the strongest
    // STRONGEST_LINES per token of those.
    var strong = null; // computed once a drawing: leaving a token draws them again
    function strongest() {
      if (strong) return strong;
      var best = [];
      mats.forEach(function (hm) {
        var mat = hm[1];
        for (var a = 0; a < m; a++) {
          var most = -1, at = -1;
          for (var b = 0; b < m; b++) {
            var w = mat[a * m + b];
            if (b !== sink && w > most && !ex.masked(sh, a, b)) { most = w; at = b; }
          }
          if (at >= 0 && most >= MIN_LINE) best.push([most, hm[0], a, at]);
        }
      });
      best.sort(function (x, y) { return y[0] - x[0]; });
      strong = best.slice(0, STRONGEST_LINES * m);
      return strong;
    }
    function draw(col, i) {
      lines.textContent = "";
      if (dense && i === null) {
        strongest().forEach(function (x) { line(x[1], x[2], x[3], x[0]); });
        s.setAttribute("data-lines", "strongest");
        return;
      }
      s.setAttribute("data-lines", dense ? "hovered" : "all");
      mats.forEach(function (hm) {
        var h = hm[0], mat = hm[1];
        for (var a = 0; a < m; a++) {
          if (dense && !(col === "q" && a === i) && col !== "k") continue;
          for (var b = 0; b < m; b++) {
            if (dense && col === "k" && b !== i) continue;
            var w = mat[a * m + b];
            if (w < MIN_LINE || ex.masked(sh, a, b)) continue;
            line(h, a, b, w);
          }
        }
      });
    }
    draw(null, null);
    var side = el("div", "av-side");
    side.appendChild(el("div", "av-note", "Hover a token: its lines and top keys. Click a coloured head to toggle it." +
      (dense ? " (" + m + " tokens: each token's strongest key, the first key left out, in the " +
        STRONGEST_LINES * m + " strongest lines; a hovered token's lines are all drawn.)" : "")));
    if (missing.length) {
      side.appendChild(el("div", "av-note av-loading", "loading " + missing.length + " more head" +
        (missing.length > 1 ? "s" : "") + " of layer " + ex.data.layers[st.layer] + "\u2026"));
    }
    var panel = el("div", "av-top");
    side.appendChild(panel);
    function hover(col, i) {
      ex.hovered = i === null ? null : [st.layer, st.level, st.hideSpecial, col, i];
      if (dense) draw(col, i);
      var all = lines.childNodes;
      for (var j = 0; j < all.length; j++) {
        var ln = all[j], show = i === null || +ln.getAttribute(col === "q" ? "data-q" : "data-k") === i;
        ln.style.display = show ? "" : "none";
      }
      var toks = s.querySelectorAll("text.av-tok");
      for (j = 0; j < toks.length; j++) toks[j].classList.toggle("av-on", i !== null &&
        toks[j].getAttribute("data-col") === col && +toks[j].getAttribute("data-i") === i);
      panel.textContent = "";
      s.setAttribute("data-hover", i === null ? "" : col + i);
      if (i === null || col !== "q") return;
      panel.appendChild(el("div", "av-title", "\u201c" + sh.names[i] + "\u201d attends to"));
      var tab = el("table", "av-topkeys");
      mats.forEach(function (hm) {
        var row = [];
        for (var b = 0; b < m; b++) if (!ex.masked(sh, i, b)) row.push([hm[1][i * m + b], b]);
        row.sort(function (x, y) { return y[0] - x[0]; });
        var tr = el("tr"), td = el("td", "", "H" + ex.data.heads[hm[0]]);
        td.style.color = headColour(hm[0]);
        tr.appendChild(td);
        tab.appendChild(tr);
        row.slice(0, 3).forEach(function (x) {
          var r = el("tr");
          r.appendChild(el("td", "", ""));
          r.appendChild(el("td", "av-key", sh.names[x[1]]));
          r.appendChild(el("td", "av-w", fmt(x[0])));
          tab.appendChild(r);
        });
      });
      panel.appendChild(tab);
    }
    ["q", "k"].forEach(function (col) {
      for (var i = 0; i < m; i++) {
        var t = svg("text", {
          x: col === "q" ? left - 6 : right + 6, y: top + i * rowH + rowH / 2 + 4,
          "text-anchor": col === "q" ? "end" : "start", class: "av-tok", "data-col": col, "data-i": i,
          "font-size": 13,
        });
        t.textContent = sh.labels[i];
        (function (idx) {
          t.addEventListener("mouseenter", function () { hover(col, idx); });
          t.addEventListener("mouseleave", function () { hover(col, null); });
        })(i);
        s.appendChild(t);
      }
    });
    box.appendChild(s);
    box.appendChild(side);
    ex.body.appendChild(box);
    ex.hover = hover;
    var was = ex.hovered; // drawn again as heads arrive: the hovered token stays hovered
    if (was && was[0] === st.layer && was[1] === st.level && was[2] === st.hideSpecial && was[4] < m) {
      hover(was[3], was[4]);
    }
  }
  addView({ name: "head", label: "Head view", head: false, render: renderHead });

  var api = {
    Explorer: Explorer, decodeHalf: decodeHalf, utf16Spans: utf16Spans, el: el, svg: svg, colour: colour, LUT: LUT, fmt: fmt,
    MASKED: MASKED, addView: addView, views: VIEWS, mounted: [],
  };
  // Mount an explorer; `options.fetchHead(layer, head)` -> Promise of one head's encoded weights,
  // for data sent without weights (a served long text). Resolves once the first view is drawn.
  api.mount = function (root, data, options) {
    if (root.attnviz) root.attnviz.store.stop(); // the explorer it replaces fetches nothing more
    var ex = new Explorer(root, data, options);
    api.mounted.push(ex);
    return ex;
  };
  window.AttnViz = api;

  // A page written by `attnviz view` carries its data in a JSON script element; every view file
  // has registered by DOMContentLoaded.
  var node = document.getElementById("attnviz-data");
  if (node) {
    var start = function () {
      api.mount(document.getElementById("attnviz-root"), JSON.parse(node.textContent)).ready
        .catch(function (e) { document.getElementById("attnviz-root").textContent = "error: " + e; });
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else setTimeout(start, 0);
  }
})();
