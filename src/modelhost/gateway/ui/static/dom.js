// A few helpers to build markup without innerHTML: text is always text, never parsed.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return el;
}

export function when(ms) {
  return new Date(ms).toLocaleString();
}

// A readonly field with a Copy button: URLs are meant to be pasted elsewhere.
export function copyable(text, label) {
  const field = h("input", { type: "text", readonly: true, value: text, "aria-label": label, class: "url" });
  const done = h("span", { class: "copied", role: "status" });
  const button = h("button", {
    type: "button",
    class: "small",
    "aria-label": `Copy ${label}`,
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
      } catch {
        field.select(); // not a secure context: leave it selected for Ctrl-C
        document.execCommand("copy");
      }
      done.textContent = "Copied";
      setTimeout(() => (done.textContent = ""), 1500);
    },
  }, "Copy");
  return h("span", { class: "copyable" }, field, button, done);
}

// Tabs with the roles and keys of the WAI-ARIA tabs pattern.
export function tabs(items, onchange) {
  const list = h("div", { role: "tablist", class: "tabs" });
  const panels = [];
  const buttons = items.map((item, i) => {
    const panel = h("div", { role: "tabpanel", id: `panel-${item.id}`, "aria-labelledby": `tab-${item.id}`, hidden: i !== 0, tabindex: "0" }, item.panel);
    panels.push(panel);
    return h("button", {
      type: "button", role: "tab", id: `tab-${item.id}`, "aria-controls": `panel-${item.id}`,
      "aria-selected": i === 0 ? "true" : "false", tabindex: i === 0 ? "0" : "-1",
      onclick: () => select(i),
      onkeydown: (e) => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
        if (step) { select((i + step + items.length) % items.length); buttons[(i + step + items.length) % items.length].focus(); }
      },
    }, item.label);
  });
  let current = items[0].id;
  function select(i) {
    buttons.forEach((b, j) => { b.setAttribute("aria-selected", i === j ? "true" : "false"); b.tabIndex = i === j ? 0 : -1; });
    panels.forEach((p, j) => (p.hidden = i !== j));
    current = items[i].id;
    onchange?.(current);
  }
  list.append(...buttons);
  return { el: h("div", { class: "tabbed" }, list, panels), current: () => current };
}
