// The submit form's bundle: uploaded to the hub in slices as soon as it is chosen
// (resumable: a blip asks the hub where it got to and goes on from there), with a progress
// bar; the form then sends only its digest. Without this script the form sends the file.
// The digest of a file sent before (same name, size and time) is remembered in this
// browser: announced first, the hub answers that it holds it and nothing is sent again. An
// upload given up (another file chosen, the page left) is cancelled on the hub, so it does
// not hold the account's quota.
"use strict";
(function () {
  const input = document.getElementById("bundle-file");
  const form = input && input.form;
  if (!form) return;
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const digestField = document.getElementById("bundle-digest");
  const progress = document.getElementById("bundle-progress");
  const status = document.getElementById("bundle-status");
  const slice = Number(input.dataset.slice) || 8 * 1024 * 1024;
  const RETRIES = 5;
  let pending = null; // the running upload: a promise of whether it ended on the hub
  let uploaded = null; // the File whose digest is in the form
  let chosen = 0; // the current choice of a file: an upload of an earlier one stops

  let unfinished = null; // the URL of the upload under way, to cancel when given up

  const call = async (url, options) => {
    const headers = { "X-CSRFToken": csrf, ...(options.headers || {}) };
    const reply = await fetch(url, { credentials: "same-origin", ...options, headers });
    // A success must say where the upload stands; an error's body is only its message.
    const body = reply.status === 204 ? {} : await reply.json().catch((error) => {
      if (reply.ok) throw error;
      return {};
    });
    return { reply, body };
  };
  const cancel = (where, keepalive = false) => {
    if (unfinished === where) unfinished = null;
    return call(where, { method: "DELETE", keepalive }).catch(() => null); // expires anyway
  };
  const memory = (file) => `hivemind-upload:${file.name}:${file.size}:${file.lastModified}`;
  const remembered = (file) => {
    try { return localStorage.getItem(memory(file)) || ""; } catch { return ""; }
  };
  const remember = (file, digest) => {
    try {
      if (digest) localStorage.setItem(memory(file), digest);
      else localStorage.removeItem(memory(file));
    } catch { /* storage off: every choice is sent */ }
  };
  const refused = ({ reply, body }) =>
    new Error(body.error?.message || `the hub answered ${reply.status}`);
  const pause = (seconds) => new Promise((done) => setTimeout(done, seconds * 1000));

  // The file's digest on the hub; a remembered digest that turns out wrong (the file changed
  // within its time's resolution) is forgotten and the file sent as new.
  const upload = async (file, choice) => {
    const digest = remembered(file);
    try {
      return await send(file, choice, digest);
    } catch (error) {
      if (!digest || choice !== chosen) throw error;
      remember(file, "");
      return send(file, choice, "");
    }
  };

  const send = async (file, choice, digest) => {
    const begun = await call(input.dataset.uploads, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(digest ? { size: file.size, digest } : { size: file.size }),
    });
    if (!begun.reply.ok) throw refused(begun);
    if (begun.body.complete) return begun.body.digest; // the hub holds it: nothing to send
    const where = `${input.dataset.uploads}/${encodeURIComponent(begun.body.upload_id)}`;
    unfinished = where;
    let state = begun.body;
    let failures = 0; // since the hub last took bytes
    let lost = false; // the last call got no answer: ask where the hub got to first
    progress.max = file.size;
    progress.hidden = false;
    while (!state.complete) {
      if (choice !== chosen) { // another file was chosen: stop sending this one, and drop it
        await cancel(where);
        return "";
      }
      progress.value = state.offset;
      let sent;
      try {
        sent = lost
          ? await call(where, { method: "GET" })
          : await call(where, {
            method: "PATCH",
            headers: {
              "Content-Type": "application/offset+octet-stream",
              "Upload-Offset": String(state.offset),
            },
            body: file.slice(state.offset, state.offset + slice),
          });
      } catch (error) {
        if (++failures > RETRIES) throw error;
        await pause(failures);
        lost = true;
        continue;
      }
      lost = false;
      let next;
      if (sent.reply.status === 409) { // another offset is held: go on from there
        const held = Number(sent.reply.headers.get("Upload-Offset"));
        if (!Number.isSafeInteger(held) || held === state.offset) throw refused(sent);
        next = { ...state, offset: held };
      } else if (sent.reply.ok) {
        next = sent.body;
      } else {
        throw refused(sent);
      }
      if (next.complete || next.offset > state.offset) failures = 0; // the blip is over
      state = next;
    }
    if (unfinished === where) unfinished = null;
    progress.value = file.size;
    remember(file, state.digest);
    return state.digest;
  };

  const start = () => {
    const file = input.files[0];
    const choice = ++chosen;
    digestField.value = "";
    uploaded = null;
    status.classList.remove("error-text");
    if (!file) { pending = null; return; }
    status.textContent = `Uploading ${file.name}…`;
    pending = upload(file, choice).then(
      (digest) => {
        if (choice !== chosen) return false; // an earlier file's upload: the form moved on
        digestField.value = digest;
        uploaded = file;
        status.textContent = `Bundle on the hub: ${digest}`;
        form.dispatchEvent(new Event("input")); // the price cap may follow its task.json
        return true;
      },
      (error) => {
        if (choice !== chosen) return false;
        status.textContent = `The upload failed: ${error.message}`;
        status.classList.add("error-text");
        pending = null;
        return false;
      },
    );
  };

  input.addEventListener("change", start);
  form.addEventListener("submit", async (event) => {
    const file = input.files[0];
    if (!file) return;
    if (file === uploaded) { input.disabled = true; return; } // its digest goes, not the file
    event.preventDefault();
    if (!pending) start();
    if (await pending) form.requestSubmit(event.submitter);
  });
  // Back to this page from the browser's cache: the file field works again.
  window.addEventListener("pageshow", () => { input.disabled = false; });
  // Leaving the page while an upload runs: it would never be resumed from here.
  window.addEventListener("pagehide", () => { if (unfinished) cancel(unfinished, true); });
})();
