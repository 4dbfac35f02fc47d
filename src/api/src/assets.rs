//! The web UI, embedded at build time by `build.rs` from `ui/dist` (or a page that says how to
//! build it). Serves pre-compressed gzip when the browser accepts it; hashed files under
//! `/assets/` are cached forever, `index.html` never. Unknown paths get `index.html` so the
//! single-page app's own routes work on reload. Only GET and HEAD.

use crate::http::{full, Resp};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    raw: &'static [u8],
    gzip: Option<&'static [u8]>,
    etag: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// Whether the embedded UI is the real build (false: the "UI not built" page).
pub fn ui_built() -> bool {
    UI_BUILT
}

pub fn serve(method: &Method, path: &str, hdrs: &HeaderMap) -> Resp {
    if method != Method::GET && method != Method::HEAD {
        let mut r = Response::new(full("only GET and HEAD are allowed here\n"));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let want = if path == "/" { "/index.html" } else { path };
    let a = ASSETS.iter().find(|a| a.path == want).or_else(|| {
        if want.starts_with("/assets/") {
            None
        } else {
            ASSETS.iter().find(|a| a.path == "/index.html")
        }
    });
    let Some(a) = a else {
        let mut r = Response::new(full("not found\n"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    if hdrs
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(a.etag)
    {
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    let gz_ok = hdrs
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let (bytes, gz) = match a.gzip {
        Some(g) if gz_ok => (g, true),
        _ => (a.raw, false),
    };
    let body = if method == Method::HEAD {
        full("")
    } else {
        full(bytes)
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::ETAG, HeaderValue::from_static(a.etag));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gz {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let cache = if a.path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}
