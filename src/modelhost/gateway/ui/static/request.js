// The request box: pick a version, stage or alias, load its example, send it, read the answer.
import { invoke, modelhost } from "./api.js";
import { h, replace } from "./dom.js";

export function requestBox(name) {
  const target = h("select", { id: "send-to" });
  const body = h("textarea", { id: "request-body", rows: "10", spellcheck: "false", placeholder: '{"dataframe_split": {"columns": [...], "data": [[...]]}}' });
  const note = h("p", { class: "muted", role: "status" });
  const statusLine = h("p", { class: "answer-status", role: "status", "aria-live": "polite" });
  const answer = h("pre", { id: "response-body", class: "answer", tabindex: "0", "aria-label": "Response" });
  let byRef = new Map(); // what the select offers: ref -> the version it names
  let shown = "";

  const loadButton = h("button", { type: "button", onclick: load }, "Load Example");
  const sendButton = h("button", { type: "button", class: "primary", onclick: send }, "Send Request");
  const el = h("section", { class: "card request", "aria-label": "Query the model" },
    h("div", {},
      h("h2", {}, "Query the model"),
      h("div", { class: "row" }, h("label", { for: "send-to" }, "Send to"), target),
      h("label", { for: "request-body" }, "Request"), body,
      h("div", { class: "row" }, loadButton, sendButton), note),
    h("div", {}, h("h2", {}, "Response"), statusLine, answer));

  function versions(list) {
    const options = new Map();
    for (const v of list) options.set(v.endpoint_version_name, { kind: "Version", version: v.endpoint_version_name });
    for (const v of list) for (const stage of v.stages || []) options.set(stage, { kind: "Stage", version: v.endpoint_version_name });
    for (const v of list) for (const alias of v.aliases || []) options.set(alias, { kind: "Alias", version: v.endpoint_version_name });
    const key = JSON.stringify([...options]);
    if (key === shown) return;
    shown = key;
    const keep = target.value;
    byRef = options;
    const groups = ["Version", "Stage", "Alias"].map((kind) => {
      const refs = [...options].filter(([, o]) => o.kind === kind);
      return refs.length ? h("optgroup", { label: kind }, refs.map(([ref, o]) => h("option", { value: ref }, kind === "Version" ? `Version ${ref}` : `${ref} (version ${o.version})`))) : null;
    });
    replace(target, groups);
    if (!options.size) replace(target, h("option", { value: "" }, "No version served yet"));
    // The newest version by default; the user's choice stays while versions come and go.
    const newest = list.map((v) => v.endpoint_version_name).sort((a, b) => Number(b) - Number(a))[0];
    target.value = options.has(keep) ? keep : newest || "";
  }

  async function load() {
    note.textContent = "";
    const chosen = byRef.get(target.value);
    if (!chosen) return (note.textContent = "No version to load an example of yet.");
    loadButton.disabled = true;
    try {
      const { example, source } = await modelhost.example(name, chosen.version);
      body.value = JSON.stringify(example, null, 2);
      note.textContent = source === "signature"
        ? `Version ${chosen.version} has no input example: this skeleton follows its signature; fill in the values.`
        : `The input example logged with version ${chosen.version}.`;
    } catch (error) {
      note.textContent = error.message;
    } finally {
      loadButton.disabled = false;
    }
  }

  async function send() {
    if (!target.value) return (note.textContent = "No version to send to yet.");
    sendButton.disabled = true;
    statusLine.textContent = "Sending…";
    try {
      const result = await invoke(name, target.value, body.value);
      let text = result.text;
      let message = "";
      try {
        const parsed = JSON.parse(text);
        text = JSON.stringify(parsed, null, 2);
        if (result.status >= 400 && parsed.message) message = parsed.message;
      } catch {
        // not JSON: shown as it came
      }
      replace(statusLine,
        h("span", { class: `code ${result.status < 400 ? "ok" : "bad"}` }, String(result.status)),
        ` · ${Math.round(result.latencyMs)} ms`,
        result.version ? ` · answered by version ${result.version}` : "",
        message ? h("span", { class: "error-message" }, message) : "");
      answer.textContent = text;
    } catch (error) {
      replace(statusLine, h("span", { class: "error" }, `No answer: ${error.message}`));
      answer.textContent = "";
    } finally {
      sendButton.disabled = false;
    }
  }

  return { el, versions };
}
