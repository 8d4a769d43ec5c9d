// Passkey ceremonies in the browser. The server's options are WebAuthn's JSON form, which
// the browser parses itself; the answers go back as the browser's own toJSON().
import { api } from './api.js';

export function passkeysSupported() {
  return typeof PublicKeyCredential !== 'undefined'
    && typeof PublicKeyCredential.parseCreationOptionsFromJSON === 'function';
}

export async function addPasskey(name) {
  const init = await api('POST', '/api/auth/webauthn/register/init');
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(init.publicKey);
  const credential = await navigator.credentials.create({ publicKey });
  return api('POST', '/api/auth/webauthn/register/complete', {
    credential: credential.toJSON(),
    name: name || undefined,
  });
}

export async function signInWithPasskey(email) {
  const init = await api('POST', '/api/auth/webauthn/login/init', { email });
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(init.publicKey);
  const assertion = await navigator.credentials.get({ publicKey });
  return api('POST', '/api/auth/webauthn/login/complete', {
    assertion: assertion.toJSON(),
    ceremony_id: init.ceremony_id,
  });
}
