// The honey-jar marketplace: browse and filter listings, buy one (invoiced: an admin marks the
// invoice paid, which opens the jar to search and ask), sell one of my jars, my purchases.
import { api, describe } from '../lib/api.js';
import { alertBox, busy, field, formatTime, h, showError, showOk } from '../lib/dom.js';

const SORTS = [['created_at', 'Newest'], ['price', 'Price'], ['rating', 'Rating']];

export async function marketView(app) {
  const status = alertBox();
  const listings = h('ul', { class: 'list', id: 'listings', 'aria-label': 'Listings' });
  const titles = new Map(); // listing id -> title, for the purchases list
  const [searchLabel, search] = field('Search', { type: 'search', name: 'market-search' });
  const [categoryLabel, category] = field('Category', { name: 'market-category' });
  const sort = h('select', { id: 'market-sort', name: 'sort' }, SORTS.map(([v, label]) => h('option', { value: v }, label)));
  const filters = h('form', { class: 'card filters', role: 'search', 'aria-label': 'Filter listings' },
    searchLabel, search, categoryLabel, category,
    h('label', { for: 'market-sort' }, 'Sort by'), sort,
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'market-filter' }, 'Show')));
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    load().catch((error) => showError(status, describe(error)));
  });

  async function load() {
    const query = new URLSearchParams({ sort: sort.value, limit: '50' });
    if (search.value.trim()) query.set('search', search.value.trim());
    if (category.value.trim()) query.set('category', category.value.trim());
    const page = await api('GET', '/api/marketplace/honey-pots?' + query);
    for (const listing of page.listings) titles.set(listing.id, listing.title);
    listings.replaceChildren(...(page.listings.length ? page.listings.map(listingRow) : [h('li', { class: 'muted' }, 'No listings match.')]));
  }

  function listingRow(listing) {
    const mine = listing.seller_id === app.user.id;
    const item = h('li', { 'data-listing': listing.id },
      h('div', {},
        h('strong', {}, listing.title),
        h('div', {}, listing.description),
        h('div', { class: 'muted' }, listing.price, ' ', listing.currency, ' · ', listing.category, ' · ',
          listing.license_type.replace('_', ' '), ' · ',
          listing.rating === null ? 'not rated yet' : '★ ' + listing.rating.toFixed(1) + ' (' + listing.rating_count + ')')),
      mine
        ? h('span', {}, h('span', { class: 'muted' }, 'Your listing '),
          h('button', { type: 'button', class: 'danger small', onclick: () => withdraw(listing) }, 'Withdraw'))
        : h('span', {},
          listing.preview_enabled ? h('button', { type: 'button', class: 'secondary', onclick: () => attach(item, previewForm(listing)) }, 'Preview') : null, ' ',
          h('button', { type: 'button', onclick: () => attach(item, purchaseForm(listing)) }, 'Buy')));
    return item;
  }

  // One open form per listing: a new one replaces the last.
  function attach(item, form) {
    item.querySelector('form')?.remove();
    item.append(form);
    form.querySelector('input')?.focus();
  }

  async function withdraw(listing) {
    if (!confirm('Withdraw "' + listing.title + '"? Buyers keep their licenses.')) return;
    try {
      await api('DELETE', '/api/marketplace/honey-pots/' + listing.id);
      await load();
    } catch (error) {
      showError(status, describe(error));
    }
  }

  function previewForm(listing) {
    const [label, query] = field('Search the jar', { type: 'search', name: 'preview-query', required: true });
    const results = h('ol', { class: 'sources', 'aria-live': 'polite' });
    const result = alertBox();
    const form = h('form', { class: 'preview', 'aria-label': 'Preview ' + listing.title },
      label, query, result, h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Preview')), results);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(form, async () => {
        try {
          const reply = await api('POST', '/api/marketplace/honey-pots/' + listing.id + '/preview', { query: query.value.trim() });
          results.replaceChildren(...(reply.results.length
            ? reply.results.map((r) => h('li', {}, h('strong', {}, r.title), r.page ? ' · page ' + r.page : '', h('p', { class: 'snippet' }, r.snippet)))
            : [h('li', { class: 'muted' }, 'Nothing matches.')]));
        } catch (error) {
          showError(result, describe(error));
        }
      });
    });
    return form;
  }

  function purchaseForm(listing) {
    const inputs = {};
    const fields = [['name', 'Full name', 'name'], ['email', 'Email', 'email'], ['address', 'Address', 'street-address'], ['city', 'City', 'address-level2'], ['zip', 'Postal code', 'postal-code']]
      .flatMap(([key, label, autocomplete]) => {
        const [l, input] = field(label, { name: 'billing-' + key, required: true, autocomplete, value: key === 'email' ? app.user.email : undefined });
        inputs[key] = input;
        return [l, input];
      });
    const result = alertBox();
    const form = h('form', { class: 'purchase', 'aria-label': 'Buy ' + listing.title },
      h('p', {}, 'Pay by invoice: ', listing.price, ' ', listing.currency, '. The jar opens to you once the invoice is paid.'),
      fields, result,
      h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Place order')));
    const key = crypto.randomUUID(); // one order however often this form is sent
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(form, async () => {
        try {
          const billing = Object.fromEntries(Object.entries(inputs).map(([k, input]) => [k, input.value.trim()]));
          const order = await api('POST', '/api/marketplace/honey-pots/' + listing.id + '/purchase',
            { payment_method: 'invoice', billing_address: billing, idempotency_key: key });
          showOk(result, 'Ordered: ' + order.status.replace('_', ' ') + '.');
          await loadPurchases();
        } catch (error) {
          showError(result, describe(error));
        }
      });
    });
    return form;
  }

  const purchases = h('ul', { class: 'list', id: 'purchases', 'aria-label': 'My purchases' });
  async function loadPurchases() {
    const page = await api('GET', '/api/marketplace/purchases?limit=50');
    purchases.replaceChildren(...(page.orders.length ? page.orders.map((order) => h('li', { 'data-order': order.order_id },
      h('div', {}, titles.get(order.listing_id) || 'Listing', ' · ', order.amount, ' ', order.currency, ' · ',
        order.status.replace('_', ' '), ' · ordered ', formatTime(order.created_at)),
      order.license_active
        ? h('span', {}, h('a', { href: '#/ask' }, 'Search and ask it'), ' ', ratingForm(order))
        : h('span', { class: 'muted' }, 'awaiting payment')))
      : [h('li', { class: 'muted' }, 'Nothing bought yet.')]));
  }

  function ratingForm(order) {
    const id = 'rate-' + order.order_id;
    const stars = h('select', { id, name: 'rating' }, [5, 4, 3, 2, 1].map((n) => h('option', { value: n }, n + ' ★')));
    const form = h('form', { class: 'inline' }, h('label', { for: id, class: 'inline' }, 'Rate it'), ' ', stars, ' ',
      h('button', { type: 'submit', class: 'small' }, 'Rate'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(form, async () => {
        try {
          await api('POST', '/api/marketplace/honey-pots/' + order.listing_id + '/rating', { rating: Number(stars.value) });
          showOk(status, 'Thanks for rating.');
          await load();
        } catch (error) {
          showError(status, describe(error));
        }
      });
    });
    return form;
  }

  await Promise.all([load(), loadPurchases()]);
  return h('div', {},
    h('h1', {}, 'Marketplace'),
    status, filters,
    h('section', { class: 'card', 'aria-label': 'Listings' }, listings),
    await sellForm(app),
    h('section', { class: 'card', 'aria-labelledby': 'purchases-title' }, h('h2', { id: 'purchases-title' }, 'My purchases'), purchases));
}

