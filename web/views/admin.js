// The admin area: system health, cluster members, models (load, unload) and users
// (deactivate, activate). Every call here is admin-only on the server too.
import { api, describe } from '../lib/api.js';
import { alertBox, formatTime, h, showError } from '../lib/dom.js';

export async function adminView(app) {
  const status = alertBox();
  const [health, system, metrics, cluster, models, users] = await Promise.all([
    api('GET', '/api/system/health'),
    api('GET', '/api/system/status'),
    api('GET', '/api/system/metrics'),
    api('GET', '/api/system/cluster'),
    api('GET', '/api/chat/models'),
    api('GET', '/api/admin/users?limit=200'),
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
      table(cluster.networked ? 'Nodes of the cluster' : 'A single node', ['node', 'state', 'conversations', 'shards', 'models', 'CPU'],
        cluster.members.map((m) => [m.node + (m.local ? ' (this node)' : ''), m.state, m.conversations, m.shards, m.loaded_models.join(', ') || '—', m.cpu_percent.toFixed(0) + '%']))),
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
          u.id === app.user.id ? h('span', { class: 'muted' }, 'you')
            : u.active
              ? h('button', { type: 'button', class: 'danger small', onclick: act(() => api('POST', '/api/admin/users/' + u.id + '/deactivate'), u.email + ' deactivated; their sessions are revoked.') }, 'Deactivate')
              : h('button', { type: 'button', class: 'small', onclick: act(() => api('POST', '/api/admin/users/' + u.id + '/activate'), u.email + ' activated.') }, 'Activate')]))));
}
