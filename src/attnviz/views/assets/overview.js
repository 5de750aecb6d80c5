/* attnviz explorer, model view (every layer x head as a thumbnail of capped size, max-pooled so
 * stripes stay visible, drawn lazily as they scroll into sight) and text view (the text itself,
 * each token's background the attention it gets from, or gives to, a selected token). */
(function () {
  "use strict";
  var A = window.AttnViz, el = A.el, fmt = A.fmt;
  var THUMB = 64; // px: thumbnails are at most this wide
  var FRAME_MS = 12; // drawing thumbnails yields to the browser after this long

  function renderModel(ex) {
    var d = ex.data, sh = ex.shown(), m = sh.keep.length;
    var px = m <= THUMB ? m * Math.max(1, Math.floor(THUMB / Math.max(m, 1))) : THUMB;
    var grid = el("div", "av-thumbs"), queue = [], live = true, observer = null;
    if ("IntersectionObserver" in window) {
      observer = new IntersectionObserver(function (entries) {
        entries.forEach(function (e) {
          if (e.isIntersecting && !e.target.queued) { e.target.queued = true; queue.push(e.target.job); }
        });
        pump();
      }, { rootMargin: "200px" });
    }
    grid.style.gridTemplateColumns = "repeat(" + d.heads.length + ", auto)";
    d.layers.forEach(function (l, li) {
      d.heads.forEach(function (h, hi) {
        var cell = el("div", "av-thumb"), c = el("canvas");
        c.width = px; c.height = px;
        cell.setAttribute("data-layer", l);
        cell.setAttribute("data-head", h);
        cell.appendChild(c);
        cell.appendChild(el("div", "", "L" + l + " H" + h));
        cell.title = "layer " + l + ", head " + h + ": open in the matrix view";
        cell.addEventListener("click", function () { ex.select(l, h); });
        cell.job = [c, li, hi, cell];
        grid.appendChild(cell);
        if (observer) observer.observe(cell); else queue.push(cell.job);
      });
    });
    ex.body.appendChild(el("div", "av-note", "Layers (rows) x heads (columns), each on its own scale; " +
      (m > THUMB ? "blocks of tokens max-pooled to " + THUMB + " px; " : "") + "click one to open it."));
    ex.body.appendChild(grid);
    var running = false;
    function pump() {
      if (running || !live) return;
      running = true;
      requestAnimationFrame(function step() {
        var t0 = performance.now();
        while (queue.length && live && performance.now() - t0 < FRAME_MS) {
          var job = queue.shift(), mat = ex.store.has(job[1], job[2]) ? ex.matrix(job[1], job[2], sh) : null;
          if (!mat) { job[3].classList.add("av-unloaded"); continue; }
          A.paint(ex, job[0], mat, sh, ex.scaleOf([mat], sh), 0, 0, m, px);
          job[3].setAttribute("data-drawn", "1");
        }
        if (queue.length && live) requestAnimationFrame(step);
        else { running = false; ex.root.setAttribute("data-thumbs", String(grid.querySelectorAll("[data-drawn]").length)); }
      });
    }
    pump();
    ex.cleanup = function () { live = false; if (observer) observer.disconnect(); };
  }
  A.addView({ name: "model", label: "Model view", head: false, render: renderModel });

  // -- text view -----------------------------------------------------------------------------
  function renderText(ex) {
    var st = ex.state, sh = ex.shown(), m = sh.keep.length, lv = sh.lv, text = ex.data.text;
    var mat = ex.matrix(st.layer, st.head, sh);
    if (!mat) { ex.loading(st.layer, st.head); return; }
    var f = st.focus && st.focus.i < m ? st.focus : { axis: "q", i: firstWord(sh, ex.data.causal) };
    var vals = new Float32Array(m), rows = [];
    for (var j = 0; j < m; j++) {
      var a = f.axis === "q" ? f.i : j, b = f.axis === "q" ? j : f.i;
      vals[j] = ex.masked(sh, a, b) ? -1 : mat[a * m + b];
    }
    if (f.axis === "q") rows.push(f.i);
    var sc = ex.scaleOf([mat], sh, f.axis === "q" ? rows : null);
    var bar = el("div", "av-bar");
    var lab = el("label", "", "Colour each token by ");
    var sel = el("select", "av-axis");
    [["q", "the attention the selected token gives it"], ["k", "the attention it gives the selected token"]]
      .forEach(function (o) { var op = el("option", "", o[1]); op.value = o[0]; sel.appendChild(op); });
    sel.value = f.axis;
    sel.addEventListener("change", function () { ex.set({ focus: { axis: sel.value, i: f.i } }); });
    lab.appendChild(sel);
    bar.appendChild(lab);
    bar.appendChild(el("span", "av-note", "click a token to select it \u00b7 layer " + ex.data.layers[st.layer] +
      ", head " + ex.data.heads[st.head]));
    ex.body.appendChild(bar);
    var box = el("div", "av-textview"), prev = 0;
    box.setAttribute("data-axis", f.axis);
    box.setAttribute("data-i", f.i);
    sh.keep.forEach(function (i, j) {
      var span = lv.spans[i] || [0, 0], tok;
      if (span[1] > span[0] && span[0] >= prev) {
        if (span[0] > prev) box.appendChild(document.createTextNode(text.slice(prev, span[0])));
        tok = el("span", "av-t", text.slice(span[0], span[1]));
        prev = span[1];
      } else {
        tok = el("span", "av-t av-special-tok", lv.tokens[i]);
      }
      var v = vals[j];
      tok.setAttribute("data-j", j);
      tok.setAttribute("data-w", v < 0 ? "" : v.toFixed(4));
      if (v >= 0) tok.style.background = "rgba(255,140,0," + sc.t(v).toFixed(3) + ")";
      else tok.classList.add("av-masked");
      if (j === f.i) tok.classList.add("av-selected");
      tok.addEventListener("click", function () { ex.set({ focus: { axis: f.axis, i: j } }); });
      tok.addEventListener("mousemove", function (ev) {
        ex.showTip(sh.names[j] + ": " + (v < 0 ? "masked (future token)" : fmt(v)), ev);
      });
      tok.addEventListener("mouseleave", function () { ex.tip.style.display = "none"; });
      box.appendChild(tok);
    });
    ex.body.appendChild(box);
    var note = "selected: \u201c" + sh.names[f.i] + "\u201d \u00b7 darkest: " + fmt(sc.top) +
      (sc.log ? " (log scale)" : "");
    if (sc.sink !== null) note += " \u00b7 sink \u201c" + sh.names[sc.sink] + "\u201d (" + fmt(sc.sinkTop) + ") left out of the scale";
    ex.body.appendChild(el("div", "av-note av-text-legend", note));
  }
  // The token selected at first: the first word (an encoder), the last (a causal model sees all).
  function firstWord(sh, causal) {
    var m = sh.keep.length;
    for (var j = 0; j < m; j++) {
      var i = causal ? m - 1 - j : j;
      if (!sh.lv.special[sh.keep[i]]) return i;
    }
    return 0;
  }
  A.addView({ name: "text", label: "Text view", head: true, render: renderText });
})();
