//! The web UI, embedded at build time by `build.rs` from `ui/dist` (or a page that says how to
//! build it). Serves a pre-compressed copy when the browser accepts one: brotli (made by the UI
//! build, `name.br`) before gzip (made by `build.rs`); hashed files under `/assets/` are cached
//! forever, `index.html` never. Unknown paths get `index.html` so the single-page app's own
//! routes work on reload. Only GET and HEAD.

use crate::http::{full, Resp};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    raw: &'static [u8],
    gzip: Option<&'static [u8]>,
    br: Option<&'static [u8]>,
    etag: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// Whether the embedded UI is the real build (false: the "UI not built" page).
pub fn ui_built() -> bool {
    UI_BUILT
}

pub fn serve(method: &Method, path: &str, hdrs: &HeaderMap) -> Resp {
    serve_from(ASSETS, method, path, hdrs)
}

/// Whether Accept-Encoding lists `coding` without refusing it (`;q=0`).
fn accepts(hdrs: &HeaderMap, coding: &str) -> bool {
    hdrs.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case(coding) && !refused
        })
}

fn serve_from(assets: &[Asset], method: &Method, path: &str, hdrs: &HeaderMap) -> Resp {
    if method != Method::GET && method != Method::HEAD {
        let mut r = Response::new(full("only GET and HEAD are allowed here\n"));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let want = if path == "/" { "/index.html" } else { path };
    let a = assets.iter().find(|a| a.path == want).or_else(|| {
        if want.starts_with("/assets/") {
            None
        } else {
            assets.iter().find(|a| a.path == "/index.html")
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
    let (bytes, coding) = match (a.br, a.gzip) {
        (Some(b), _) if accepts(hdrs, "br") => (b, Some("br")),
        (_, Some(g)) if accepts(hdrs, "gzip") => (g, Some("gzip")),
        _ => (a.raw, None),
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
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
    }
    let cache = if a.path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const FAKE: &[Asset] = &[
        Asset {
            path: "/index.html",
            content_type: "text/html; charset=utf-8",
            raw: b"<html>",
            gzip: Some(b"GZ-index"),
            br: Some(b"BR-index"),
            etag: "\"i\"",
        },
        Asset {
            path: "/assets/app.js",
            content_type: "text/javascript; charset=utf-8",
            raw: b"js",
            gzip: Some(b"GZ-js"),
            br: None,
            etag: "\"j\"",
        },
    ];

    /// Path, Accept-Encoding, the coding the answer should have, and its body.
    type Case = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static [u8],
    );

    async fn get(path: &str, accept: Option<&str>) -> (Option<String>, Vec<u8>) {
        let mut h = HeaderMap::new();
        if let Some(a) = accept {
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(a).unwrap());
        }
        let r = serve_from(FAKE, &Method::GET, path, &h);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::VARY], "Accept-Encoding");
        let coding = r
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        (coding, body)
    }

    #[tokio::test]
    async fn brotli_first_then_gzip_then_plain() {
        let cases: [Case; 9] = [
            (
                "/",
                Some("gzip, deflate, br, zstd"),
                Some("br"),
                b"BR-index",
            ),
            ("/", Some("BR"), Some("br"), b"BR-index"),
            ("/", Some("gzip"), Some("gzip"), b"GZ-index"),
            ("/", Some("br;q=0, gzip;q=0.5"), Some("gzip"), b"GZ-index"),
            ("/", Some("br; q=0.0, gzip;q=0"), None, b"<html>"),
            ("/", Some("brotli, gzipx"), None, b"<html>"),
            ("/", None, None, b"<html>"),
            // No brotli copy of this file: gzip even when br is preferred.
            ("/assets/app.js", Some("br, gzip"), Some("gzip"), b"GZ-js"),
            ("/assets/app.js", Some("br"), None, b"js"),
        ];
        for (path, accept, coding, body) in cases {
            let got = get(path, accept).await;
            assert_eq!(
                got,
                (coding.map(String::from), body.to_vec()),
                "{path} {accept:?}"
            );
        }
    }
}
