// Tiny DOM builders. Every string goes in as a text node or an attribute value, never as markup,
// so status fields (model names, peer ids, error messages) cannot inject HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h("p", {class: "x"}, "text", otherNode). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

/** An SVG element, same calling convention as h(). */
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
  return el;
}

/** Copy text to the clipboard; falls back to a hidden textarea where the Clipboard API is absent
 * (plain http on a LAN address is not a secure context). */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through to the legacy path
    }
  }
  const area = h("textarea", { readonly: true, style: "position:fixed;top:-1000px;opacity:0" });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** A button that copies `text` and says so for a moment. */
export function copyButton(text, label = "Copy", props = {}) {
  const button = h("button", { type: "button", class: "copy", title: "Copy to the clipboard", ...props }, label);
  button.addEventListener("click", async () => {
    const ok = await copyText(text);
    button.textContent = ok ? "Copied ✓" : "Copy failed";
    button.dataset.copied = ok ? "yes" : "no";
    setTimeout(() => {
      button.textContent = label;
      delete button.dataset.copied;
    }, 1500);
  });
  return button;
}
