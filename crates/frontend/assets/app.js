"use strict";

(function () {
  const MAX_PARALLEL_UPLOADS = 3;
  // Browsers open only about six HTTP/1.1 connections per host. Long polls hold theirs for
  // up to 20 s, so they share a few slots and leave room for uploads and images.
  const POLL_SLOTS = 3;
  const LONG_WAIT = "20s";
  const SHORT_WAIT = "2s";
  const MIN_POLL_GAP_MS = 1000;
  const MAX_BACKOFF_MS = 10000;

  const form = document.getElementById("upload-form");
  const fileInput = document.getElementById("uploadfile");
  const dropZone = document.getElementById("drop-zone");
  const dropCount = document.getElementById("drop-count");
  const opSelect = document.getElementById("op");
  const formatSelect = document.getElementById("format");
  const formError = document.getElementById("form-error");
  const cardsSection = document.getElementById("cards");
  if (!form || !fileInput || !opSelect || !cardsSection) {
    return;
  }

  const STATUS_TEXT = {
    uploading: "Uploading…",
    queued: "Queued",
    processing: "Processing…",
    finished: "Done",
  };

  let droppedFiles = null;

  // ---- Form: parameters of the chosen operation -------------------------------------

  function showParams() {
    const op = opSelect.value;
    for (const wrapper of form.querySelectorAll(".param")) {
      wrapper.hidden = wrapper.dataset.op !== op;
    }
  }

  function fieldValue(id) {
    const field = document.getElementById(id);
    return field ? String(field.value).trim() : "";
  }

  function composeOp() {
    const op = opSelect.value;
    switch (op) {
      case "blur":
        return `blur:${fieldValue("sigma")}`;
      case "resize":
        return `resize:${fieldValue("width")}x${fieldValue("height")}`;
      case "thumbnail":
        return `thumbnail:${fieldValue("size")}`;
      case "rotate":
        return `rotate:${fieldValue("angle")}`;
      case "flip":
        return `flip:${fieldValue("direction")}`;
      default:
        return op;
    }
  }

  function showFormError(message, focusTarget) {
    formError.textContent = message;
    formError.hidden = false;
    if (focusTarget && typeof focusTarget.focus === "function") {
      focusTarget.focus();
    }
  }

  function hideFormError() {
    formError.hidden = true;
    formError.textContent = "";
  }

  function labelOf(control) {
    const label = control.labels && control.labels[0];
    return label ? label.textContent.trim() : control.name || control.id;
  }

  // Only the visible parameters matter: hidden ones are not sent.
  function firstInvalidParam() {
    for (const wrapper of form.querySelectorAll(".param")) {
      if (wrapper.hidden) {
        continue;
      }
      for (const control of wrapper.querySelectorAll("input, select")) {
        if (!control.checkValidity()) {
          return control;
        }
      }
    }
    return null;
  }

  // ---- Choosing files: the input and drag and drop ----------------------------------

  function describeChoice(files) {
    if (!dropCount) {
      return;
    }
    if (!files || files.length === 0) {
      dropCount.textContent = "";
    } else if (files.length === 1) {
      dropCount.textContent = `1 file chosen: ${files[0].name}`;
    } else {
      dropCount.textContent = `${files.length} files chosen`;
    }
  }

  function hasFiles(event) {
    const types = event.dataTransfer && event.dataTransfer.types;
    return Boolean(types) && Array.prototype.indexOf.call(types, "Files") !== -1;
  }

  fileInput.addEventListener("change", () => {
    droppedFiles = null;
    describeChoice(fileInput.files);
    if (fileInput.files && fileInput.files.length > 0) {
      hideFormError();
    }
  });

  if (dropZone) {
    // dragenter/dragleave also fire when moving across child elements; counting them
    // keeps the highlight steady until the pointer really leaves the zone.
    let dragDepth = 0;

    const endDrag = () => {
      dragDepth = 0;
      dropZone.classList.remove("dragging");
    };

    dropZone.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) {
        return;
      }
      event.preventDefault();
      dragDepth += 1;
      dropZone.classList.add("dragging");
    });

    dropZone.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) {
        return;
      }
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });

    dropZone.addEventListener("dragleave", (event) => {
      if (!hasFiles(event)) {
        return;
      }
      dragDepth = Math.max(0, dragDepth - 1);
      if (dragDepth === 0) {
        dropZone.classList.remove("dragging");
      }
    });

    dropZone.addEventListener("drop", (event) => {
      event.preventDefault();
      endDrag();
      const files = event.dataTransfer ? Array.from(event.dataTransfer.files || []) : [];
      if (files.length === 0) {
        return;
      }
      droppedFiles = files;
      // Mirroring the drop into the input keeps its own display and the no-JS path honest;
      // older browsers refuse the assignment, and the variable above is what counts anyway.
      try {
        fileInput.files = event.dataTransfer.files;
      } catch (_) {
        // Ignored on purpose.
      }
      describeChoice(files);
      hideFormError();
    });

    // A file dropped next to the zone would otherwise make the browser leave the page.
    document.addEventListener("dragover", (event) => {
      if (hasFiles(event) && !dropZone.contains(event.target)) {
        event.preventDefault();
        event.dataTransfer.dropEffect = "none";
      }
    });
    document.addEventListener("drop", (event) => {
      if (hasFiles(event) && !dropZone.contains(event.target)) {
        event.preventDefault();
      }
      endDrag();
    });
    document.addEventListener("dragend", endDrag);
  }

  // ---- Cards ------------------------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function makeFigure(caption, placeholderText) {
    const figure = element("figure");
    const placeholder = element("div", "placeholder", placeholderText);
    figure.append(placeholder, element("figcaption", null, caption));
    return { figure, placeholder };
  }

  function createCard(file, op, format) {
    const article = element("article", "card");
    article.dataset.state = "uploading";
    const name = file.name || "image";
    const status = element("p", "status", STATUS_TEXT.uploading);
    const original = makeFigure("Original", "Not uploaded yet");
    const result = makeFigure("Result", "Not ready yet");
    const images = element("div", "images");
    images.append(original.figure, result.figure);
    const actions = element("div", "actions");
    article.append(element("h2", null, name), status, images, actions);
    return {
      file,
      name,
      op,
      format,
      id: null,
      state: "uploading",
      article,
      status,
      original,
      result,
      actions,
    };
  }

  function setState(card, state, error) {
    card.state = state;
    card.article.dataset.state = state;
    let text;
    if (state === "failed") {
      text = `Failed: ${error || "unknown error"}`;
    } else if (state === "rejected") {
      // The role goes on before the text so screen readers announce the new text as an alert.
      card.status.setAttribute("role", "alert");
      text = `Rejected: ${error || "unknown error"}`;
    } else {
      text = STATUS_TEXT[state] || state;
    }
    if (card.status.textContent !== text) {
      card.status.textContent = text;
    }
  }

  function putImage(slot, className, src, alt) {
    const img = element("img", className);
    img.alt = alt;
    img.decoding = "async";
    img.addEventListener("error", () => {
      const note = element("div", "placeholder", "The image could not be loaded.");
      if (img.parentNode) {
        img.replaceWith(note);
      }
    });
    img.src = src;
    slot.placeholder.replaceWith(img);
    slot.placeholder = img;
  }

  function setPlaceholderText(slot, text) {
    if (slot.placeholder.classList.contains("placeholder")) {
      slot.placeholder.textContent = text;
    }
  }

  function baseName(name) {
    const withoutExt = name.replace(/\.[^.]*$/, "");
    return withoutExt || "image";
  }

  function extensionFor(format, fileName) {
    const wanted = String(format || "").toLowerCase();
    if (wanted === "jpeg" || wanted === "jpg") {
      return "jpg";
    }
    if (wanted === "png" || wanted === "webp") {
      return wanted;
    }
    const match = /\.([A-Za-z0-9]+)$/.exec(fileName);
    return match ? match[1].toLowerCase() : "png";
  }

  function showResult(card, task) {
    const op = (task && task.op) || card.op;
    const src = `/api/v1/tasks/${card.id}/result`;
    putImage(card.result, "result", src, `Result (${op}) of ${card.name}`);
    const link = element("a", "download", "Download result");
    link.href = src;
    link.setAttribute("download", `${baseName(card.name)}-result.${extensionFor(task && task.format, card.name)}`);
    card.actions.prepend(link);
  }

  // ---- Talking to the server --------------------------------------------------------

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  async function errorMessage(response) {
    let body = "";
    try {
      body = await response.text();
    } catch (_) {
      body = "";
    }
    try {
      const data = JSON.parse(body);
      if (data && typeof data.error === "string" && data.error) {
        return data.error;
      }
    } catch (_) {
      // Not JSON: fall through.
    }
    // Some layers in front of the API answer in the plain "Error: reason" form.
    const plain = /^Error: ([^\n]{1,300})\s*$/.exec(body);
    if (plain) {
      return plain[1];
    }
    return response.statusText || `HTTP ${response.status}`;
  }

  // Uploads: at most MAX_PARALLEL_UPLOADS at once, the rest in arrival order.
  const uploadQueue = [];
  let uploadsRunning = 0;

  function enqueueUpload(card) {
    uploadQueue.push(card);
    pumpUploads();
  }

  function pumpUploads() {
    while (uploadsRunning < MAX_PARALLEL_UPLOADS && uploadQueue.length > 0) {
      const card = uploadQueue.shift();
      uploadsRunning += 1;
      upload(card)
        .catch((err) => {
          console.error(err);
          reject(card, "the upload could not be completed");
        })
        .finally(() => {
          uploadsRunning -= 1;
          pumpUploads();
        });
    }
  }

  function reject(card, reason) {
    setState(card, "rejected", reason);
    setPlaceholderText(card.original, "Not uploaded");
    setPlaceholderText(card.result, "No result");
  }

  async function upload(card) {
    const body = new FormData();
    body.append("uploadfile", card.file, card.name);
    body.append("op", card.op);
    if (card.format) {
      body.append("format", card.format);
    }

    let response;
    try {
      response = await fetch("/api/v1/tasks", { method: "POST", body });
    } catch (_) {
      reject(card, "the server could not be reached");
      return;
    }

    if (response.status !== 201) {
      reject(card, await errorMessage(response));
      return;
    }

    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    const id = data ? data.id : undefined;
    if (!((Number.isSafeInteger(id) && id >= 0) || (typeof id === "string" && /^\d+$/.test(id)))) {
      reject(card, "the server sent an unexpected answer");
      return;
    }

    card.id = String(id);
    card.article.dataset.id = card.id;
    setState(card, "queued");
    putImage(card.original, "original", `/api/v1/tasks/${card.id}/original`, `Original of ${card.name}`);
    const link = element("a", "task-link", `Task ${card.id}`);
    link.href = `/tasks/${card.id}`;
    card.actions.append(link);

    watch(card).catch((err) => {
      console.error(err);
      setState(card, "failed", "the page lost track of this task; see its task page");
    });
  }

  // Long-poll slots: a card waiting for one asks a long poll in flight to step aside, so
  // every card still hears about its task within seconds when there are many uploads.
  const pollsActive = new Set();
  const pollWaiters = [];

  function newSlot() {
    const slot = { controller: new AbortController(), long: false, yielded: false };
    pollsActive.add(slot);
    return slot;
  }

  function acquirePollSlot() {
    if (pollsActive.size < POLL_SLOTS) {
      return Promise.resolve(newSlot());
    }
    return new Promise((resolve) => {
      pollWaiters.push(resolve);
      for (const slot of pollsActive) {
        if (slot.long && !slot.yielded) {
          slot.yielded = true;
          slot.controller.abort();
          break;
        }
      }
    });
  }

  function releasePollSlot(slot) {
    if (!pollsActive.delete(slot)) {
      return;
    }
    const next = pollWaiters.shift();
    if (next) {
      next(newSlot());
    }
  }

  function isRetryable(status) {
    return status >= 500 || status === 408 || status === 429;
  }

  async function watch(card) {
    let backoff = 0;
    while (card.state !== "finished" && card.state !== "failed") {
      if (backoff > 0) {
        await sleep(backoff);
      }

      const slot = await acquirePollSlot();
      const crowded = pollWaiters.length > 0;
      slot.long = !crowded;
      const started = Date.now();
      const sentState = card.state;
      const url = `/api/v1/tasks/${card.id}` + (crowded ? `?wait=${SHORT_WAIT}` : `?wait=${LONG_WAIT}`) +
        "&state=" + encodeURIComponent(sentState);

      let response;
      let task = null;
      let failure = null;
      try {
        response = await fetch(url, {
          signal: slot.controller.signal,
          cache: "no-store",
          headers: { Accept: "application/json" },
        });
        if (response.ok) {
          task = await response.json();
        } else if (!isRetryable(response.status)) {
          failure = await errorMessage(response);
        }
      } catch (_) {
        response = null;
        task = null;
      } finally {
        releasePollSlot(slot);
      }

      if (slot.yielded && !task && !failure) {
        // Stepped aside for another card: ask again at once, without counting it as an error.
        continue;
      }

      if (failure !== null) {
        setState(card, "failed", failure);
        setPlaceholderText(card.result, "No result");
        return;
      }

      if (!task || typeof task.state !== "string") {
        // Network error, 5xx or an unreadable answer: back off 1 s, 2, 4 … up to 10 s.
        backoff = backoff === 0 ? 1000 : Math.min(backoff * 2, MAX_BACKOFF_MS);
        continue;
      }
      backoff = 0;

      if (task.state === "finished") {
        setState(card, "finished");
        showResult(card, task);
        return;
      }
      if (task.state === "failed") {
        setState(card, "failed", task.error);
        setPlaceholderText(card.result, "No result");
        return;
      }
      if (task.state !== sentState) {
        setState(card, task.state);
      } else {
        // Guards against a server that answers at once without waiting.
        const elapsed = Date.now() - started;
        if (elapsed < MIN_POLL_GAP_MS) {
          await sleep(MIN_POLL_GAP_MS - elapsed);
        }
      }
    }
  }

  // ---- Submitting -------------------------------------------------------------------

  // The page validates by itself: dropped files do not satisfy the input's `required`.
  form.noValidate = true;

  form.addEventListener("submit", (event) => {
    event.preventDefault();

    const files = droppedFiles && droppedFiles.length > 0
      ? droppedFiles
      : Array.from(fileInput.files || []);
    if (files.length === 0) {
      showFormError("Choose at least one image to upload (or drop images on the box above).", fileInput);
      return;
    }

    const invalid = firstInvalidParam();
    if (invalid) {
      showFormError(`${labelOf(invalid)}: ${invalid.validationMessage || "invalid value"}`, invalid);
      return;
    }
    hideFormError();

    const op = composeOp();
    const format = formatSelect ? formatSelect.value : "";
    const batch = files.map((file) => createCard(file, op, format));
    const fragment = document.createDocumentFragment();
    for (const card of batch) {
      fragment.append(card.article);
    }
    // Newest batch on top; inside a batch the files keep the order they were chosen in.
    cardsSection.prepend(fragment);
    for (const card of batch) {
      enqueueUpload(card);
    }
  });

  opSelect.addEventListener("change", showParams);
  showParams();
  describeChoice(fileInput.files);
})();
