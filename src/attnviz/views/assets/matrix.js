/* attnviz explorer, matrix view: one head on a canvas of capped size, zoom (wheel, buttons) and pan
 * (drag), labels with positions once cells are large enough, hover values, and a row or column
 * focus drawn as a bar chart. Blocks of cells smaller than a pixel are max-pooled, so stripes stay. */
(function () {
  "use strict";
  var A = window.AttnViz, el = A.el, LUT = A.LUT, fmt = A.fmt;
  var SIDE = 560; // px: the matrix canvas is at most this wide and high
  var LABEL_CELL = 9; // px: cells at least this large get token labels
  var MIN_SPAN = 8; // tokens: the deepest zoom
  var FOCUS_TOP = 20; // bars in the focus chart
  var MASKED_RGB = [217, 217, 217];

  // Paint rows r0.. and cols c0.. (span x span cells) of `mat` (m x m) into a px x px canvas.
  // A pixel covering several cells shows their maximum (rows pooled after columns, one pass each);
  // a block wholly in the causal future is grey. Shown tokens keep their order, so key b is in the
  // future of query a exactly when b > a.
  function paint(ex, canvas, mat, sh, sc, r0, c0, span, px) {
    var m = sh.keep.length, ctx = canvas.getContext("2d");
    canvas.width = px; canvas.height = px;
    if (!px) return;
    var img = ctx.createImageData(px, px), d = img.data, causal = ex.data.causal;
    var cell = px / span, lo = new Int32Array(px + 1), rows = Math.min(span, m - r0);
    for (var i = 0; i <= px; i++) lo[i] = Math.min(span, Math.floor(i / cell + 1e-9));
    var cols = new Float32Array(rows * px); // [row][pixel column]: the max over its block of keys
    for (var a = 0; a < rows; a++) {
      var base = (r0 + a) * m, out = a * px;
      for (var x = 0; x < px; x++) {
        var b0 = c0 + lo[x], b1 = Math.min(m, Math.max(b0 + 1, c0 + lo[x + 1])), top = 0;
        for (var b = b0; b < b1; b++) if (mat[base + b] > top) top = mat[base + b];
        cols[out + x] = top;
      }
    }
    var t = sc.t;
    for (var y = 0; y < px; y++) {
      var a0 = lo[y], a1 = Math.min(rows, Math.max(a0 + 1, lo[y + 1]));
      for (x = 0; x < px; x++) {
        var o = (y * px + x) * 4, first = c0 + lo[x];
        if (a0 >= rows || first >= m || (causal && first > r0 + a1 - 1)) {
          d[o] = MASKED_RGB[0]; d[o + 1] = MASKED_RGB[1]; d[o + 2] = MASKED_RGB[2]; d[o + 3] = 255;
          continue;
        }
        var v = 0;
        for (a = a0; a < a1; a++) if (cols[a * px + x] > v) v = cols[a * px + x];
        var k = Math.round(t(v) * 255) * 3;
        d[o] = LUT[k]; d[o + 1] = LUT[k + 1]; d[o + 2] = LUT[k + 2]; d[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    if (causal && cell >= 8) { // hatch masked cells, as the PNG pictures do
      ctx.strokeStyle = "#aaaaaa"; ctx.beginPath();
      for (a = 0; a < span && r0 + a < m; a++) for (b = 0; b < span && c0 + b < m; b++) {
        if (c0 + b <= r0 + a) continue;
        ctx.moveTo(b * cell, (a + 1) * cell); ctx.lineTo((b + 1) * cell, a * cell);
      }
      ctx.stroke();
    }
  }
  A.paint = paint;

  function legend(ex, sc, sh) {
    var box = el("div", "av-legend"), c = el("canvas"), ctx = c.getContext("2d");
    c.width = 160; c.height = 10;
    for (var x = 0; x < 160; x++) { ctx.fillStyle = A.colour(x / 159); ctx.fillRect(x, 0, 1, 10); }
    box.appendChild(el("span", "", sc.log ? sc.vmin.toPrecision(2) : "0"));
    box.appendChild(c);
    box.appendChild(el("span", "av-top-value", fmt(sc.top)));
    var what = sc.log ? "log scale" : ex.state.scale === "max" ? "top: largest weight" :
      ex.state.scale === "auto" ? "top: largest weight shown" : "fixed scale";
    box.appendChild(el("span", "", what));
    if (sc.sink !== null) {
      box.appendChild(el("span", "av-sink", "sink \u201c" + sh.names[sc.sink] + "\u201d left out of the scale (its " +
        "weights reach " + fmt(sc.sinkTop) + " and are drawn in the top colour)"));
    }
    if (ex.data.causal) {
      var sw = el("span", "", "\u00a0\u00a0\u00a0\u00a0");
      sw.style.background = A.MASKED;
      box.appendChild(sw);
      box.appendChild(el("span", "", "masked: future token"));
    }
    box.setAttribute("data-sink", sc.sink === null ? "" : sh.names[sc.sink]);
    return box;
  }
  A.legend = legend;

  // The focus: one query's weights (axis q) or who attends to one key (axis k), best first.
  function focusChart(ex, mat, sh) {
    var f = ex.state.focus, m = sh.keep.length, box = el("div", "av-focus");
    if (!f || f.i >= m) {
      box.appendChild(el("div", "av-note", "Click a row or column label (or a cell) for a bar chart of its weights."));
      return box;
    }
    var vals = [];
    for (var j = 0; j < m; j++) {
      var a = f.axis === "q" ? f.i : j, b = f.axis === "q" ? j : f.i;
      if (!ex.masked(sh, a, b)) vals.push([mat[a * m + b], j]);
    }
    vals.sort(function (x, y) { return y[0] - x[0]; });
    var top = vals.length ? vals[0][0] || 1 : 1;
    box.appendChild(el("div", "av-title", f.axis === "q" ? "\u201c" + sh.names[f.i] + "\u201d attends to" :
      "attending to \u201c" + sh.names[f.i] + "\u201d"));
    var tab = el("div", "av-bars");
    tab.setAttribute("data-axis", f.axis);
    tab.setAttribute("data-i", f.i);
    vals.slice(0, FOCUS_TOP).forEach(function (x) {
      var row = el("div", "av-barrow"), fill = el("span", "av-fill");
      row.appendChild(el("span", "av-barlabel", sh.names[x[1]]));
      fill.style.width = Math.max(1, Math.round(200 * x[0] / top)) + "px";
      row.appendChild(fill);
      row.appendChild(el("span", "av-w", fmt(x[0])));
      row.setAttribute("data-j", x[1]);
      row.addEventListener("click", function () { ex.set({ focus: { axis: f.axis, i: x[1] } }); });
      tab.appendChild(row);
    });
    box.appendChild(tab);
    if (vals.length > FOCUS_TOP) box.appendChild(el("div", "av-note", "the " + FOCUS_TOP + " largest of " + vals.length));
    return box;
  }

  function clampZoom(z, m) {
    var span = Math.max(Math.min(MIN_SPAN, m), Math.min(m, Math.round(z.span)));
    return { span: span, r0: Math.max(0, Math.min(m - span, Math.round(z.r0))),
      c0: Math.max(0, Math.min(m - span, Math.round(z.c0))) };
  }

  // Zoom to show `span` tokens from row r0 and column c0 (whole matrix: span = number of tokens).
  A.Explorer.prototype.zoomTo = function (r0, c0, span) {
    this.set({ zoom: clampZoom({ r0: r0, c0: c0, span: span }, this.shown().keep.length) });
  };

  function labels(ex, sh, z, cell, axis) {
    var box = el("div", axis === "q" ? "av-rows" : "av-cols"), font = Math.min(13, Math.max(cell - 2, 0));
    if (cell < LABEL_CELL) return box;
    for (var i = z[axis === "q" ? "r0" : "c0"], end = i + z.span; i < end; i++) {
      var d = el("div", "", sh.names[i]);
      d.style.fontSize = font + "px";
      d.style.lineHeight = cell + "px";
      if (axis === "q") { d.style.height = cell + "px"; d.style.maxWidth = "170px"; }
      else { d.style.width = cell + "px"; d.style.maxHeight = "130px"; }
      d.setAttribute("data-i", i);
      (function (idx) { d.addEventListener("click", function () { ex.set({ focus: { axis: axis, i: idx } }); }); })(i);
      box.appendChild(d);
    }
    return box;
  }

  function renderMatrix(ex) {
    var st = ex.state, sh = ex.shown(), m = sh.keep.length, d = ex.data;
    var mat = ex.matrix(st.layer, st.head, sh);
    if (!mat) { ex.loading(st.layer, st.head); return; }
    var sc = ex.scaleOf([mat], sh), z = clampZoom(st.zoom || { r0: 0, c0: 0, span: m }, m);
    var cell = z.span <= SIDE ? Math.max(1, Math.floor(SIDE / z.span)) : SIDE / z.span;
    var px = z.span <= SIDE ? z.span * cell : SIDE;
    ex.body.appendChild(el("div", "av-title", "Layer " + d.layers[st.layer] + ", head " + d.heads[st.head] +
      " \u00b7 rows: query (attending from), columns: key (attending to)"));
    var tools = el("div", "av-zoom");
    [["+", 0.5], ["\u2212", 2], ["whole", 0]].forEach(function (t) {
      var b = el("button", "", t[0]);
      b.type = "button";
      b.setAttribute("data-zoom", t[0] === "whole" ? "reset" : t[1] < 1 ? "in" : "out");
      b.addEventListener("click", function () {
        if (!t[1]) { ex.set({ zoom: null }); return; }
        var span = z.span * t[1];
        ex.zoomTo(z.r0 + (z.span - span) / 2, z.c0 + (z.span - span) / 2, span);
      });
      tools.appendChild(b);
    });
    tools.appendChild(el("span", "av-note", "rows " + z.r0 + "\u2013" + (z.r0 + z.span - 1) + ", columns " + z.c0 +
      "\u2013" + (z.c0 + z.span - 1) + " of " + m + " \u00b7 wheel: zoom, drag: pan, click: focus (shift: column)"));
    ex.body.appendChild(tools);
    var main = el("div", "av-main"), grid = el("div", "av-grid");
    grid.appendChild(el("div"));
    grid.appendChild(labels(ex, sh, z, cell, "k"));
    grid.appendChild(labels(ex, sh, z, cell, "q"));
    var canvas = el("canvas", "av-matrix");
    // the last picture is kept: coming back from another view does not repaint 8,192^2 cells
    var key = [st.layer, st.head, st.level, st.hideSpecial, st.scale, z.r0, z.c0, z.span, px].join();
    if (ex.painted && ex.painted.key === key && ex.painted.mat === mat) {
      canvas.width = px; canvas.height = px;
      canvas.getContext("2d").putImageData(ex.painted.img, 0, 0);
    } else {
      paint(ex, canvas, mat, sh, sc, z.r0, z.c0, z.span, px);
      ex.painted = { key: key, mat: mat, img: canvas.getContext("2d").getImageData(0, 0, px, px) };
    }
    canvas.setAttribute("data-cells", z.span * z.span);
    canvas.setAttribute("data-cell", cell);
    canvas.setAttribute("data-span", z.span);
    canvas.setAttribute("data-r0", z.r0);
    canvas.setAttribute("data-c0", z.c0);
    canvas.setAttribute("data-vmax", sc.top.toFixed(4));
    grid.appendChild(canvas);
    main.appendChild(grid);
    main.appendChild(focusChart(ex, mat, sh));
    ex.body.appendChild(main);
    ex.body.appendChild(legend(ex, sc, sh));
    interact(ex, canvas, mat, sh, z, px);
  }

  function interact(ex, canvas, mat, sh, z, px) {
    var m = sh.keep.length, drag = null;
    function cellAt(ev) {
      var r = canvas.getBoundingClientRect(), f = z.span / px;
      return [z.r0 + Math.floor((ev.clientY - r.top) * f), z.c0 + Math.floor((ev.clientX - r.left) * f)];
    }
    canvas.addEventListener("mousemove", function (ev) {
      if (drag) {
        var f = z.span / px, dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
        if (drag.moved) canvas.style.transform = "translate(" + dx + "px," + dy + "px)";
        drag.r0 = z.r0 - dy * f; drag.c0 = z.c0 - dx * f;
        return;
      }
      var ab = cellAt(ev), a = ab[0], b = ab[1];
      if (a < z.r0 || b < z.c0 || a >= Math.min(m, z.r0 + z.span) || b >= Math.min(m, z.c0 + z.span)) {
        ex.tip.style.display = "none"; return;
      }
      ex.showTip(sh.names[a] + " \u2192 " + sh.names[b] + ": " +
        (ex.masked(sh, a, b) ? "masked (future token)" : fmt(mat[a * m + b])), ev);
    });
    canvas.addEventListener("mouseleave", function () { ex.tip.style.display = "none"; });
    canvas.addEventListener("mousedown", function (ev) { drag = { x: ev.clientX, y: ev.clientY, moved: false }; ev.preventDefault(); });
    window.addEventListener("mouseup", up);
    ex.cleanup = function () { window.removeEventListener("mouseup", up); };
    function up(ev) {
      if (!drag) return;
      var dr = drag;
      drag = null;
      if (dr.moved) { ex.zoomTo(dr.r0, dr.c0, z.span); return; }
      if (ev.target !== canvas) return;
      var ab = cellAt(ev);
      if (ab[0] < m && ab[1] < m) ex.set({ focus: ev.shiftKey ? { axis: "k", i: ab[1] } : { axis: "q", i: ab[0] } });
    }
    canvas.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var ab = cellAt(ev), span = z.span * (ev.deltaY < 0 ? 0.7 : 1 / 0.7), k = span / z.span;
      ex.zoomTo(ab[0] - (ab[0] - z.r0) * k, ab[1] - (ab[1] - z.c0) * k, span);
    }, { passive: false });
  }

  A.addView({ name: "matrix", label: "Matrix view", head: true, render: renderMatrix });
})();
