/* facerec demo page. Plain JavaScript, no library, no build step; talks to this server's own API only.
 *
 * Everything shown comes from the API's answers: the boxes and the 68 points drawn on the photos are the
 * response's `landmark_68` scaled to the canvas (the canvas records what it drew in data-points, data-box and
 * data-scale, which the browser tests check against the response). Text from the server is always inserted as
 * text, never as HTML.
 */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const FIELDS = ["file1", "file2"];
  const LABEL = { file1: "Photo 1", file2: "Photo 2" };
  const TOKEN_KEY = "facerec-demo-token";
  const HISTORY_SIZE = 5;
  const CANVAS_MAX = 640; // canvas pixels of the longer side shown
  const POINT_COLOUR = "#00e5ff";
  const BOX_COLOUR = "#ffd400";
  const ADVICE = {
    size: "the face is too small (move closer, or use a larger photo)",
    sharpness: "the face is blurred, out of focus or too low in contrast",
    pose: "the head is turned too far from the camera",
    illumination: "the face is too dark or too bright",
    occlusion: "the face is partly covered or cut off",
    eyes: "the eyes are closed",
  };
  const COMPONENTS = ["size", "sharpness", "pose", "illumination", "occlusion", "eyes", "presence"];

  const state = {
    config: { token_button: false, threshold: 0.5, quality_filter: "LOW", roles_claim: "roles", max_file_bytes: 0 },
    files: { file1: null, file2: null },
    images: { file1: null, file2: null },
    urls: { file1: null, file2: null },
    stream: null,
    page: 0,
    scan: null,
  };

  // ------------------------------------------------------------------------------------------ small helpers

  function setText(el, text) { el.textContent = text == null ? "" : String(text); }
  function fmt(v, digits) { return typeof v === "number" ? v.toFixed(digits) : "–"; }
  function label(field) { return LABEL[field] || (field ? `"${field}"` : "The request"); }

  function token() { return $("token").value.trim(); }
  function saveToken() {
    try { sessionStorage.setItem(TOKEN_KEY, token()); } catch (e) { /* storage off: keep it in the field */ }
  }

  // The roles the token claims (only to hide buttons it cannot use: the server checks every call anyway).
  function tokenRoles() {
    const parts = token().split(".");
    if (parts.length !== 3) return null;
    try {
      const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4)));
      let value = claims;
      for (const key of String(state.config.roles_claim || "roles").split(".")) {
        value = value && typeof value === "object" ? value[key] : undefined;
      }
      if (value === undefined) value = claims.scope;
      if (typeof value === "string") value = value.split(/\s+/);
      return Array.isArray(value) ? new Set(value.map(String)) : null;
    } catch (e) {
      return null;
    }
  }
  function mayUse(role) { const roles = tokenRoles(); return roles === null || roles.has(role); }

  async function api(method, path, { body, json } = {}) {
    const headers = { Authorization: `Bearer ${token()}` };
    let payload = body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(json);
    }
    return fetch(path, { method, headers, body: payload, cache: "no-store" });
  }

  // ------------------------------------------------------------------------------------------ errors

  function retrySeconds(resp, body) {
    if (body && typeof body.retry_after_ms === "number") return Math.max(1, Math.ceil(body.retry_after_ms / 1000));
    const header = Number(resp.headers.get("Retry-After"));
    return Number.isFinite(header) && header > 0 ? header : null;
  }

  // A readable sentence for any error answer: problem+json from this server, or anything a proxy may send.
  async function problemOf(resp) {
    let body = null;
    if ((resp.headers.get("content-type") || "").includes("json")) {
      try { body = await resp.json(); } catch (e) { body = null; }
    }
    const code = (body && body.code) || `http_${resp.status}`;
    const detail = body && body.detail ? String(body.detail) : "";
    const field = body && body.field ? String(body.field) : null;
    const wait = retrySeconds(resp, body);
    let message;
    switch (code) {
      case "no_face":
        message = `No face found in ${label(field).toLowerCase()}. Choose a photo where the face is clearly visible.`;
        break;
      case "face_not_comparable": {
        // The server's detail ends with the reason ("the head is turned 62 degrees (yaw); ...").
        const cut = detail.indexOf(": ");
        const reason = cut >= 0 ? detail.slice(cut + 2) : detail;
        message = `The face in ${label(field).toLowerCase()} cannot be compared reliably` +
          `${reason ? ` (${reason})` : ""}. Use a photo where the face looks at the camera and is not too small.`;
        break;
      }
      case "low_quality": {
        const failing = (body && body.failing_components) || {};
        const parts = Object.keys(failing).map((f) =>
          `${label(f)}: ${(failing[f] || []).map((c) => ADVICE[c] || c).join("; ")}`);
        message = `${label(field)} is not good enough for the ${body.quality_filter || ""} quality filter. ` +
          `${parts.join(". ")}. Use a better photo, or choose a lower quality filter.`;
        break;
      }
      case "payload_too_large":
      case "image_too_large":
      case "http_413":
        message = `${field ? label(field) : "The upload"} is too large` + (detail ? `: ${detail}.` : " for the server.");
        break;
      case "unsupported_image":
        message = `${label(field)} is not a supported image (JPEG, PNG, WebP or BMP).`;
        break;
      case "overloaded":
      case "http_429":
        message = `The server is busy right now. Try again${wait ? ` in ${wait} s` : " in a moment"}.`;
        break;
      case "unavailable":
      case "deadline_exceeded":
      case "http_503":
        message = `The server is temporarily unavailable${detail ? ` (${detail})` : ""}. Try again` +
          `${wait ? ` in ${wait} s` : " later"}.`;
        break;
      case "unauthorized":
      case "http_401":
        message = `The token was refused${detail ? ` (${detail})` : ""}. ` +
          (state.config.token_button ? "Press \u201cGet a demo token\u201d or paste a valid one." : "Paste a valid token.");
        break;
      case "forbidden":
        message = `The token does not allow this${detail ? ` (${detail})` : ""}.`;
        break;
      case "not_found":
        message = "That scan does not exist (any more).";
        break;
      default:
        message = body && body.title
          ? `${body.title}${detail ? `: ${detail}` : ""} (HTTP ${resp.status}).`
          : `The server answered HTTP ${resp.status} ${resp.statusText || ""}.`.replace(" .", ".");
    }
    if (body && body.request_id) message += ` Request id ${body.request_id}.`;
    return { code, message };
  }

  function showError(message, code) {
    const el = $("error");
    setText(el, message);
    el.dataset.code = code || "client";
    el.hidden = false;
  }
  function clearError() { const el = $("error"); el.hidden = true; setText(el, ""); delete el.dataset.code; }

  // ------------------------------------------------------------------------------------------ token

  async function getDemoToken() {
    setText($("token-status"), "Asking the server for a demo token\u2026");
    try {
      const resp = await fetch("/demo/token", { method: "POST", headers: { "X-Facerec-Demo": "1" }, cache: "no-store" });
      if (!resp.ok) {
        setText($("token-status"), (await problemOf(resp)).message);
        return;
      }
      const body = await resp.json();
      $("token").value = body.access_token;
      saveToken();
      setText($("token-status"), `Demo token for the company \u201c${body.company}\u201d, valid ` +
        `${Math.round(body.expires_in / 60)} minutes.`);
      refreshHistory(0);
    } catch (e) {
      setText($("token-status"), `Could not reach the server (${e.message}).`);
    }
  }

  // ------------------------------------------------------------------------------------------ photos

  function setFile(field, file, note) {
    state.files[field] = file;
    if (state.urls[field]) URL.revokeObjectURL(state.urls[field]);
    state.urls[field] = null;
    state.images[field] = null;
    const info = $(`${field}-info`);
    const canvas = $(field === "file1" ? "canvas1" : "canvas2");
    delete canvas.dataset.points;
    delete canvas.dataset.box;
    if (!file) { drawPhoto(field, null); setText(info, ""); return; }
    const kb = Math.round(file.size / 1024);
    setText(info, `${note || file.name || "photo"}: ${kb} kB`);
    if (state.config.max_file_bytes && file.size > state.config.max_file_bytes) {
      setText(info, `${info.textContent}, over the server's limit of ${Math.round(state.config.max_file_bytes / 1024)} kB`);
    }
    const url = URL.createObjectURL(file);
    state.urls[field] = url;
    const img = new Image();
    img.onload = () => {
      if (state.urls[field] !== url) return; // another photo was chosen meanwhile
      state.images[field] = img;
      setText(info, `${info.textContent}, ${img.naturalWidth} \u00d7 ${img.naturalHeight} px`);
      drawPhoto(field, null);
    };
    img.onerror = () => {
      setText(info, `${info.textContent} (this browser cannot show it; the server may still read it)`);
      drawPhoto(field, null);
    };
    img.src = url;
  }

  // The photo, and when `face` is given its box and 68 points, scaled to the canvas. What was drawn is recorded
  // on the canvas (data-scale, data-box, data-points: canvas pixels) so tests can check it against the response.
  function drawPhoto(field, face) {
    const canvas = $(field === "file1" ? "canvas1" : "canvas2");
    const ctx = canvas.getContext("2d");
    const img = state.images[field];
    if (!img) {
      canvas.width = 320; canvas.height = 240;
      ctx.fillStyle = "#e9ecf0"; ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = "#5b6573"; ctx.font = "16px sans-serif"; ctx.textAlign = "center";
      ctx.fillText(state.files[field] ? "(preview unavailable)" : "no photo yet", canvas.width / 2, canvas.height / 2);
      canvas.setAttribute("aria-label", `${LABEL[field]}: ${state.files[field] ? "chosen, no preview" : "none chosen"}`);
      delete canvas.dataset.scale;
      return;
    }
    const scale = Math.min(1, CANVAS_MAX / Math.max(img.naturalWidth, img.naturalHeight));
    canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
    canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    canvas.dataset.scale = String(scale);
    if (!face) {
      delete canvas.dataset.points;
      delete canvas.dataset.box;
      canvas.setAttribute("aria-label", `${LABEL[field]}`);
      return;
    }
    const line = Math.max(2, canvas.width / 220);
    const box = [face.x1, face.y1, face.x2, face.y2].map((v) => v * scale);
    ctx.strokeStyle = BOX_COLOUR;
    ctx.lineWidth = line;
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    const radius = Math.max(2, canvas.width / 200);
    ctx.fillStyle = POINT_COLOUR;
    const drawn = [];
    for (const p of face.landmark_68 || []) {
      const x = p.x * scale;
      const y = p.y * scale;
      ctx.beginPath();
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
      ctx.fill();
      drawn.push([Math.round(x * 100) / 100, Math.round(y * 100) / 100]);
    }
    canvas.dataset.box = JSON.stringify(box.map((v) => Math.round(v * 100) / 100));
    canvas.dataset.points = JSON.stringify(drawn);
    canvas.setAttribute("aria-label", `${LABEL[field]} with the detected face box and its ${drawn.length} landmarks`);
  }

  function useFiles(field, files, note) {
    const file = files && files[0];
    if (!file) return;
    const input = $(field);
    if (input.files !== files) {
      try { // keep the file input in step (DataTransfer is how a script sets it)
        const dt = new DataTransfer();
        dt.items.add(file);
        input.files = dt.files;
      } catch (e) { /* older browsers: the form uses state.files anyway */ }
    }
    setFile(field, file, note);
  }

  function wireSlot(field) {
    const slot = $(field === "file1" ? "slot1" : "slot2");
    $(field).addEventListener("change", (e) => { delete $(field === "file1" ? "canvas1" : "canvas2").dataset.source;
      useFiles(field, e.target.files); });
    slot.addEventListener("dragover", (e) => { e.preventDefault(); slot.classList.add("dragover"); });
    slot.addEventListener("dragleave", () => slot.classList.remove("dragover"));
    slot.addEventListener("drop", (e) => {
      e.preventDefault();
      slot.classList.remove("dragover");
      if (e.dataTransfer && e.dataTransfer.files.length) useFiles(field, e.dataTransfer.files);
    });
  }

  // ------------------------------------------------------------------------------------------ camera

  async function startCamera() {
    clearError();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser offers no camera here (the camera needs https, or this page opened on localhost).",
        "camera");
      return;
    }
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: "user", width: { ideal: 1280 }, height: { ideal: 720 } }, audio: false,
      });
    } catch (e) {
      showError(`The camera could not be opened (${e.name}${e.message ? `: ${e.message}` : ""}).`, "camera");
      return;
    }
    const video = $("camera-video");
    video.addEventListener("playing", () => { video.dataset.playing = "true"; }, { once: true });
    video.srcObject = state.stream;
    video.hidden = false;
    try { await video.play(); } catch (e) { /* muted inline video plays; the frame check below reports failure */ }
    $("camera-capture").hidden = false;
    $("camera-stop").hidden = false;
    $("camera-start").hidden = true;
    $("camera-capture").focus();
  }

  function stopCamera() {
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    const video = $("camera-video");
    video.srcObject = null;
    video.hidden = true;
    delete video.dataset.playing;
    $("camera-capture").hidden = true;
    $("camera-stop").hidden = true;
    $("camera-start").hidden = false;
  }

  async function capture() {
    const video = $("camera-video");
    const w = video.videoWidth;
    const h = video.videoHeight;
    if (!w || !h) {
      showError("The camera has not delivered a picture yet; wait a moment and capture again.", "camera");
      return;
    }
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    c.getContext("2d").drawImage(video, 0, 0, w, h);
    const blob = await new Promise((resolve) => c.toBlob(resolve, "image/jpeg", 0.92));
    if (!blob) { showError("The camera picture could not be encoded.", "camera"); return; }
    const file = new File([blob], "selfie.jpg", { type: "image/jpeg" });
    stopCamera();
    $("canvas2").dataset.source = "camera";
    useFiles("file2", [file], `Selfie from the camera (${w} \u00d7 ${h})`);
    $("camera-start").focus();
  }

  // ------------------------------------------------------------------------------------------ compare

  async function compare(e) {
    e.preventDefault();
    clearError();
    if (!token()) {
      showError(state.config.token_button ? "Paste a token first, or press \u201cGet a demo token\u201d."
        : "Paste a token first.", "client");
      $("token").focus();
      return;
    }
    for (const field of FIELDS) {
      if (!state.files[field]) { showError(`Choose ${label(field).toLowerCase()} first.`, "client"); $(field).focus(); return; }
    }
    const form = new FormData();
    form.append("channel", $("channel").value);
    form.append("reference", $("reference").value.trim() || `demo-${new Date().toISOString().slice(0, 19)}`);
    const threshold = $("threshold").value.trim();
    if (threshold !== "") form.append("threshold", threshold);
    form.append("quality_filter", $("quality_filter").value);
    for (const field of FIELDS) form.append(field, state.files[field], state.files[field].name || field);

    const button = $("compare");
    button.disabled = true;
    const verdict = $("verdict");
    verdict.className = "verdict";
    setText(verdict, "Comparing\u2026");
    $("result").dataset.state = "busy";
    try {
      const resp = await api("POST", "/v1/compare_face", { body: form });
      if (!resp.ok) {
        const problem = await problemOf(resp);
        showError(problem.message, problem.code);
        setText(verdict, "No result.");
        $("result").dataset.state = "error";
        $("result-detail").hidden = true;
        FIELDS.forEach((f) => drawPhoto(f, null));
        return;
      }
      render(await resp.json());
      refreshHistory(0);
    } catch (err) {
      showError(`Could not reach the server (${err.message}).`, "network");
      setText(verdict, "No result.");
      $("result").dataset.state = "error";
    } finally {
      button.disabled = false;
    }
  }

  function render(r) {
    const same = r.compare_result === "Same person";
    const verdict = $("verdict");
    verdict.className = `verdict ${same ? "same" : "different"}`;
    setText(verdict, `${r.compare_result}: similarity ${fmt(r.compare_similarity, 3)}, threshold ` +
      `${fmt(r.threshold, 2)}, quality filter ${r.quality_filter}`);
    const result = $("result");
    result.dataset.state = "done";
    result.dataset.verdict = r.compare_result;
    result.dataset.scanId = r.id;
    $("result-detail").hidden = false;
    drawGauge(r.compare_similarity, r.threshold, same);
    setText($("similarity-text"), `Similarity ${fmt(r.compare_similarity, 3)} on a 0\u20131 scale; ` +
      `\u201cSame person\u201d from ${fmt(r.threshold, 2)}. Scan ${r.id}, reference \u201c${r.reference}\u201d.`);
    drawPhoto("file1", r.face1);
    drawPhoto("file2", r.face2);
    fillTable(r.face1, r.face2);
  }

  function drawGauge(similarity, threshold, same) {
    const canvas = $("gauge");
    const ctx = canvas.getContext("2d");
    const w = canvas.width;
    const h = canvas.height;
    const cx = w / 2;
    const cy = h - 30;
    const r = Math.min(cx - 60, cy - 36); // room for the threshold label above the arc
    const angle = (v) => Math.PI + Math.max(0, Math.min(1, v)) * Math.PI;
    ctx.clearRect(0, 0, w, h);
    ctx.lineCap = "butt";
    ctx.lineWidth = 22;
    ctx.strokeStyle = "#dfe3e8";
    ctx.beginPath(); ctx.arc(cx, cy, r, Math.PI, 2 * Math.PI); ctx.stroke();
    ctx.strokeStyle = same ? "#17753b" : "#a32020";
    ctx.beginPath(); ctx.arc(cx, cy, r, Math.PI, angle(similarity)); ctx.stroke();
    // The threshold: a dark tick across the arc, labelled.
    const ta = angle(threshold);
    ctx.strokeStyle = "#1d232b";
    ctx.lineWidth = 3;
    ctx.beginPath();
    ctx.moveTo(cx + (r - 18) * Math.cos(ta), cy + (r - 18) * Math.sin(ta));
    ctx.lineTo(cx + (r + 18) * Math.cos(ta), cy + (r + 18) * Math.sin(ta));
    ctx.stroke();
    ctx.fillStyle = "#1d232b";
    ctx.font = "13px sans-serif";
    ctx.textAlign = Math.cos(ta) < -0.2 ? "right" : Math.cos(ta) > 0.2 ? "left" : "center";
    ctx.fillText(`threshold ${fmt(threshold, 2)}`, cx + (r + 22) * Math.cos(ta), cy + (r + 22) * Math.sin(ta) - 2);
    // The needle.
    const sa = angle(similarity);
    ctx.lineWidth = 4;
    ctx.beginPath(); ctx.moveTo(cx, cy); ctx.lineTo(cx + (r - 6) * Math.cos(sa), cy + (r - 6) * Math.sin(sa)); ctx.stroke();
    ctx.beginPath(); ctx.arc(cx, cy, 7, 0, 2 * Math.PI); ctx.fill();
    ctx.font = "bold 22px sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(fmt(similarity, 3), cx, cy + 26);
    ctx.font = "12px sans-serif";
    ctx.textAlign = "left"; ctx.fillText("0", cx - r - 10, cy + 18);
    ctx.textAlign = "right"; ctx.fillText("1", cx + r + 10, cy + 18);
    canvas.dataset.similarity = String(similarity);
    canvas.dataset.threshold = String(threshold);
    canvas.setAttribute("aria-label", `Similarity ${fmt(similarity, 3)} of 1; threshold ${fmt(threshold, 2)}`);
  }

  const ROWS = [
    ["Box (x1, y1, x2, y2)", (f) => `${f.x1}, ${f.y1}, ${f.x2}, ${f.y2}`],
    ["Faces found", (f) => f.faces_found],
    ["Detection score", (f) => fmt(f.detection_score, 3)],
    ["Eye distance (px)", (f) => fmt(f.eye_dist, 1)],
    ["Face quality", (f) => fmt(f.face_quality, 3)],
    ...COMPONENTS.map((c) => [`quality: ${c}`, (f) => (f.quality_components ? fmt(f.quality_components[c], 3) : "–"), c]),
    ["Luminance (0\u2013255)", (f) => fmt(f.face_luminance, 1)],
    ["Occlusion", (f) => fmt(f.face_occlusion, 3)],
    ["Left eye closed", (f) => fmt(f.left_eye_closed, 3)],
    ["Right eye closed", (f) => fmt(f.right_eye_closed, 3)],
    ["Mouth opened", (f) => fmt(f.mouth_opened, 3)],
    ["Pitch (\u00b0, + = up)", (f) => fmt(f.pitch, 1)],
    ["Yaw (\u00b0)", (f) => fmt(f.yaw, 1)],
    ["Roll (\u00b0)", (f) => fmt(f.roll, 1)],
    ["Orientation correction (\u00b0)", (f) => (f.orientation_correction ?? 0)],
  ];

  function fillTable(face1, face2) {
    const body = $("attributes").tBodies[0];
    body.replaceChildren();
    for (const [name, value, component] of ROWS) {
      const tr = document.createElement("tr");
      if (component) { tr.className = "component"; tr.dataset.component = component; }
      const th = document.createElement("th");
      th.scope = "row";
      setText(th, name);
      tr.append(th);
      for (const face of [face1, face2]) {
        const td = document.createElement("td");
        setText(td, value(face));
        tr.append(td);
      }
      body.append(tr);
    }
  }

  // ------------------------------------------------------------------------------------------ history

  // One page of the token's company's scans, newest first; ``note`` is shown once the list is in.
  async function refreshHistory(page, note) {
    const status = $("history-status");
    if (!token()) { setText(status, "Paste a token to see its company's scans."); return; }
    let resp;
    try {
      resp = await api("GET", `/v1/face-recognition?page=${page}&size=${HISTORY_SIZE}&sort=createdDate,desc`);
    } catch (e) {
      setText(status, `Could not reach the server (${e.message}).`);
      return;
    }
    if (!resp.ok) { setText(status, (await problemOf(resp)).message); return; }
    const p = await resp.json();
    state.page = p.number;
    const list = $("history-list");
    list.replaceChildren();
    for (const s of p.content) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.id = s.id;
      button.dataset.reference = s.reference;
      setText(button, `${s.reference} \u00b7 ${s.compareResult} \u00b7 ${fmt(s.compareSimilarity, 3)} \u00b7 ` +
        `${s.createdDate.replace("T", " ").slice(0, 19)} UTC`);
      button.addEventListener("click", () => openScan(s.id));
      li.append(button);
      list.append(li);
    }
    setText(status, note || (p.totalElements ? "" : "No scans yet for this token's company."));
    setText($("history-page"), `Page ${p.number + 1} of ${Math.max(p.totalPages, 1)} (${p.totalElements} scans)`);
    $("history-prev").disabled = p.first;
    $("history-next").disabled = p.last;
  }

  function showScan(s) {
    state.scan = s;
    const dl = $("scan-fields");
    dl.replaceChildren();
    const rows = [
      ["Id", s.id], ["Reference", s.reference], ["Verdict", s.compareResult],
      ["Similarity", fmt(s.compareSimilarity, 3)],
      ["Threshold", s.threshold == null ? "not recorded" : fmt(s.threshold, 2)],
      ["Quality filter", s.qualityFilter == null ? "not recorded" : s.qualityFilter],
      ["Channel", s.salesChannel], ["Created", `${s.createdDate} UTC by ${s.createdById}`],
      ["Updated", s.updatedDate ? `${s.updatedDate} UTC by ${s.updatedById}` : "never"],
      ["Extraction time", `${fmt(s.elapsedTime, 3)} s`],
    ];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); setText(dt, k);
      const dd = document.createElement("dd"); setText(dd, v);
      dl.append(dt, dd);
    }
    $("scan-reference").value = s.reference;
    $("scan-edit").hidden = !mayUse("face:update");
    $("scan-delete").hidden = !mayUse("face:delete");
    $("scan-delete-confirm").hidden = true;
    const box = $("scan");
    box.dataset.id = s.id;
    box.hidden = false;
  }

  async function openScan(id) {
    setText($("scan-status"), "");
    let resp;
    try { resp = await api("GET", `/v1/face-recognition/${encodeURIComponent(id)}`); } catch (e) {
      setText($("history-status"), `Could not reach the server (${e.message}).`);
      return;
    }
    if (!resp.ok) { setText($("history-status"), (await problemOf(resp)).message); return; }
    showScan(await resp.json());
    $("scan").focus();
  }

  async function saveReference(e) {
    e.preventDefault();
    if (!state.scan) return;
    const resp = await api("PUT", `/v1/face-recognition/${encodeURIComponent(state.scan.id)}`,
      { json: { reference: $("scan-reference").value } });
    if (!resp.ok) { setText($("scan-status"), (await problemOf(resp)).message); return; }
    showScan(await resp.json());
    setText($("scan-status"), "Reference saved.");
    refreshHistory(state.page);
  }

  async function deleteScan() {
    if (!state.scan) return;
    const id = state.scan.id;
    const resp = await api("DELETE", `/v1/face-recognition/${encodeURIComponent(id)}`);
    if (!resp.ok) { setText($("scan-status"), (await problemOf(resp)).message); return; }
    $("scan").hidden = true;
    state.scan = null;
    await refreshHistory(state.page, `Scan ${id} deleted.`);
    $("history-refresh").focus();
  }

  // ------------------------------------------------------------------------------------------ start

  async function init() {
    try {
      const resp = await fetch("/demo/config", { cache: "no-store" });
      if (resp.ok) state.config = { ...state.config, ...(await resp.json()) };
    } catch (e) { /* defaults above */ }
    const c = state.config;
    $("get-token").hidden = !c.token_button;
    $("token-note").hidden = !c.token_button;
    if (c.demo_company) setText($("demo-company"), c.demo_company);
    $("threshold").placeholder = `server default: ${fmt(c.threshold, 2)}`;
    const auto = $("quality_filter").querySelector('option[value="AUTO"]');
    setText(auto, `AUTO (server default: ${c.quality_filter})`);
    try { $("token").value = sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { /* storage off */ }

    $("token").addEventListener("change", () => { saveToken(); refreshHistory(0); });
    $("token-show").addEventListener("change", (e) => { $("token").type = e.target.checked ? "text" : "password"; });
    $("get-token").addEventListener("click", getDemoToken);
    $("clear-token").addEventListener("click", () => {
      $("token").value = ""; saveToken(); setText($("token-status"), "Token forgotten.");
      $("history-list").replaceChildren(); $("scan").hidden = true;
    });
    FIELDS.forEach(wireSlot);
    FIELDS.forEach((f) => drawPhoto(f, null));
    $("camera-start").addEventListener("click", startCamera);
    $("camera-capture").addEventListener("click", capture);
    $("camera-stop").addEventListener("click", stopCamera);
    $("compare-form").addEventListener("submit", compare);
    $("history-refresh").addEventListener("click", () => refreshHistory(state.page));
    $("history-prev").addEventListener("click", () => refreshHistory(Math.max(0, state.page - 1)));
    $("history-next").addEventListener("click", () => refreshHistory(state.page + 1));
    $("scan-edit").addEventListener("submit", saveReference);
    $("scan-delete").addEventListener("click", () => {
      $("scan-delete-confirm").hidden = false; $("scan-delete-confirm").focus();
    });
    $("scan-delete-confirm").addEventListener("click", deleteScan);
    $("scan-close").addEventListener("click", () => { $("scan").hidden = true; $("history-refresh").focus(); });
    document.body.dataset.ready = "true";
    if (token()) refreshHistory(0);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
