// Sting's web app: a hash router over the screens in views/, and who is signed in.
import { api } from './lib/api.js';
import { h } from './lib/dom.js';
import { accountView } from './views/account.js';
import { adminView } from './views/admin.js';
import { askView } from './views/ask.js';
import { signInView, signUpView } from './views/auth.js';
import { chatView } from './views/chat.js';
import { jarsView } from './views/jars.js';
import { marketView } from './views/market.js';

// First path segment -> screen. `public` screens are for signed-out visitors.
const routes = {
  signin: { title: 'Sign in', view: signInView, public: true },
  signup: { title: 'Create account', view: signUpView, public: true },
  chat: { title: 'Chat', view: chatView, nav: 'Chat' },
  jars: { title: 'Honey jars', view: jarsView, nav: 'Honey jars' },
  ask: { title: 'Search and ask', view: askView, nav: 'Ask' },
  market: { title: 'Marketplace', view: marketView, nav: 'Marketplace' },
  account: { title: 'Account', view: accountView, nav: 'Account' },
  admin: { title: 'Administration', view: adminView, nav: 'Admin', admin: true },
};
const HOME = 'chat';

export const app = {
  user: null,
  // A message for the next screen (an action's outcome that navigates).
  flash: null,
  go(path) {
    if (location.hash === '#/' + path) render();
    else location.hash = '#/' + path;
  },
  signedIn(user) {
    app.user = user;
    app.go(HOME);
  },
  async signOut() {
    // Signed out here whatever the server says (an expired session is signed out already).
    await api('POST', '/api/auth/logout').catch(() => {});
    app.user = null;
    app.go('signin');
  },
};

function renderNav(current) {
  const nav = document.getElementById('nav');
  if (!app.user) {
    nav.replaceChildren();
    return;
  }
  const links = Object.entries(routes)
    .filter(([, route]) => route.nav && (!route.admin || app.user.role === 'admin'))
    .map(([name, route]) => h('a', {
      href: '#/' + name,
      'aria-current': name === current ? 'page' : undefined,
    }, route.nav));
  const signOut = h('a', { href: '#/signin', onclick: (event) => { event.preventDefault(); app.signOut(); } }, 'Sign out');
  nav.replaceChildren(...links, signOut);
}

let renderSeq = 0;
async function render() {
  const seq = ++renderSeq;
  const [name, ...params] = location.hash.replace(/^#\/?/, '').split('/');
  const route = routes[name];
  if (!route) return app.go(app.user ? HOME : 'signin');
  if (!route.public && !app.user) return app.go('signin');
  if (route.public && app.user) return app.go(HOME);
  if (route.admin && app.user.role !== 'admin') return app.go(HOME);
  renderNav(name);
  document.title = route.title + ' · Sting';
  const main = document.getElementById('main');
  let content;
  try {
    content = await route.view(app, params.map(decodeURIComponent));
  } catch (error) {
    if (error.status === 401) {
      app.user = null;
      return app.go('signin');
    }
    content = h('p', { class: 'alert error', role: 'alert' }, error.message);
  }
  if (seq !== renderSeq) return; // a newer navigation won
  main.replaceChildren(content);
  if (app.flash) {
    main.prepend(h('p', { class: 'alert ok', role: 'status' }, app.flash));
    app.flash = null;
  }
  main.focus();
}

async function start() {
  // The skip link moves focus; followed as a link, it would be a route.
  document.querySelector('.skip').addEventListener('click', (event) => {
    event.preventDefault();
    document.getElementById('main').focus();
  });
  const session = await api('GET', '/api/auth/session').catch(() => null);
  app.user = session && session.authenticated ? session.user : null;
  window.addEventListener('hashchange', render);
  render();
}

start();
