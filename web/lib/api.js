// The API client: same-origin fetch with the HttpOnly session cookie, JSON in and out, and
// the API's error envelope turned into an ApiError with its code and message.

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(
      response.status,
      error.code || 'HTTP_' + response.status,
      error.message || response.statusText || 'request failed',
      error.details,
    );
  }
  return data;
}

// A message for people from any failure.
export function describe(error) {
  if (error instanceof ApiError) return error.message;
  if (error && error.name === 'NotAllowedError') return 'The passkey request was cancelled or timed out.';
  return (error && error.message) || String(error);
}
