// The signed-in user's account: who they are, and their passkeys.
import { api, describe } from '../lib/api.js';
import { alertBox, busy, field, formatTime, h, showError, showOk } from '../lib/dom.js';
import { addPasskey, passkeysSupported } from '../lib/passkeys.js';

export async function accountView(app) {
  const status = alertBox();
  const list = h('ul', { class: 'list', id: 'passkey-list', 'aria-label': 'Your passkeys' });

  async function refresh() {
    const { passkeys } = await api('GET', '/api/auth/webauthn/passkeys');
    list.replaceChildren(...(passkeys.length
      ? passkeys.map((passkey) => h('li', { 'data-passkey': passkey.id },
        h('div', {},
          h('strong', {}, passkey.name),
          h('div', { class: 'muted' },
            'Added ', formatTime(passkey.created_at), ' · last used ', formatTime(passkey.last_used_at))),
        h('button', {
          type: 'button', class: 'danger', 'aria-label': 'Delete passkey ' + passkey.name,
          onclick: () => remove(passkey),
        }, 'Delete')))
      : [h('li', { class: 'muted' }, 'No passkeys yet.')]));
  }

  async function remove(passkey) {
    if (!confirm('Delete the passkey "' + passkey.name + '"? It will no longer sign you in.')) return;
    try {
      await api('DELETE', '/api/auth/webauthn/passkeys/' + encodeURIComponent(passkey.id));
      showOk(status, 'Passkey deleted.');
      await refresh();
    } catch (error) {
      showError(status, describe(error));
    }
  }

  const [nameLabel, name] = field('Name for the new passkey', { name: 'passkey-name', placeholder: 'e.g. laptop', maxlength: 64 });
  const form = h('form', { class: 'card', 'aria-labelledby': 'passkeys-title' },
    h('h2', { id: 'passkeys-title' }, 'Passkeys'),
    h('p', { class: 'muted' }, 'A passkey signs you in with your device\'s screen lock or security key instead of a password.'),
    list,
    passkeysSupported()
      ? [nameLabel, name, h('div', { class: 'row' }, h('button', { type: 'submit', id: 'add-passkey' }, 'Add a passkey'))]
      : h('p', { class: 'muted' }, 'This browser does not support passkeys.'),
    status);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      try {
        await addPasskey(name.value.trim());
        name.value = '';
        showOk(status, 'Passkey added.');
        await refresh();
      } catch (error) {
        showError(status, describe(error));
      }
    });
  });

  await refresh();
  return h('div', {},
    h('h1', {}, 'Account'),
    h('section', { class: 'card', 'aria-label': 'Profile' },
      h('p', {}, h('strong', {}, app.user.traits.name), ' · ', app.user.email, ' · ', app.user.role)),
    form);
}
