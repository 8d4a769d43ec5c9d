//! The web app: static files from `web/`, compiled into the binary and served at `/` with a
//! strict Content-Security-Policy (scripts, styles and connections from this origin only; no
//! inline script, no framing).

use std::sync::LazyLock;

use sha2::{Digest, Sha256};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::error::ApiError;

/// Every response of the web app carries this policy.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:literal) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)),
        }
    };
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
const ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("lib/api.js", "text/javascript; charset=utf-8"),
    asset!("lib/dom.js", "text/javascript; charset=utf-8"),
    asset!("lib/markdown.js", "text/javascript; charset=utf-8"),
    asset!("lib/passkeys.js", "text/javascript; charset=utf-8"),
    asset!("lib/socket.js", "text/javascript; charset=utf-8"),
    asset!(
        "vendor/markdown-it.esm.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("views/account.js", "text/javascript; charset=utf-8"),
    asset!("views/admin.js", "text/javascript; charset=utf-8"),
    asset!("views/ask.js", "text/javascript; charset=utf-8"),
    asset!("views/auth.js", "text/javascript; charset=utf-8"),
    asset!("views/chat.js", "text/javascript; charset=utf-8"),
    asset!("views/jars.js", "text/javascript; charset=utf-8"),
    asset!("views/market.js", "text/javascript; charset=utf-8"),
];

/// Each file's ETag (its SHA-256), so browsers revalidate cheaply after an upgrade.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    std::iter::once(&INDEX)
        .chain(ASSETS)
        .map(|asset| format!("\"{}\"", hex::encode(&Sha256::digest(asset.body)[..16])))
        .collect()
});

pub fn routes() -> warp::filters::BoxedFilter<(Response,)> {
    let index = warp::path::end()
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|etag: Option<String>| serve(0, etag.as_deref()));
    let assets = warp::path("assets")
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|tail: warp::path::Tail, etag: Option<String>| {
            match ASSETS.iter().position(|asset| asset.path == tail.as_str()) {
                Some(i) => serve(i + 1, etag.as_deref()),
                None => ApiError::not_found("asset").into_response(),
            }
        });
    index.or(assets).unify().boxed()
}

/// Serves file `i` (0 is the index page), or 304 when the browser has this version.
fn serve(i: usize, if_none_match: Option<&str>) -> Response {
    let asset = if i == 0 { &INDEX } else { &ASSETS[i - 1] };
    let etag = &ETAGS[i];
    let mut response = if if_none_match == Some(etag.as_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(asset.body.into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_app_imports_is_served() {
        // A module missing from ASSETS would fail in the browser only; catch it here.
        let served: Vec<&str> = ASSETS.iter().map(|asset| asset.path).collect();
        let ours = std::iter::once(&INDEX)
            .chain(ASSETS)
            .filter(|asset| !asset.path.starts_with("vendor/"));
        for asset in ours {
            let text = std::str::from_utf8(asset.body).unwrap();
            for import in text
                .split(['\'', '"'])
                .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
            {
                let base = std::path::Path::new(asset.path).parent().unwrap();
                let path = match import.strip_prefix("/assets/") {
                    Some(absolute) => absolute.to_owned(),
                    None => normalize(&base.join(import)),
                };
                assert!(
                    served.contains(&path.as_str()),
                    "{} imports {import}",
                    asset.path
                );
            }
        }
    }

    fn normalize(path: &std::path::Path) -> String {
        let mut parts: Vec<&str> = Vec::new();
        for part in path.to_str().unwrap().split('/') {
            match part {
                "." | "" => {}
                ".." => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
        parts.join("/")
    }
}
