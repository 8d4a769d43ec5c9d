// Honey jars: the list and a new jar; one jar's documents (upload with progress, status as
// ingestion goes), visibility, sharing and deletion.
import { api, ApiError, describe } from '../lib/api.js';
import { alertBox, busy, field, formatTime, h, showError, showOk } from '../lib/dom.js';

const VISIBILITIES = [
  ['private', 'Private: only me'],
  ['shared', 'Shared: me and the people I name'],
  ['public', 'Public: every signed-in user'],
];

function visibilitySelect(id, value) {
  return h('select', { id, name: 'visibility' },
    VISIBILITIES.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

export async function jarsView(app, [jarId, ...rest]) {
  if (jarId) return jarView(app, jarId, rest[0]);
  const { honey_jars: jars } = await api('GET', '/api/knowledge/honey-pots?limit=200');
  const status = alertBox();
  const [nameLabel, name] = field('Name', { name: 'jar-name', required: true, maxlength: 200 });
  const [descriptionLabel, description] = field('Description', { name: 'jar-description' });
  const visibilityId = 'jar-visibility';
  const visibility = visibilitySelect(visibilityId, 'private');
  const form = h('form', { class: 'card', 'aria-labelledby': 'new-jar-title' },
    h('h2', { id: 'new-jar-title' }, 'New honey jar'),
    nameLabel, name, descriptionLabel, description,
    h('label', { for: visibilityId }, 'Who can read it'), visibility,
    status,
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'create-jar' }, 'Create')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      try {
        const jar = await api('POST', '/api/knowledge/honey-pots', {
          name: name.value.trim(), description: description.value.trim(), visibility: visibility.value,
        });
        app.go('jars/' + jar.id);
      } catch (error) {
        showError(status, describe(error));
      }
    });
  });
  const mine = jars.filter((jar) => jar.owner_id === app.user.id);
  const others = jars.filter((jar) => jar.owner_id !== app.user.id);
  const jarList = (items, label) => h('ul', { class: 'list', 'aria-label': label },
    items.length ? items.map((jar) => h('li', { 'data-jar': jar.id },
      h('div', {},
        h('a', { href: '#/jars/' + jar.id }, h('strong', {}, jar.name)),
        h('div', { class: 'muted' }, jar.visibility, ' · ', jar.document_count, ' documents',
          jar.owner && jar.owner_id !== app.user.id ? ' · by ' + jar.owner.name : ''))))
      : h('li', { class: 'muted' }, 'None yet.'));
  return h('div', {},
    h('h1', {}, 'Honey jars'),
    h('section', { class: 'card', 'aria-labelledby': 'my-jars' }, h('h2', { id: 'my-jars' }, 'Mine'), jarList(mine, 'My honey jars')),
    others.length ? h('section', { class: 'card', 'aria-labelledby': 'other-jars' },
      h('h2', { id: 'other-jars' }, 'Shared with me and public'), jarList(others, 'Other honey jars')) : null,
    form,
    importForm(app));
}

// A jar exported from Sting (an .hjx archive) comes back with its documents and embeddings.
function importForm(app) {
  const status = alertBox();
  const file = h('input', { type: 'file', id: 'import-file', name: 'import-file', accept: '.hjx', required: true });
  const [nameLabel, name] = field('Name (optional; default: the archive\'s)', { name: 'import-name' });
  const bar = h('progress', { max: 100, value: 0, hidden: true, 'aria-label': 'Import progress' });
  const form = h('form', { class: 'card', 'aria-labelledby': 'import-title' },
    h('h2', { id: 'import-title' }, 'Import a honey jar'),
    h('label', { for: 'import-file' }, 'Archive (.hjx)'), file, nameLabel, name, bar, status,
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'import' }, 'Import')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!file.files.length) return;
    busy(form, async () => {
      try {
        const fields = { file: file.files[0] };
        if (name.value.trim()) fields.name = name.value.trim();
        const jar = await upload('/api/knowledge/honey-pots/import', fields, bar);
        app.flash = 'Imported ' + jar.imported_documents + ' documents.';
        app.go('jars/' + jar.id);
      } catch (error) {
        showError(status, describe(error));
      } finally {
        bar.hidden = true;
      }
    });
  });
  return form;
}