async function sellForm(app) {
  const { honey_jars: jars } = await api('GET', '/api/knowledge/honey-pots?limit=200&owner=' + app.user.id);
  if (!jars.length) return null;
  const status = alertBox();
  const jar = h('select', { id: 'sell-jar', name: 'jar' }, jars.map((j) => h('option', { value: j.id }, j.name)));
  const [titleLabel, title] = field('Title', { name: 'sell-title', required: true });
  const [descriptionLabel, description] = field('Description', { name: 'sell-description' });
  const [priceLabel, price] = field('Price (e.g. 9.99)', { name: 'sell-price', required: true, inputmode: 'decimal', pattern: '\\d+(\\.\\d{1,2})?' });
  const [categoryLabel, category] = field('Category', { name: 'sell-category', required: true });
  const license = h('select', { id: 'sell-license', name: 'license' },
    h('option', { value: 'personal' }, 'Personal: the jar as it grows'),
    h('option', { value: 'single_use' }, 'Single use: the jar as it is when paid'));
  const preview = h('input', { type: 'checkbox', id: 'sell-preview', name: 'preview' });
  const form = h('form', { class: 'card', 'aria-labelledby': 'sell-title-heading' },
    h('h2', { id: 'sell-title-heading' }, 'Sell one of my honey jars'),
    h('label', { for: 'sell-jar' }, 'Honey jar'), jar, titleLabel, title, descriptionLabel, description,
    priceLabel, price, categoryLabel, category, h('label', { for: 'sell-license' }, 'License'), license,
    h('label', { class: 'check', for: 'sell-preview' }, preview, ' Let people preview search results (titles and short snippets)'),
    status, h('div', { class: 'row' }, h('button', { type: 'submit' }, 'List it')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form, async () => {
      try {
        await api('POST', '/api/marketplace/honey-pots', {
          honey_jar_id: jar.value, title: title.value.trim(), description: description.value.trim(),
          price: price.value.trim(), category: category.value.trim(), license_type: license.value, preview_enabled: preview.checked,
        });
        app.go('market');
      } catch (error) {
        showError(status, describe(error));
      }
    });
  });
  return form;
}
