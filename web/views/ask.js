// Search and ask across honey jars: ranked passages, or Bee's answer with its sources (each
// with its page, linking to the document in its jar).
import { api, describe } from '../lib/api.js';
import { alertBox, busy, h, showError } from '../lib/dom.js';
import { renderMarkdown } from '../lib/markdown.js';

export async function askView() {
  const { honey_jars: jars } = await api('GET', '/api/knowledge/honey-pots?limit=200');
  const names = new Map(jars.map((jar) => [jar.id, jar.name]));
  const status = alertBox();
  const questionId = 'ask-question';
  const question = h('textarea', { id: questionId, name: 'question', rows: 2, required: true, maxlength: 4000 });
  const choices = jars.map((jar) => h('label', { class: 'check' },
    h('input', { type: 'checkbox', name: 'ask-jar', value: jar.id }), ' ', jar.name));
  const results = h('div', { id: 'ask-results', 'aria-live': 'polite' });
  const form = h('form', { class: 'card', 'aria-labelledby': 'ask-title' },
    h('h1', { id: 'ask-title' }, 'Search and ask'),
    h('label', { for: questionId }, 'Question or search words'), question,
    jars.length
      ? h('fieldset', {}, h('legend', {}, 'In these honey jars (none ticked: all I can read)'), choices)
      : h('p', { class: 'muted' }, 'You have no honey jars yet: create one under Honey jars.'),
    status,
    h('div', { class: 'row' },
      h('button', { type: 'submit', id: 'ask' }, 'Ask Bee'),
      h('button', { type: 'button', class: 'secondary', id: 'search', onclick: search }, 'Search')));

  const selected = () => choices.map((label) => label.querySelector('input')).filter((c) => c.checked).map((c) => c.value);
  // A jar read through a marketplace license answers, but its pages are not the buyer's to open.
  const sourceLink = (jarId, documentId, text) => names.has(jarId)
    ? h('a', { href: '#/jars/' + jarId + '/' + documentId }, text)
    : h('span', {}, text);

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      try {
        const reply = await api('POST', '/api/knowledge/ask', { question: question.value.trim(), honey_jar_ids: selected() });
        const answer = h('div', { class: 'answer' });
        renderMarkdown(answer, reply.answer);
        results.replaceChildren(h('section', { class: 'card', 'aria-labelledby': 'answer-title' },
          h('h2', { id: 'answer-title' }, 'Answer'), answer,
          h('p', { class: 'muted' }, reply.model_used, ' · ', reply.response_time.toFixed(2), ' s · confidence ', Math.round(reply.confidence * 100), '%'),
          h('h2', {}, 'Sources'),
          reply.sources.length
            ? h('ol', { class: 'sources', id: 'sources' }, reply.sources.map((source) => h('li', {},
              sourceLink(source.honey_jar_id, source.document_id, source.title),
              source.page ? ' · page ' + source.page : '',
              source.section ? ' · ' + source.section : '',
              ' · ', names.get(source.honey_jar_id) || 'a licensed honey jar')))
            : h('p', { class: 'muted' }, 'No source matched: the answer is not grounded in your documents.')));
      } catch (error) {
        showError(status, describe(error));
      }
    });
  });

  function search() {
    if (!question.reportValidity()) return;
    busy(form, async () => {
      try {
        const reply = await api('POST', '/api/knowledge/search', { query: question.value.trim(), honey_jar_ids: selected(), limit: 10 });
        results.replaceChildren(h('section', { class: 'card', 'aria-labelledby': 'results-title' },
          h('h2', { id: 'results-title' }, reply.total_results + ' results'),
          h('ol', { class: 'sources' }, reply.results.map((result) => h('li', {},
            sourceLink(result.honey_jar_id, result.document_id, result.title),
            result.metadata.page ? ' · page ' + result.metadata.page : '',
            ' · score ', result.score.toFixed(3),
            result.content ? h('p', { class: 'snippet' }, result.content) : null)))));
      } catch (error) {
        showError(status, describe(error));
      }
    });
  }
  return h('div', {}, form, results);
}