async function jarView(app, jarId, highlighted) {
  const jar = await api('GET', '/api/knowledge/honey-pots/' + jarId);
  const owner = jar.owner_id === app.user.id;
  const status = alertBox();
  const documents = h('ul', { class: 'list', id: 'document-list', 'aria-label': 'Documents' });
  const count = h('span', {}, jar.document_count + ' documents');
  let timer = null;

  async function refresh() {
    const page = await api('GET', '/api/knowledge/honey-pots/' + jarId + '/documents?limit=200');
    documents.replaceChildren(...(page.documents.length ? page.documents.map(documentRow) : [h('li', { class: 'muted' }, 'No documents yet.')]));
    count.textContent = page.total + (page.total === 1 ? ' document' : ' documents');
    const working = page.documents.some((d) => d.status === 'pending' || d.status === 'processing');
    clearTimeout(timer);
    // Ingestion status changes on the server; follow it while anything is in progress and
    // this screen is still shown.
    if (working) timer = setTimeout(() => documents.isConnected && refresh().catch(() => {}), 1000);
  }

  function documentRow(doc) {
    const progress = doc.status === 'processing' || doc.status === 'pending'
      ? h('progress', { max: 100, value: doc.processing_progress, 'aria-label': 'Processing ' + doc.title })
      : null;
    return h('li', { 'data-document': doc.id, 'data-status': doc.status, class: doc.id === highlighted ? 'highlight' : undefined, id: 'document-' + doc.id },
      h('div', {},
        h('strong', {}, doc.title || doc.filename),
        h('div', { class: 'muted' }, doc.filename, ' · ', doc.document_type, ' · ',
          doc.metadata.pages ? doc.metadata.pages + ' pages · ' : '', doc.chunk_count, ' chunks · uploaded ', formatTime(doc.uploaded_at)),
        h('div', { class: 'doc-status status-' + doc.status }, 'Status: ', doc.status, progress, doc.error ? ' — ' + doc.error : '')),
      owner ? h('button', { type: 'button', class: 'danger small', 'aria-label': 'Delete document ' + (doc.title || doc.filename), onclick: () => removeDocument(doc) }, 'Delete') : null);
  }

  async function removeDocument(doc) {
    if (!confirm('Delete "' + (doc.title || doc.filename) + '"?')) return;
    try {
      await api('DELETE', '/api/knowledge/documents/' + doc.id);
      await refresh();
    } catch (error) {
      showError(status, describe(error));
    }
  }

  const sections = [
    h('h1', {}, jar.name),
    h('p', { class: 'muted' }, jar.description || '', jar.description ? ' · ' : '', jar.visibility, ' · ', count),
    status,
    h('section', { class: 'card', 'aria-labelledby': 'documents-title' }, h('h2', { id: 'documents-title' }, 'Documents'), documents),
  ];
  if (owner) sections.push(uploadForm(jarId, status, refresh), settingsForm(app, jar, status));
  await refresh();
  if (highlighted) requestAnimationFrame(() => document.getElementById('document-' + highlighted)?.scrollIntoView());
  return h('div', {}, ...sections);
}

function uploadForm(jarId, status, refresh) {
  const fileId = 'upload-file';
  const file = h('input', { type: 'file', id: fileId, name: 'file', required: true });
  const bar = h('progress', { max: 100, value: 0, hidden: true, id: 'upload-progress', 'aria-label': 'Upload progress' });
  const form = h('form', { class: 'card', 'aria-labelledby': 'upload-title' },
    h('h2', { id: 'upload-title' }, 'Add a document'),
    h('p', { class: 'muted' }, 'PDF, Word, Markdown, HTML, text and more; it is split, embedded and searchable once processed.'),
    h('label', { for: fileId }, 'File'), file, bar,
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'upload' }, 'Upload')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!file.files.length) return;
    busy(form, async () => {
      try {
        await upload('/api/knowledge/honey-pots/' + jarId + '/documents', { file: file.files[0] }, bar);
        showOk(status, 'Uploaded; processing…');
        file.value = '';
        await refresh();
      } catch (error) {
        showError(status, describe(error));
      } finally {
        bar.hidden = true;
        bar.value = 0;
      }
    });
  });
  return form;
}

// Posts `fields` as a multipart form, showing its progress on `bar` (fetch() reports no upload
// progress; XMLHttpRequest does).
function upload(path, fields, bar) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) form.append(key, value);
  bar.hidden = false;
  const onProgress = (fraction) => (bar.value = fraction * 100);
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open('POST', path);
    request.responseType = 'json';
    request.upload.addEventListener('progress', (event) => event.lengthComputable && onProgress(event.loaded / event.total));
    request.addEventListener('load', () => {
      if (request.status >= 200 && request.status < 300) return resolve(request.response);
      const error = (request.response && request.response.error) || {};
      reject(new ApiError(request.status, error.code, error.message || 'upload failed', error.details));
    });
    request.addEventListener('error', () => reject(new Error('the upload was interrupted')));
    request.send(form);
  });
}

function settingsForm(app, jar, status) {
  const visibility = visibilitySelect('settings-visibility', jar.visibility);
  const shared = (jar.shared_with || []).map((user) => user.email).join(', ');
  const [sharesLabel, shares] = field('Shared with (emails, comma-separated)', { name: 'shares', value: shared });
  const form = h('form', { class: 'card', 'aria-labelledby': 'settings-title' },
    h('h2', { id: 'settings-title' }, 'Access'),
    h('label', { for: 'settings-visibility' }, 'Who can read it'), visibility,
    sharesLabel, shares,
    h('div', { class: 'row' },
      h('button', { type: 'submit', id: 'save-access' }, 'Save access'),
      h('a', { class: 'button secondary', href: '/api/knowledge/honey-pots/' + jar.id + '/export', download: '' }, 'Download as .hjx'),
      h('button', { type: 'button', class: 'danger', id: 'delete-jar', onclick: removeJar }, 'Delete jar')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      try {
        await api('PUT', '/api/knowledge/honey-pots/' + jar.id, { visibility: visibility.value });
        const emails = shares.value.split(',').map((e) => e.trim()).filter(Boolean);
        await api('PUT', '/api/knowledge/honey-pots/' + jar.id + '/shares', { emails });
        showOk(status, 'Access saved.');
      } catch (error) {
        showError(status, describe(error));
      }
    });
  });
  async function removeJar() {
    if (!confirm('Delete the honey jar "' + jar.name + '" and all its documents?')) return;
    try {
      await api('DELETE', '/api/knowledge/honey-pots/' + jar.id);
      app.go('jars');
    } catch (error) {
      showError(status, describe(error));
    }
  }
  return form;
}
