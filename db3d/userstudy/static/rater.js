// The rater page: one question at a time; <- / 1 picks the left video, -> / 2 the right one.
// Every answer is POSTed as JSON; a failed POST is retried with the same body (the server treats a
// repeat as a duplicate), so an answer is never lost or counted twice. Reloading the link resumes.
(function () {
  "use strict";
  const app = document.getElementById("app");
  const token = app.dataset.token;
  const api = "/api/r/" + encodeURIComponent(token);
  const $ = (id) => document.getElementById(id);
  const els = {
    trial: $("trial"), done: $("done"), question: $("question"), prompt: $("prompt"),
    promptText: $("prompt-text"), photos: $("photos"), strip: $("photo-strip"),
    left: $("left-video"), right: $("right-video"), bLeft: $("choose-left"), bRight: $("choose-right"),
    bar: $("bar"), progress: $("progress-text"), status: $("status"), retry: $("retry"),
  };
  let current = null;   // the trial on screen
  let ready = false;    // both videos loaded: answers accepted
  let busy = false;     // an answer is being saved
  let shownAt = 0;
  let pending = null;   // the body of an answer not yet saved (for Retry)

  function setStatus(text, isError) {
    els.status.textContent = text || "";
    els.status.classList.toggle("error", !!isError);
  }

  function setReady(value) {
    ready = value;
    app.dataset.ready = value ? "1" : "0";
    app.dataset.trial = value && current ? current.trial_id : "";
    els.bLeft.disabled = els.bRight.disabled = !value;
  }

  function loadImage(img, src) {
    return new Promise((resolve) => {
      const finish = () => resolve();
      img.onload = finish;
      img.onerror = finish;
      setTimeout(finish, 8000);
      img.src = src;
      if (img.complete && img.naturalWidth > 0 && img.getAttribute("src") === src) {
        // cached and already decoded: onload may have fired before we listened
        setTimeout(finish, 0);
      }
    });
  }

  function render(state) {
    const n = state.total || 0;
    const answered = state.answered || 0;
    els.bar.style.width = (n ? (100 * answered) / n : 0).toFixed(1) + "%";
    if (state.done) {
      current = null;
      setReady(false);
      els.progress.textContent = n + " of " + n + " answered";
      els.trial.hidden = true;
      els.done.hidden = false;
      app.dataset.done = "1";
      return;
    }
    app.dataset.done = "0";
    const t = state.trial;
    current = t;
    setReady(false);
    els.progress.textContent = "Question " + (answered + 1) + " of " + n;
    els.question.textContent = t.question;
    els.prompt.hidden = !t.prompt;
    els.promptText.textContent = t.prompt || "";
    els.strip.replaceChildren();
    els.photos.hidden = !(t.photos && t.photos.length);
    for (const src of t.photos || []) {
      const im = document.createElement("img");
      im.src = src;
      im.alt = "photo of the subject";
      els.strip.appendChild(im);
    }
    els.bLeft.classList.remove("picked");
    els.bRight.classList.remove("picked");
    els.trial.classList.add("loading");
    els.trial.hidden = false;
    els.done.hidden = true;
    Promise.all([loadImage(els.left, t.left), loadImage(els.right, t.right)]).then(() => {
      if (current !== t) return;
      els.trial.classList.remove("loading");
      shownAt = performance.now();
      setReady(true);
    });
  }

  async function request(url, options) {
    const resp = await fetch(url, Object.assign({ cache: "no-store", credentials: "omit" }, options || {}));
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    return { status: resp.status, body: body };
  }

  async function loadNext() {
    setStatus("");
    try {
      const r = await request(api + "/next");
      if (r.status !== 200 || !r.body) throw new Error((r.body && r.body.error) || "HTTP " + r.status);
      render(r.body);
    } catch (e) {
      setStatus("Could not load the next question (" + e.message + ").", true);
      els.retry.hidden = false;
      els.retry.onclick = () => { els.retry.hidden = true; loadNext(); };
    }
  }

  async function send(body, attempt) {
    try {
      const r = await request(api + "/answer", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      if ((r.status === 200 || r.status === 409) && r.body) {  // 409: answered before; keep going
        pending = null;
        busy = false;
        setStatus("");
        render(r.body);
        return;
      }
      if (r.status >= 400 && r.status < 500 && r.status !== 408 && r.status !== 429) {
        throw Object.assign(new Error((r.body && r.body.error) || "HTTP " + r.status), { fatal: true });
      }
      throw new Error("HTTP " + r.status);
    } catch (e) {
      if (!e.fatal && attempt < 3) {
        setStatus("Saving...");
        setTimeout(() => send(body, attempt + 1), 500 * 2 ** attempt);
        return;
      }
      busy = false;
      setStatus("Your answer could not be saved (" + e.message + "). Check the connection and press Retry.", true);
      els.retry.hidden = false;
      els.retry.onclick = () => {
        els.retry.hidden = true;
        if (pending) { busy = true; send(pending, 0); } else { loadNext(); }
      };
    }
  }

  function choose(side) {
    if (!ready || busy || !current) return;
    busy = true;
    setReady(false);
    (side === "left" ? els.bLeft : els.bRight).classList.add("picked");
    pending = { trial_id: current.trial_id, choice: side, ms: Math.round(performance.now() - shownAt) };
    send(pending, 0);
  }

  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || e.repeat) return;
    if (e.key === "ArrowLeft" || e.key === "1") { e.preventDefault(); choose("left"); }
    else if (e.key === "ArrowRight" || e.key === "2") { e.preventDefault(); choose("right"); }
  });
  els.bLeft.addEventListener("click", () => choose("left"));
  els.bRight.addEventListener("click", () => choose("right"));
  loadNext();
})();
