// Bee's answers are markdown. markdown-it renders it with raw HTML off: any HTML in a message
// is shown as text, and javascript:/data: links are refused (web/vendor, see tools/web/vendor.sh).
import markdownit from '../vendor/markdown-it.esm.min.js';

const md = markdownit({ html: false, linkify: true, breaks: true });

export function renderMarkdown(el, text) {
  el.innerHTML = md.render(text);
  for (const link of el.querySelectorAll('a')) {
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
  }
}
