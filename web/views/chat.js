// Chatting with Bee: the conversations list (search, delete) and one conversation, whose
// answers stream in over the WebSocket (stop, model, honey jars, token usage, prune).
import { api, describe } from '../lib/api.js';
import { alertBox, h, showError, showOk } from '../lib/dom.js';
import { renderMarkdown } from '../lib/markdown.js';
import { cancelTurn, startTurn } from '../lib/socket.js';

const HISTORY_PAGE = 100;

export async function chatView(app, [conversationId]) {
  const [conversations, models, jars] = await Promise.all([
    api('GET', '/api/chat/conversations?limit=100&sort=updated_at&order=desc'),
    api('GET', '/api/chat/models'),
    api('GET', '/api/knowledge/honey-pots?limit=100'),
  ]);
  let current = conversationId || null;
  const status = alertBox();

  // ---- the conversations list ----
  const search = h('input', { type: 'search', id: 'conversation-search', placeholder: 'Search conversations', 'aria-label': 'Search conversations' });
  const list = h('ul', { class: 'list conversations', id: 'conversation-list', 'aria-label': 'Conversations' });
  let summaries = conversations.conversations;
  function renderList() {
    const searching = search.value.trim() !== '';
    list.replaceChildren(...(summaries.length ? summaries.map((c) => h('li', { 'data-conversation': c.id },
      h('a', { href: '#/chat/' + c.id, 'aria-current': c.id === current ? 'page' : undefined },
        h('strong', {}, c.title || 'New conversation'),
        h('span', { class: 'muted snippet' }, c.last_message)),
      h('button', { type: 'button', class: 'danger small', 'aria-label': 'Delete conversation ' + c.title, onclick: () => remove(c) }, 'Delete')))
      : [h('li', { class: 'muted' }, searching ? 'No conversation matches.' : 'No conversations yet.')]));
  }
  // The server searches every conversation's title, not only the ones shown.
  let searchTimer = null;
  search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => refreshList().catch((error) => showError(status, describe(error))), 250);
  });
  async function refreshList() {
    const query = new URLSearchParams({ limit: '100', sort: 'updated_at', order: 'desc' });
    if (search.value.trim()) query.set('search', search.value.trim().slice(0, 200));
    const page = await api('GET', '/api/chat/conversations?' + query);
    summaries = page.conversations;
    renderList();
    const shown = summaries.find((c) => c.id === current);
    if (shown && shown.title) title.textContent = shown.title;
  }
  async function remove(conversation) {
    if (!confirm('Delete "' + conversation.title + '" and all its messages?')) return;
    try {
      await api('DELETE', '/api/chat/conversations/' + conversation.id);
      if (conversation.id === current) app.go('chat');
      else await refreshList();
    } catch (error) {
      showError(status, describe(error));
    }
  }

  // ---- the conversation ----
  const messages = h('ol', { class: 'messages', id: 'messages', 'aria-live': 'polite', 'aria-label': 'Messages' });
  const title = h('h1', { id: 'conversation-title' }, 'New conversation');
  const usage = h('meter', { id: 'token-usage', min: 0, max: 100, value: 0, 'aria-label': 'Context used' });
  const usageText = h('span', { class: 'muted', id: 'token-usage-text' }, '');
  const model = h('select', { id: 'model-picker', 'aria-label': 'Model' },
    models.models.filter((m) => m.capabilities.includes('chat')).map((m) =>
      h('option', { value: m.name, selected: m.name === models.default_model }, m.display_name || m.name)));
  const pruneButton = h('button', { type: 'button', class: 'secondary', id: 'prune', onclick: prune, disabled: !current }, 'Prune');
  const jarChoices = jars.honey_jars.map((jar) => h('label', { class: 'check' },
    h('input', { type: 'checkbox', value: jar.id, name: 'chat-jar' }), ' ', jar.name));
  const jarPicker = jarChoices.length
    ? h('details', { class: 'jar-picker' }, h('summary', {}, 'Answer from honey jars'), jarChoices)
    : null;
  const input = h('textarea', { id: 'composer', name: 'message', rows: 3, required: true, 'aria-label': 'Message Bee', placeholder: 'Message Bee…' });
  const send = h('button', { type: 'submit', id: 'send' }, 'Send');
  const stop = h('button', { type: 'button', class: 'secondary', id: 'stop', disabled: true }, 'Stop');
  const composer = h('form', { class: 'composer', id: 'composer-form' },
    input, h('div', { class: 'row' }, send, stop, jarPicker));
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });

  function bubble(kind, text, extra) {
    const body = h('div', { class: 'body' });
    if (kind === 'assistant') renderMarkdown(body, text);
    else body.textContent = text;
    const item = h('li', { class: 'message ' + kind + (extra && extra.pruned ? ' pruned' : '') },
      h('span', { class: 'who' }, kind === 'user' ? 'You' : kind === 'assistant' ? 'Bee' : 'System'),
      body,
      extra && extra.note ? h('span', { class: 'muted note' }, extra.note) : null);
    messages.append(item);
    return { item, body };
  }

  async function loadHistory() {
    const head = await api('GET', '/api/chat/conversations/' + current + '?limit=1');
    const offset = Math.max(0, head.message_count - HISTORY_PAGE);
    const page = await api('GET', '/api/chat/conversations/' + current + '?limit=' + HISTORY_PAGE + '&offset=' + offset);
    title.textContent = page.title || 'Conversation';
    if (page.model && [...model.options].some((o) => o.value === page.model)) model.value = page.model;
    messages.replaceChildren();
    if (offset > 0) messages.append(h('li', { class: 'muted' }, offset + ' earlier messages not shown.'));
    for (const message of page.messages) {
      const note = message.pruned ? 'pruned from the context' : message.status === 'cancelled' ? 'stopped' : '';
      bubble(message.type, message.content, { pruned: message.pruned, note });
    }
  }

  async function refreshUsage() {
    if (!current) return;
    const tokens = await api('GET', '/api/chat/conversations/' + current + '/token-usage');
    usage.value = Math.min(100, tokens.utilization_percent);
    usageText.textContent = tokens.total + ' / ' + tokens.max_allowed_tokens + ' tokens';
  }

  async function prune() {
    try {
      const result = await api('POST', '/api/chat/conversations/' + current + '/prune');
      showOk(status, 'Pruned ' + result.pruning_result.messages_pruned + ' messages ('
        + result.pruning_result.tokens_before + ' → ' + result.pruning_result.tokens_after + ' tokens).');
      await loadHistory();
      await refreshUsage();
    } catch (error) {
      showError(status, describe(error));
    }
  }

  let running = null;
  composer.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || running) return;
    input.value = '';
    bubble('user', text);
    const answer = bubble('assistant', '');
    answer.item.classList.add('streaming');
    answer.item.setAttribute('aria-busy', 'true');
    let buffer = '';
    let scheduled = false;
    const paint = () => {
      scheduled = false;
      renderMarkdown(answer.body, buffer);
      messages.lastElementChild.scrollIntoView({ block: 'end' });
    };
    const finish = () => {
      running = null;
      send.disabled = false;
      stop.disabled = true;
      answer.item.classList.remove('streaming');
      answer.item.removeAttribute('aria-busy');
    };
    const honeyJarIds = jarChoices.map((label) => label.querySelector('input')).filter((c) => c.checked).map((c) => c.value);
    send.disabled = true;
    try {
      running = await startTurn({
        message: text,
        conversation_id: current || undefined,
        context: { model: model.value, honey_jar_ids: honeyJarIds },
      }, (frame) => {
        if (frame.type === 'message_received' && !current) {
          current = frame.conversation_id;
          history.replaceState(null, '', '#/chat/' + current);
          pruneButton.disabled = false;
        } else if (frame.type === 'response_chunk') {
          buffer += frame.chunk;
          if (!scheduled) {
            scheduled = true;
            requestAnimationFrame(paint);
          }
        } else if (frame.type === 'response_restart') {
          buffer = '';
        } else if (frame.type === 'response_complete') {
          buffer = frame.response;
          paint();
          const meta = frame.metadata;
          const note = (meta.status === 'cancelled' ? 'stopped · ' : '') + meta.tokens_used + ' tokens · '
            + frame.response_time.toFixed(2) + ' s · ' + frame.model_used;
          answer.item.append(h('span', { class: 'muted note' }, note));
          finish();
          refreshUsage().catch(() => {});
          refreshList().catch(() => {});
        } else if (frame.type === 'error') {
          answer.item.append(h('span', { class: 'alert error', role: 'alert' }, frame.error.message));
          finish();
        }
      });
      stop.disabled = false;
    } catch (error) {
      showError(status, describe(error));
      finish();
    }
  });
  stop.addEventListener('click', () => {
    if (running) cancelTurn(running);
  });

  renderList();
  if (current) {
    await loadHistory();
    await refreshUsage();
  }
  return h('div', { class: 'chat-layout' },
    h('aside', { class: 'sidebar', 'aria-label': 'Conversations' },
      h('div', { class: 'row' }, h('a', { class: 'button', href: '#/chat', id: 'new-chat' }, 'New chat')),
      search, list),
    h('section', { class: 'conversation', 'aria-labelledby': 'conversation-title' },
      h('div', { class: 'conversation-head' }, title,
        h('div', { class: 'row' }, model, h('span', { class: 'usage' }, usage, ' ', usageText), pruneButton)),
      status, messages, composer));
}
