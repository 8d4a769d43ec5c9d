// Signing up and signing in (password or passkey).
import { api, describe } from '../lib/api.js';
import { alertBox, busy, field, h, showError } from '../lib/dom.js';
import { passkeysSupported, signInWithPasskey } from '../lib/passkeys.js';

export function signInView(app) {
  const status = alertBox();
  const [emailLabel, email] = field('Email', { type: 'email', name: 'email', autocomplete: 'username webauthn', required: true });
  const [passwordLabel, password] = field('Password', { type: 'password', name: 'password', autocomplete: 'current-password' });
  const form = h('form', { class: 'card narrow', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in to Sting'),
    emailLabel, email, passwordLabel, password,
    status,
    h('div', { class: 'row' },
      h('button', { type: 'submit', id: 'signin-password' }, 'Sign in'),
      passkeysSupported()
        ? h('button', { type: 'button', class: 'secondary', id: 'signin-passkey', onclick: withPasskey }, 'Sign in with a passkey')
        : null),
    h('p', {}, 'New here? ', h('a', { href: '#/signup' }, 'Create an account')));

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!password.value) return showError(status, 'Enter your password, or sign in with a passkey.');
    busy(form, async () => {
      try {
        const reply = await api('POST', '/api/auth/login', { email: email.value, password: password.value });
        app.signedIn(reply.user);
      } catch (error) {
        showError(status, describe(error));
      }
    });
  });

  function withPasskey() {
    if (!email.reportValidity()) return;
    busy(form, async () => {
      try {
        const reply = await signInWithPasskey(email.value);
        app.signedIn(reply.user);
      } catch (error) {
        showError(status, describe(error));
      }
    });
  }
  return form;
}

export function signUpView(app) {
  const status = alertBox();
  const [nameLabel, name] = field('Name', { name: 'name', autocomplete: 'name' });
  const [emailLabel, email] = field('Email', { type: 'email', name: 'email', autocomplete: 'username', required: true });
  const [passwordLabel, password] = field('Password (at least 8 characters)', {
    type: 'password', name: 'password', autocomplete: 'new-password', required: true, minlength: 8,
  });
  const form = h('form', { class: 'card narrow', 'aria-labelledby': 'signup-title' },
    h('h1', { id: 'signup-title' }, 'Create your account'),
    nameLabel, name, emailLabel, email, passwordLabel, password,
    status,
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'signup-submit' }, 'Create account')),
    h('p', {}, 'Have an account? ', h('a', { href: '#/signin' }, 'Sign in')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      try {
        const traits = name.value.trim() ? { name: name.value.trim() } : undefined;
        const reply = await api('POST', '/api/auth/register', { email: email.value, password: password.value, traits });
        app.signedIn(reply.user);
      } catch (error) {
        showError(status, describe(error));
      }
    });
  });
  return form;
}
