/* attnviz explorer: head view, matrix view, model view. Hand-written, no framework, no network.
 * Every text that comes from the data (tokens, model name, text) goes in with textContent or
 * as an SVG/canvas text value, never parsed as markup. */
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
  function colour(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    var i = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return "rgb(" + Math.round(a[0] + f * (b[0] - a[0])) + "," + Math.round(a[1] + f * (b[1] - a[1])) +
      "," + Math.round(a[2] + f * (b[2] - a[2])) + ")";
  }
  function headColour(h) { return HEAD_COLOURS[h % HEAD_COLOURS.length]; }
  function fmt(w) { return w.toFixed(3); }

  // float16 (little-endian, base64) -> Float32Array
  function decodeHalf(b64) {
    var bin = atob(b64), n = bin.length >> 1, out = new Float32Array(n);
    for (var i = 0; i < n; i++) {
      var h = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
      var s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
      out[i] = e === 0 ? s * m * Math.pow(2, -24) : e === 31 ? (m ? NaN : s * Infinity) :
        s * (1 + m / 1024) * Math.pow(2, e - 15);
    }
    return out;
  }

  function Explorer(root, data, options) {
    this.root = root;
    this.data = data;
    this.options = options || {};
    this.levels = {};
    var first = data.level in data.levels ? data.level : Object.keys(data.levels)[0];
    this.state = {
      view: this.options.view || data.view || "head", level: first, layer: 0, head: 0,
      heads: data.heads.map(function () { return true; }),
      hideSpecial: false, scale: data.scale === "1" ? "1" : "auto", hover: null,
    };
    root.classList.add("av");
    root.textContent = "";
    root.attnviz = this;
    this.build();
    this.render();
  }

  Explorer.prototype.level = function () {
    var name = this.state.level, lv = this.levels[name];
    if (!lv) {
      var src = this.data.levels[name];
      lv = { tokens: src.tokens, special: src.special, n: src.tokens.length, w: decodeHalf(src.weights) };
      this.levels[name] = lv;
    }
    return lv;
  };

  // The shown tokens (special ones dropped when hidden) and one head's [q][k] rows for them,
  // renormalised so each row still sums to 1; masked: causal and key after query.
  Explorer.prototype.shown = function () {
    var lv = this.level(), keep = [];
    for (var i = 0; i < lv.n; i++) if (!(this.state.hideSpecial && lv.special[i])) keep.push(i);
    return { lv: lv, keep: keep, labels: keep.map(function (i) { return lv.tokens[i]; }) };
  };
  Explorer.prototype.matrix = function (layer, head, sh) {
    sh = sh || this.shown();
    var lv = sh.lv, n = lv.n, keep = sh.keep, m = keep.length, H = this.data.heads.length;
    var base = (layer * H + head) * n * n, out = new Float32Array(m * m);
    for (var a = 0; a < m; a++) {
      var sum = 0;
      for (var b = 0; b < m; b++) { var v = lv.w[base + keep[a] * n + keep[b]]; out[a * m + b] = v; sum += v; }
      if (this.state.hideSpecial && sum > 0) for (b = 0; b < m; b++) out[a * m + b] /= sum;
    }
    return out;
  };
  Explorer.prototype.masked = function (sh, a, b) {
    return this.data.causal && sh.keep[b] > sh.keep[a];
  };
  Explorer.prototype.vmax = function (mat, sh) {
    if (this.state.scale === "1") return 1;
    var m = sh.keep.length, top = 0;
    for (var a = 0; a < m; a++) for (var b = 0; b < m; b++)
      if (!this.masked(sh, a, b) && mat[a * m + b] > top) top = mat[a * m + b];
    return top > 0 ? top : 1;
  };

  Explorer.prototype.build = function () {
    var self = this, d = this.data, st = this.state;
    var title = el("div", "av-title", d.model + " \u00b7 " + (d.kind || "") + (d.causal ? " (causal)" : ""));
    this.root.appendChild(title);
    if (d.note) this.root.appendChild(el("div", "av-note", d.note));
    var bar = el("div", "av-bar");
    var tabs = el("span", "av-tabs");
    this.tabs = {};
    [["head", "Head view"], ["matrix", "Matrix view"], ["model", "Model view"]].forEach(function (t) {
      var b = el("button", "", t[1]);
      b.type = "button";
      b.setAttribute("data-view", t[0]);
      b.addEventListener("click", function () { self.set({ view: t[0] }); });
      tabs.appendChild(b);
      self.tabs[t[0]] = b;
    });
    bar.appendChild(tabs);

    var lab = el("label", "", "Layer ");
    this.layerSel = el("select", "av-layer");
    d.layers.forEach(function (l, i) { var o = el("option", "", l); o.value = i; self.layerSel.appendChild(o); });
    this.layerSel.addEventListener("change", function () { self.set({ layer: +self.layerSel.value }); });
    lab.appendChild(this.layerSel);
    bar.appendChild(lab);

    lab = el("label", "", "Head ");
    this.headSel = el("select", "av-head");
    d.heads.forEach(function (h, i) { var o = el("option", "", h); o.value = i; self.headSel.appendChild(o); });
    this.headSel.addEventListener("change", function () { self.set({ head: +self.headSel.value }); });
    lab.appendChild(this.headSel);
    this.headLabel = lab;
    bar.appendChild(lab);

    if (d.levels.word) {
      lab = el("label", "");
      this.wordBox = el("input", "av-words");
      this.wordBox.type = "checkbox";
      this.wordBox.checked = st.level === "word";
      this.wordBox.addEventListener("change", function () {
        self.set({ level: self.wordBox.checked ? "word" : "token", hover: null });
      });
      lab.appendChild(this.wordBox);
      lab.appendChild(document.createTextNode(" words"));
      bar.appendChild(lab);
    }
    lab = el("label", "");
    this.specialBox = el("input", "av-special");
    this.specialBox.type = "checkbox";
    this.specialBox.addEventListener("change", function () {
      self.set({ hideSpecial: self.specialBox.checked, hover: null });
    });
    lab.appendChild(this.specialBox);
    lab.appendChild(document.createTextNode(" hide special tokens"));
    bar.appendChild(lab);

    lab = el("label", "", "Colour scale ");
    this.scaleSel = el("select", "av-scale");
    [["auto", "auto (largest shown)"], ["1", "0-1"]].forEach(function (s) {
      var o = el("option", "", s[1]); o.value = s[0]; self.scaleSel.appendChild(o);
    });
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
    var st = this.state, self = this;
    Object.keys(this.tabs).forEach(function (v) { self.tabs[v].setAttribute("aria-pressed", String(v === st.view)); });
    this.layerSel.value = st.layer;
    this.headSel.value = st.head;
    this.headLabel.style.display = st.view === "matrix" ? "" : "none";
    this.headBar.style.display = st.view === "head" ? "" : "none";
    this.headButtons.forEach(function (b, i) { b.setAttribute("aria-pressed", String(st.heads[i])); });
    this.body.textContent = "";
    this.tip.style.display = "none";
    this.root.setAttribute("data-view", st.view);
    this.root.setAttribute("data-level", st.level);
    this.root.setAttribute("data-layer", this.data.layers[st.layer]);
    this.root.setAttribute("data-head", this.data.heads[st.head]);
    if (st.view === "head") this.renderHead();
    else if (st.view === "matrix") this.renderMatrix();
    else this.renderModel();
  };

  // -- head view: two columns of tokens, a line per (query, key, head) with opacity = weight ----
  Explorer.prototype.renderHead = function () {
    var self = this, st = this.state, sh = this.shown(), m = sh.keep.length;
    var rowH = 20, width = 420, top = 10, left = 150, right = width - 150;
    var box = el("div", "av-main");
    var s = svg("svg", { width: width, height: top * 2 + m * rowH, class: "av-headview" });
    var lines = svg("g", { class: "av-lines" });
    s.appendChild(lines);
    var mats = [];
    st.heads.forEach(function (on, h) { if (on) mats.push([h, self.matrix(st.layer, h, sh)]); });
    mats.forEach(function (hm) {
      var h = hm[0], mat = hm[1];
      for (var a = 0; a < m; a++) for (var b = 0; b < m; b++) {
        var w = mat[a * m + b];
        if (w < MIN_LINE || self.masked(sh, a, b)) continue;
        lines.appendChild(svg("line", {
          x1: left, y1: top + a * rowH + rowH / 2, x2: right, y2: top + b * rowH + rowH / 2,
          stroke: headColour(h), "stroke-width": 1.5, "stroke-opacity": Math.min(1, w).toFixed(3),
          "data-q": a, "data-k": b, "data-head": self.data.heads[h], "data-w": w.toFixed(4),
        }));
      }
    });
    var side = el("div", "av-side");
    var hint = el("div", "av-note", "Hover a token: its lines and top keys. Click a coloured head to toggle it.");
    side.appendChild(hint);
    var panel = el("div", "av-top");
    side.appendChild(panel);
    function hover(col, i) {
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
      panel.appendChild(el("div", "av-title", "\u201c" + sh.labels[i] + "\u201d attends to"));
      var tab = el("table", "av-topkeys");
      mats.forEach(function (hm) {
        var row = [];
        for (var b = 0; b < m; b++) if (!self.masked(sh, i, b)) row.push([hm[1][i * m + b], b]);
        row.sort(function (x, y) { return y[0] - x[0]; });
        var tr = el("tr");
        var td = el("td", "", "H" + self.data.heads[hm[0]]);
        td.style.color = headColour(hm[0]);
        tr.appendChild(td);
        tab.appendChild(tr);
        row.slice(0, 3).forEach(function (x) {
          var r = el("tr");
          r.appendChild(el("td", "", ""));
          r.appendChild(el("td", "av-key", sh.labels[x[1]]));
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
    this.body.appendChild(box);
    this.hover = hover;
  };

  // -- matrix view: one head's heatmap on a canvas, labels as text, value on hover --------------
  Explorer.prototype.cellSize = function (m) { return Math.max(2, Math.min(28, Math.floor(560 / Math.max(m, 1)))); };

  Explorer.prototype.paint = function (canvas, mat, sh, cs, vmax) {
    var m = sh.keep.length, ctx = canvas.getContext("2d");
    canvas.width = m * cs; canvas.height = m * cs;
    for (var a = 0; a < m; a++) for (var b = 0; b < m; b++) {
      if (this.masked(sh, a, b)) {
        ctx.fillStyle = MASKED;
        ctx.fillRect(b * cs, a * cs, cs, cs);
        if (cs >= 6) {
          ctx.strokeStyle = "#aaaaaa"; ctx.beginPath();
          ctx.moveTo(b * cs, (a + 1) * cs); ctx.lineTo((b + 1) * cs, a * cs); ctx.stroke();
        }
      } else {
        ctx.fillStyle = colour(mat[a * m + b] / vmax);
        ctx.fillRect(b * cs, a * cs, cs, cs);
      }
    }
  };

  Explorer.prototype.renderMatrix = function () {
    var self = this, st = this.state, sh = this.shown(), m = sh.keep.length;
    var mat = this.matrix(st.layer, st.head, sh), vmax = this.vmax(mat, sh), cs = this.cellSize(m);
    var d = this.data;
    this.body.appendChild(el("div", "av-title", "Layer " + d.layers[st.layer] + ", head " + d.heads[st.head] +
      " \u00b7 rows: query (attending from), columns: key (attending to)"));
    var grid = el("div", "av-grid");
    var font = Math.min(13, Math.max(cs - 2, 0));
    grid.appendChild(el("div"));
    var cols = el("div", "av-cols");
    var rows = el("div", "av-rows");
    sh.labels.forEach(function (t) {
      var c = el("div", "", t), r = el("div", "", t);
      c.style.width = cs + "px"; c.style.maxHeight = "120px"; c.style.fontSize = font + "px";
      c.style.lineHeight = cs + "px";
      r.style.height = cs + "px"; r.style.maxWidth = "160px"; r.style.fontSize = font + "px";
      r.style.lineHeight = cs + "px";
      if (font < 6) { c.style.visibility = "hidden"; r.style.visibility = "hidden"; }
      cols.appendChild(c); rows.appendChild(r);
    });
    grid.appendChild(cols);
    grid.appendChild(rows);
    var canvas = el("canvas", "av-matrix");
    this.paint(canvas, mat, sh, cs, vmax);
    canvas.setAttribute("data-cells", m * m);
    canvas.setAttribute("data-cell", cs);
    canvas.setAttribute("data-vmax", vmax.toFixed(4));
    canvas.addEventListener("mousemove", function (ev) {
      var r = canvas.getBoundingClientRect();
      var b = Math.floor((ev.clientX - r.left) / cs), a = Math.floor((ev.clientY - r.top) / cs);
      if (a < 0 || b < 0 || a >= m || b >= m) { self.tip.style.display = "none"; return; }
      self.tip.textContent = sh.labels[a] + " \u2192 " + sh.labels[b] + ": " +
        (self.masked(sh, a, b) ? "masked (future token)" : fmt(mat[a * m + b]));
      self.tip.style.left = ev.clientX + 12 + "px"; self.tip.style.top = ev.clientY + 12 + "px";
      self.tip.style.display = "block";
    });
    canvas.addEventListener("mouseleave", function () { self.tip.style.display = "none"; });
    grid.appendChild(canvas);
    this.body.appendChild(grid);
    this.body.appendChild(this.legend(vmax));
  };

  Explorer.prototype.legend = function (vmax) {
    var box = el("div", "av-legend"), c = el("canvas"), ctx = c.getContext("2d");
    c.width = 160; c.height = 10;
    for (var x = 0; x < 160; x++) { ctx.fillStyle = colour(x / 159); ctx.fillRect(x, 0, 1, 10); }
    box.appendChild(el("span", "", "0"));
    box.appendChild(c);
    box.appendChild(el("span", "", fmt(vmax)));
    if (this.data.causal) {
      var sw = el("span", "", "\u00a0\u00a0\u00a0\u00a0");
      sw.style.background = MASKED;
      box.appendChild(sw);
      box.appendChild(el("span", "", "masked: future token"));
    }
    return box;
  };

  // -- model view: layers x heads thumbnails; a click opens the head in the matrix view --------
  Explorer.prototype.renderModel = function () {
    var self = this, d = this.data, sh = this.shown(), m = sh.keep.length;
    var cs = Math.max(1, Math.floor(64 / Math.max(m, 1)));
    var grid = el("div", "av-thumbs");
    grid.style.gridTemplateColumns = "repeat(" + d.heads.length + ", auto)";
    d.layers.forEach(function (l, li) {
      d.heads.forEach(function (h, hi) {
        var cell = el("div", "av-thumb");
        cell.setAttribute("data-layer", l);
        cell.setAttribute("data-head", h);
        var c = el("canvas");
        var mat = self.matrix(li, hi, sh);
        self.paint(c, mat, sh, cs, self.vmax(mat, sh));
        cell.appendChild(c);
        cell.appendChild(el("div", "", "L" + l + " H" + h));
        cell.title = "layer " + l + ", head " + h + ": open in the matrix view";
        cell.addEventListener("click", function () { self.select(l, h); });
        grid.appendChild(cell);
      });
    });
    this.body.appendChild(el("div", "av-note", "Layers (rows) x heads (columns); click one to open it."));
    this.body.appendChild(grid);
  };

  var api = { Explorer: Explorer, decodeHalf: decodeHalf, el: el, mounted: [] };
  api.mount = function (root, data, options) {
    var ex = new Explorer(root, data, options);
    api.mounted.push(ex);
    return ex;
  };
  window.AttnViz = api;

  // A page written by `attnviz view` carries its data in a JSON script element.
  var node = document.getElementById("attnviz-data");
  if (node) {
    var start = function () { api.mount(document.getElementById("attnviz-root"), JSON.parse(node.textContent)); };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
  }
})();
