/* attnviz serve: the form, the find-head ranking, and the explorer fed from the JSON API. */
(function () {
  "use strict";
  var el = window.AttnViz.el;
  var form = document.getElementById("av-form"), input = document.getElementById("av-input");
  var modelSel = document.getElementById("av-model"), status = document.getElementById("av-status");
  var textBox = document.getElementById("av-text"), ranking = document.getElementById("av-ranking");
  var root = document.getElementById("attnviz-root");
  var current = null, picked = [];

  function say(message, error) {
    status.textContent = message;
    status.className = error ? "av-note av-error" : "av-note";
  }
  // POST with a JSON body: long texts do not fit a query string.
  function get(path, params, signal) {
    var init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(params),
      signal: signal };
    return fetch(path, init).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
        return body;
      });
    });
  }

  function showWords(data) {
    textBox.textContent = "";
    picked = [];
    var lv = data.words || data;
    if (lv.tokens.length > 600) return; // a long text: read it in the explorer's text view
    lv.tokens.forEach(function (w, i) {
      if (lv.special[i]) return;
      var s = el("span", "av-word", w);
      s.addEventListener("click", function () { pick(s, w); });
      textBox.appendChild(s);
      textBox.appendChild(document.createTextNode(" "));
    });
  }

  function pick(span, word) {
    if (picked.length === 2) {
      picked.forEach(function (p) { p[0].classList.remove("av-a", "av-b"); });
      picked = [];
    }
    picked.push([span, word]);
    span.classList.add(picked.length === 1 ? "av-a" : "av-b");
    if (picked.length === 2) findHead(picked[0][1], picked[1][1]);
  }

  function findHead(a, b) {
    ranking.textContent = "";
    get("/api/find-head", { text: current.text, model: current.model, a: a, b: b, top: 10, truncate: current.truncate })
      .then(function (rows) {
        var tab = el("table", "av-rank");
        var head = el("tr");
        ["rank", "layer", "head", "score", "a2b", "b2a", "role"].forEach(function (c) { head.appendChild(el("th", "", c)); });
        tab.appendChild(head);
        tab.appendChild(el("caption", "", "heads linking \u201c" + a + "\u201d and \u201c" + b + "\u201d (click: matrix view)"));
        rows.forEach(function (r) {
          var tr = el("tr", "av-row");
          [r.rank, r.layer, r.head, r.score.toFixed(4), r.a2b.toFixed(4), r.b2a.toFixed(4), r.role]
            .forEach(function (v) { tr.appendChild(el("td", "", v)); });
          tr.addEventListener("click", function () { if (current) current.explorer.select(r.layer, r.head); });
          tab.appendChild(tr);
        });
        ranking.appendChild(tab);
      })
      .catch(function (e) { ranking.appendChild(el("div", "av-error", e.message)); });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = input.value.trim(), model = modelSel.value;
    var cut = document.getElementById("av-truncate").checked ? 1 : 0;
    if (!text) { say("type a text first", true); return; }
    say("computing\u2026");
    if (current && current.abort) current.abort.abort(); // the last text's head requests: not needed now
    var abort = new AbortController();
    var t0 = performance.now();
    get("/api/view", { text: text, model: model, lazy: 1, truncate: cut }).then(function (data) {
      current = { text: text, model: model, data: data, truncate: cut, abort: abort };
      document.body.setAttribute("data-answered", String(performance.now() - t0)); // ms from the request
      document.body.setAttribute("data-answered-at", String(performance.now())); // ms from page start
      var fetchHead = function (layer, head) {
        var q = { text: text, model: model, layer: layer, head: head, truncate: cut };
        return get("/api/head", q, abort.signal).then(function (r) {
          return r.weights;
        });
      };
      current.explorer = window.AttnViz.mount(root, data, { fetchHead: fetchHead });
      ranking.textContent = "";
      showWords(data);
      say(data.model + ": " + data.n + " tokens" + (data.lazy ? " (long text: heads are fetched one at a time)" : ""));
      return current.explorer.ready;
    }).then(function () {
      document.body.setAttribute("data-ready", String(Date.now()));
    }).catch(function (e) { say(e.message, true); });
  });

  fetch("/api/models").then(function (r) { return r.json(); }).then(function (models) {
    models.forEach(function (m) {
      var o = el("option", "", m.name + " (" + m.layers + " x " + m.heads + ")");
      o.value = m.name;
      modelSel.appendChild(o);
    });
    document.body.setAttribute("data-models", String(models.length));
  }).catch(function (e) { say(e.message, true); });
})();
