// ovdet page: pick an image, type classes, POST /v1/detect, draw the boxes. No dependencies.
"use strict";

(function () {
  const PALETTE = ["#E6194B", "#3CB44B", "#FFE119", "#4363D8", "#F58231", "#911EB4", "#46F0F0", "#F032E6",
    "#BCF60C", "#FABEBE", "#008080", "#9A6324", "#800000", "#AAFFC3", "#808000", "#000075", "#E6BEFF",
    "#FFD8B1", "#808080", "#00A0FF"];  // the same colours as Detections.plot
  const $ = (id) => document.getElementById(id);
  const els = {
    file: $("file"), drop: $("drop"), dropText: $("drop-text"), classes: $("classes"), conf: $("conf"),
    iou: $("iou"), confValue: $("conf-value"), iouValue: $("iou-value"), detect: $("detect"),
    download: $("download"), status: $("status"), error: $("error"), canvas: $("canvas"),
    rows: document.querySelector("#detections tbody"), keyRow: $("key-row"), key: $("api-key"), model: $("model"),
  };
  let file = null;      // the picked image File
  let bitmap = null;    // its decoded pixels, for drawing
  let last = null;      // the last answer, for download
  let running = false;
  let again = false;    // settings changed while a request ran

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = !message;
  }

  function headers() {
    const key = els.key.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  async function explain(response) {
    // The API answers errors as {"error": code, "detail": words}; say the words.
    try {
      const body = await response.json();
      if (body && body.detail) return body.detail;
    } catch (e) { /* not JSON */ }
    return "the server answered " + response.status + " " + response.statusText;
  }

  async function loadModel() {
    try {
      const health = await (await fetch("/v1/health")).json();
      els.keyRow.hidden = !health.auth_required;
      const r = await fetch("/v1/model", { headers: headers() });
      if (!r.ok) { if (r.status !== 401) showError(await explain(r)); return; }
      const info = await r.json();
      els.model.textContent = (info.model || "model") + " · YOLO-World v" + info.architecture.version +
        " · text: " + info.text_encoder + " · " + info.device;
      if (info.default_classes.length && !els.classes.value) {
        els.classes.placeholder = info.default_classes.slice(0, 6).join(", ") +
          (info.default_classes.length > 6 ? ", … (default)" : " (default)");
      }
    } catch (e) {
      showError("cannot reach the server: " + e.message);
    }
  }

  function ink(hex) {  // black text on light colours, white on dark ones
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 ? "#000" : "#fff";
  }

  function draw(result) {
    const ctx = els.canvas.getContext("2d");
    if (!bitmap) return;
    const scale = Math.min(1, 960 / bitmap.width);
    els.canvas.width = Math.round(bitmap.width * scale);
    els.canvas.height = Math.round(bitmap.height * scale);
    ctx.drawImage(bitmap, 0, 0, els.canvas.width, els.canvas.height);
    if (!result) return;
    const lw = Math.max(2, Math.round(els.canvas.width / 320));
    ctx.font = "600 " + (10 + 2 * lw) + "px system-ui, sans-serif";
    ctx.textBaseline = "top";
    // lowest score first, so the best box and its label end on top
    for (const d of result.detections.slice().reverse()) {
      const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
      const color = PALETTE[d.label % PALETTE.length];
      ctx.strokeStyle = color;
      ctx.lineWidth = lw;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = d.name + " " + d.score.toFixed(2);
      const tw = ctx.measureText(text).width + 8;
      const th = 14 + 2 * lw;
      const ty = y1 - th >= 0 ? y1 - th : y1;
      ctx.fillStyle = color;
      ctx.fillRect(x1, ty, tw, th);
      ctx.fillStyle = ink(color);
      ctx.fillText(text, x1 + 4, ty + 2);
    }
  }

  function table(result) {
    els.rows.textContent = "";
    result.detections.forEach((d, i) => {
      const tr = document.createElement("tr");
      const cells = [String(i + 1), d.name, d.score.toFixed(3), d.box.map((v) => v.toFixed(1)).join(", ")];
      cells.forEach((text, j) => {
        const td = document.createElement("td");
        if (j === 1) {
          const sw = document.createElement("span");
          sw.className = "swatch";
          sw.style.background = PALETTE[d.label % PALETTE.length];
          td.appendChild(sw);
        }
        td.appendChild(document.createTextNode(text));
        tr.appendChild(td);
      });
      els.rows.appendChild(tr);
    });
  }

  async function detect() {
    if (!file) { showError("pick an image first"); return; }
    if (running) { again = true; return; }
    running = true;
    again = false;
    showError("");
    els.detect.disabled = true;
    els.status.textContent = "detecting…";
    const form = new FormData();
    form.append("images", file, file.name);
    if (els.classes.value.trim()) form.append("classes", els.classes.value.trim());
    form.append("conf", els.conf.value);
    form.append("iou", els.iou.value);
    const start = performance.now();
    try {
      const r = await fetch("/v1/detect", { method: "POST", body: form, headers: headers() });
      const ms = performance.now() - start;
      if (!r.ok) {
        const why = await explain(r);
        showError(r.status === 401 ? "API key needed: " + why : why);
        els.status.textContent = "";
        return;
      }
      last = await r.json();
      const result = last.results[0];
      draw(result);
      table(result);
      els.download.disabled = false;
      const t = last.timing;
      els.status.textContent = result.detections.length + " detection(s) · " + Math.round(ms) + " ms in the browser · server " +
        Math.round(t.total_ms) + " ms (inference " + Math.round(t.inference_ms) + ", queue " + Math.round(t.queue_ms) + ")";
      els.status.dataset.done = "1";
    } catch (e) {
      showError("the request failed: " + e.message);
      els.status.textContent = "";
    } finally {
      running = false;
      els.detect.disabled = !file;
      if (again) detect();
    }
  }

  async function pick(f) {
    if (!f) return;
    showError("");
    try {
      bitmap = await createImageBitmap(f);
    } catch (e) {
      bitmap = null;
      file = null;
      els.detect.disabled = true;
      showError(f.name + " is not an image this browser can show");
      return;
    }
    file = f;
    last = null;
    els.download.disabled = true;
    els.rows.textContent = "";
    els.dropText.textContent = f.name + " (" + bitmap.width + "×" + bitmap.height + ")";
    els.status.textContent = "";
    delete els.status.dataset.done;
    els.detect.disabled = false;
    draw(null);
  }

  function download() {
    if (!last) return;
    const blob = new Blob([JSON.stringify(last, null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = (file ? file.name.replace(/\.[^.]+$/, "") : "detections") + ".json";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  let timer = null;
  function rerun() {  // a slider moved: detect again shortly, if an answer is on screen
    els.confValue.textContent = Number(els.conf.value).toFixed(2);
    els.iouValue.textContent = Number(els.iou.value).toFixed(2);
    if (!last) return;
    clearTimeout(timer);
    timer = setTimeout(detect, 250);
  }

  els.file.addEventListener("change", () => pick(els.file.files[0]));
  els.drop.addEventListener("dragover", (e) => { e.preventDefault(); els.drop.classList.add("over"); });
  els.drop.addEventListener("dragleave", () => els.drop.classList.remove("over"));
  els.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    els.drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  els.detect.addEventListener("click", detect);
  els.download.addEventListener("click", download);
  els.conf.addEventListener("input", rerun);
  els.iou.addEventListener("input", rerun);
  els.classes.addEventListener("keydown", (e) => { if (e.key === "Enter") detect(); });
  els.key.addEventListener("change", loadModel);
  loadModel();
})();
