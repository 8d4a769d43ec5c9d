// Building the page: elements from a tag, attributes and children. Text always goes in as
// text nodes, never as HTML, so nothing a user typed can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'value') {
      el.value = value;
    } else {
      el.setAttribute(key, value === true ? '' : value);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// A labelled form field: the label's `for` names the input.
let fieldCount = 0;
export function field(label, attrs) {
  const id = attrs.id || 'field-' + ++fieldCount;
  return [h('label', { for: id }, label), h('input', { ...attrs, id })];
}

// A live region for a form's outcome, read out by screen readers.
export function alertBox() {
  return h('div', { class: 'alert', role: 'alert', 'aria-live': 'assertive' });
}

export function showError(box, message) {
  box.className = 'alert error';
  box.textContent = message;
}

export function showOk(box, message) {
  box.className = 'alert ok';
  box.textContent = message;
}

// Disables a form's buttons while `work` runs, so a double click sends nothing twice.
export async function busy(form, work) {
  const buttons = form.querySelectorAll('button');
  buttons.forEach((b) => (b.disabled = true));
  try {
    return await work();
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

export function formatTime(rfc3339) {
  if (!rfc3339) return 'never';
  return new Date(rfc3339).toLocaleString();
}
