// The submit form's bundle: uploaded to the hub in slices as soon as it is chosen
// (resumable: a blip asks the hub where it got to and goes on from there), with a progress
// bar; the form then sends only its digest. Without this script the form sends the file.
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

  const call = async (url, options) => {
    const headers = { "X-CSRFToken": csrf, ...(options.headers || {}) };
    const reply = await fetch(url, { credentials: "same-origin", ...options, headers });
    const body = await reply.json().catch(() => ({}));
    return { reply, body };
  };
  const refused = ({ reply, body }) =>
    new Error(body.error?.message || `the hub answered ${reply.status}`);
  const pause = (seconds) => new Promise((done) => setTimeout(done, seconds * 1000));

  const upload = async (file) => {
    const begun = await call(input.dataset.uploads, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ size: file.size }),
    });
    if (!begun.reply.ok) throw refused(begun);
    const where = `${input.dataset.uploads}/${encodeURIComponent(begun.body.upload_id)}`;
    let state = begun.body;
    let failures = 0;
    progress.max = file.size;
    progress.hidden = false;
    while (!state.complete) {
      progress.value = state.offset;
      let sent;
      try {
        sent = await call(where, {
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
        sent = await call(where, { method: "GET" }); // where the hub got to
      }
      if (sent.reply.status === 409) { // another offset is held: go on from there
        const held = Number(sent.reply.headers.get("Upload-Offset"));
        if (!Number.isSafeInteger(held) || held === state.offset) throw refused(sent);
        state = { ...state, offset: held };
        continue;
      }
      if (!sent.reply.ok) throw refused(sent);
      state = sent.body;
    }
    progress.value = file.size;
    return state.digest;
  };

  const start = () => {
    const file = input.files[0];
    digestField.value = "";
    uploaded = null;
    status.classList.remove("error-text");
    if (!file) { pending = null; return; }
    status.textContent = `Uploading ${file.name}…`;
    pending = upload(file).then(
      (digest) => {
        digestField.value = digest;
        uploaded = file;
        status.textContent = `Bundle on the hub: ${digest}`;
        form.dispatchEvent(new Event("input")); // the price cap may follow its task.json
        return true;
      },
      (error) => {
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
})();
