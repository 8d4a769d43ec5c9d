// The admin area: system health, cluster members, models (load, unload) and users
// (deactivate, activate). Every call here is admin-only on the server too.
import { api, describe } from '../lib/api.js';
import { alertBox, formatTime, h, showError } from '../lib/dom.js';

export async function adminView(app) {
  const status = alertBox();
  const [health, system, metrics, cluster, models, users, invoices] = await Promise.all([
    api('GET', '/api/system/health'),
    api('GET', '/api/system/status'),
    api('GET', '/api/system/metrics'),
    api('GET', '/api/system/cluster'),
    api('GET', '/api/chat/models'),
    api('GET', '/api/admin/users?limit=200'),
    api('GET', '/api/admin/orders?status=pending_invoice&limit=100'),
  ]);
  const act = (work, done) => async () => {
    try {
      await work();
      app.flash = done;
      app.go('admin');
    } catch (error) {
      showError(status, describe(error));
    }
  };

  const table = (caption, head, rows) => h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, head.map((cell) => h('th', { scope: 'col' }, cell)))),
    h('tbody', {}, rows.map((row) => h('tr', {}, row.map((cell) => h('td', {}, cell)))))));

  const services = Object.entries(health.services).map(([name, state]) => [name, h('span', { class: 'state-' + state }, state)]);
  return h('div', {},
    h('h1', {}, 'Administration'),
    status,
    h('section', { class: 'card', id: 'admin-health', 'aria-labelledby': 'health-title' },
      h('h2', { id: 'health-title' }, 'System: ', h('span', { class: 'state-' + health.status }, health.status)),
      h('p', { class: 'muted' }, 'Node ', system.node, ' · version ', system.version, ' · up ', Math.round(system.uptime / 60), ' min · CPU ',
        metrics.performance.cpu_usage.toFixed(0), '% · memory ', metrics.performance.memory_usage.toFixed(0), '% · disk ',
        metrics.performance.disk_usage.toFixed(0), '%'),
      table('Services', ['service', 'state'], services)),
    h('section', { class: 'card', id: 'admin-cluster', 'aria-labelledby': 'cluster-title' },
      h('h2', { id: 'cluster-title' }, 'Cluster members'),
      table(cluster.networked ? 'Nodes of the cluster' : 'A single node', ['node', 'state', 'conversations', 'shards', 'models', 'CPU', ''],
        cluster.members.map((m) => [m.node + (m.local ? ' (this node)' : ''), m.state, m.conversations, m.shards, m.loaded_models.join(', ') || '—', m.cpu_percent.toFixed(0) + '%',
          cluster.networked && m.state === 'up'
            ? h('span', {},
              h('button', { type: 'button', class: 'secondary small', onclick: command('drain', m.node, 'Drain ' + m.node + '? It hands its conversations and shards to the others.') }, 'Drain'), ' ',
              h('button', { type: 'button', class: 'danger small', onclick: command('leave', m.node, 'Make ' + m.node + ' leave the cluster? Its process exits.') }, 'Leave'))
            : '']))),
    h('section', { class: 'card', id: 'admin-invoices', 'aria-labelledby': 'invoices-title' },
      h('h2', { id: 'invoices-title' }, 'Invoices to settle'),
      h('p', { class: 'muted' }, 'Marketplace orders are paid by invoice; marking one paid opens the honey jar to its buyer.'),
      invoices.orders.length
        ? table('Pending invoices (' + invoices.total + ')', ['ordered', 'amount', 'billed to', ''],
          invoices.orders.map((o) => [formatTime(o.created_at), o.amount + ' ' + o.currency,
            [o.billing_address.name, ' <', o.billing_address.email, '>, ', o.billing_address.address, ', ', o.billing_address.zip, ' ', o.billing_address.city].join(''),
            h('button', { type: 'button', class: 'small', onclick: act(() => api('POST', '/api/admin/orders/' + o.order_id + '/paid'), 'Order marked paid; the buyer has access.') }, 'Mark paid')]))
        : h('p', { class: 'muted' }, 'No invoice is waiting.')),
    h('section', { class: 'card', id: 'admin-models', 'aria-labelledby': 'models-title' },
      h('h2', { id: 'models-title' }, 'Models'),
      table('Models (' + models.loaded_models.length + ' of at most ' + models.max_loaded + ' loaded)', ['model', 'capabilities', 'status', ''],
        models.models.map((m) => [h('span', {}, m.display_name || m.name, ' ', h('code', {}, m.name)), m.capabilities.join(', '), m.status,
          m.status === 'loaded'
            ? h('button', { type: 'button', class: 'secondary small', onclick: act(() => api('POST', '/api/chat/models/' + encodeURIComponent(m.name) + '/unload'), m.name + ' unloaded.') }, 'Unload')
            : h('button', { type: 'button', class: 'small', onclick: act(() => api('POST', '/api/chat/models/' + encodeURIComponent(m.name) + '/load'), m.name + ' loaded.') }, 'Load')]))),
    h('section', { class: 'card', id: 'admin-users', 'aria-labelledby': 'users-title' },
      h('h2', { id: 'users-title' }, 'Users (', users.total, ')'),
      table('Accounts', ['name', 'email', 'role', 'state', 'since', ''],
        users.users.map((u) => [u.name, u.email, u.role, u.active ? 'active' : 'deactivated', formatTime(u.created_at),
          u.id === app.user.id ? h('span', { class: 'muted' }, 'you') : userActions(u)]))));

  function userActions(u) {
    const role = u.role === 'admin' ? 'user' : 'admin';
    return h('span', {},
      h('button', { type: 'button', class: 'secondary small', onclick: act(() => api('PUT', '/api/admin/users/' + u.id, { role }), u.email + ' is now ' + (role === 'admin' ? 'an admin.' : 'a user.')) },
        role === 'admin' ? 'Make admin' : 'Make user'), ' ',
      u.active
        ? h('button', { type: 'button', class: 'danger small', onclick: act(() => api('POST', '/api/admin/users/' + u.id + '/deactivate'), u.email + ' deactivated; their sessions are revoked.') }, 'Deactivate')
        : h('button', { type: 'button', class: 'small', onclick: act(() => api('POST', '/api/admin/users/' + u.id + '/activate'), u.email + ' activated.') }, 'Activate'));
  }

  function command(name, node, question) {
    const run = act(() => api('POST', '/api/system/cluster/' + name, { node }), node + ': ' + name + ' started.');
    return () => confirm(question) && run();
  }
}
