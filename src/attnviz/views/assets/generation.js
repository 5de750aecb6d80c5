// attnviz generation mode: hover (or tap) a generated token to see what the step that wrote it read.
// Data comes from the page's JSON block; tokens are set with textContent, never parsed as markup.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("attnviz-generation").textContent);
  const root = document.getElementById("attnviz-root");
  const L = data.layers.length, H = data.heads.length, N = data.new, W = data.tokens.length;
  const S = data.source.length;

  function decode(b64, size) {  // base64 little-endian float16 -> Float32Array
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer), out = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      const h = view.getUint16(2 * i, true), s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
      out[i] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
    }
    return out;
  }
  const self = decode(data.self, L * H * N * W);
  const cross = data.cross ? decode(data.cross, L * H * N * S) : null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function picker(label, values, name) {
    const wrap = el("label", "gen-pick", label + " ");
    const sel = el("select");
    sel.name = name;
    if (values.length > 1) sel.appendChild(new Option("mean", "mean"));
    values.forEach((v, i) => sel.appendChild(new Option(String(v), String(i))));
    wrap.appendChild(sel);
    return [wrap, sel];
  }

  const bar = el("div", "gen-bar");
  bar.appendChild(el("strong", "", data.model + " · generation"));
  const [lw, layerSel] = picker("layer", data.layers, "layer");
  const [hw, headSel] = picker("head", data.heads, "head");
  bar.append(lw, hw);
  let streamSel = null;
  if (cross) {
    const [sw, sel] = picker("stream", [], "stream");
    sel.replaceChildren(new Option("self", "self"), new Option("cross", "cross"));
    streamSel = sel;
    sw.firstChild.textContent = "stream ";
    bar.appendChild(sw);
  }
  const note = el("div", "gen-note", "Hover a generated token (bold) to see what its step read.");
  const source = el("div", "gen-text gen-source");
  const text = el("div", "gen-text");
  const top = el("ol", "gen-top");
  root.append(bar, note);
  if (cross) root.append(el("div", "gen-caption", "source (the prompt)"), source);
  root.append(el("div", "gen-caption", cross ? "decoder" : "prompt and continuation"), text, top);

  // Each token on its piece of the text, with the text's own spaces and line breaks between them;
  // a special token, or one not found in the text (a chat template's), as a small box.
  function spans(parent, pieces, gaps, boxed, special, first) {
    const out = pieces.map((t, i) => {
      if (gaps[i]) parent.appendChild(document.createTextNode(gaps[i]));
      const cls = "gen-tok" + (i >= first ? " gen-new" : "") + (special[i] ? " gen-special" : "") +
        (boxed[i] ? " gen-box" : "");
      const s = el("span", cls, t);
      s.dataset.index = String(i);
      parent.appendChild(s);
      return s;
    });
    if (gaps[pieces.length]) parent.appendChild(document.createTextNode(gaps[pieces.length]));
    return out;
  }
  const ctx = spans(text, data.pieces, data.gaps, data.boxed, data.special, data.prompt_length);
  const src = cross ? spans(source, data.source_pieces, data.source_gaps, data.source_boxed,
    data.source_special, S) : [];

  function row(arr, width, t) {  // the chosen layer/head (or their mean) of step t: Float32Array[width]
    const out = new Float32Array(width);
    const ls = layerSel.value === "mean" ? [...Array(L).keys()] : [Number(layerSel.value)];
    const hs = headSel.value === "mean" ? [...Array(H).keys()] : [Number(headSel.value)];
    for (const l of ls) for (const h of hs) {
      const base = ((l * H + h) * N + t) * width;
      for (let k = 0; k < width; k++) out[k] += arr[base + k] / (ls.length * hs.length);
    }
    return out;
  }
  function clear() {
    for (const s of ctx.concat(src)) { s.style.background = ""; s.classList.remove("gen-query"); }
    top.replaceChildren();
  }
  function show(i) {
    clear();
    const t = i - data.prompt_length;
    if (t < 0 || t >= N) return;
    const useCross = streamSel && streamSel.value === "cross";
    const weights = useCross ? row(cross, S, t) : row(self, W, t);
    const targets = useCross ? src : ctx;
    const peak = Math.max(...weights) || 1;
    weights.forEach((w, k) => {
      if (w > 0) targets[k].style.background = "rgba(220, 60, 30, " + (0.08 + 0.85 * w / peak).toFixed(3) + ")";
    });
    ctx[i].classList.add("gen-query");
    const labels = useCross ? data.source : data.tokens;
    [...weights.keys()].filter((k) => weights[k] > 0).sort((a, b) => weights[b] - weights[a]).slice(0, 5).forEach((k) => {
      top.appendChild(el("li", "", JSON.stringify(labels[k]) + " " + weights[k].toFixed(3)));
    });
    note.textContent = "“" + data.tokens[i] + "” (new token " + (t + 1) + " of " + N + ") read:";
  }
  let current = -1;
  ctx.forEach((s, i) => {
    if (i < data.prompt_length) return;
    s.addEventListener("mouseenter", () => { current = i; show(i); });
    s.addEventListener("click", () => { current = i; show(i); });
  });
  for (const sel of [layerSel, headSel, streamSel]) if (sel) sel.addEventListener("change", () => show(current));
  if (N > 0) { current = data.prompt_length; show(current); }
})();
