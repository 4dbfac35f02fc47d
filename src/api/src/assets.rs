//! The web UI, embedded at build time by `build.rs` from `ui/dist` (or a page that says how to
//! build it). Serves a pre-compressed copy when the browser accepts one: brotli (made by the UI
//! build, `name.br`) before gzip (made by `build.rs`); hashed files under `/assets/` are cached
//! forever, `index.html` never. Unknown paths get `index.html` so the single-page app's own
//! routes work on reload. Only GET and HEAD.
//!
//! Validators: each encoding of a file has its own strong ETag (a hash of the bytes sent, made by
//! `build.rs`), as RFC 9110 8.8.3 asks of a strong validator under content negotiation. The
//! encoding is chosen first (from Accept-Encoding), then If-None-Match is compared with that
//! encoding's ETag: a cache holding the gzip copy gets a 304 when gzip is what it would get again,
//! and the brotli copy in full once it accepts brotli. `Vary: Accept-Encoding` on every answer,
//! 304s included, keeps shared caches from handing one encoding to a client that asked for another.

use crate::http::{full, Resp};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

/// One encoding of a file: its bytes and their strong ETag (quoted, as sent).
struct Encoded {
    bytes: &'static [u8],
    etag: &'static str,
}

struct Asset {
    path: &'static str,
    content_type: &'static str,
    raw: Encoded,
    gzip: Option<Encoded>,
    br: Option<Encoded>,
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

/// Whether If-None-Match (all of its lines) names `etag`: `*`, or a list of entity tags
/// compared weakly (RFC 9110 13.1.2: `W/"x"` matches `"x"`). A malformed list matches nothing,
/// so the full answer is sent.
fn none_match(hdrs: &HeaderMap, etag: &str) -> bool {
    let want = etag.trim_matches('"');
    hdrs.get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| match v.to_str() {
            Ok(list) if list.trim() == "*" => true,
            Ok(list) => entity_tags(list).is_some_and(|tags| tags.contains(&want)),
            Err(_) => false,
        })
}

/// The opaque tags of a comma-separated list of entity tags (`W/` dropped); None when malformed.
fn entity_tags(mut rest: &str) -> Option<Vec<&str>> {
    let mut tags = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(tags);
        }
        let quoted = rest.strip_prefix("W/").unwrap_or(rest).strip_prefix('"')?;
        let end = quoted.find('"')?;
        tags.push(&quoted[..end]);
        rest = quoted[end + 1..].trim_start_matches([' ', '\t']);
        if !rest.is_empty() && !rest.starts_with(',') {
            return None;
        }
    }
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
    let (chosen, coding) = match (&a.br, &a.gzip) {
        (Some(b), _) if accepts(hdrs, "br") => (b, Some("br")),
        (_, Some(g)) if accepts(hdrs, "gzip") => (g, Some("gzip")),
        _ => (&a.raw, None),
    };
    let not_modified = none_match(hdrs, chosen.etag);
    let body = if method == Method::HEAD || not_modified {
        full("")
    } else {
        full(chosen.bytes)
    };
    let mut r = Response::new(body);
    if not_modified {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = r.headers_mut();
    // A 304 carries what the 200 would have, except the content's own fields (RFC 9110 15.4.5).
    if !not_modified {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        if let Some(c) = coding {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
        }
    }
    h.insert(header::ETAG, HeaderValue::from_static(chosen.etag));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
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

    const fn enc(bytes: &'static [u8], etag: &'static str) -> Encoded {
        Encoded { bytes, etag }
    }

    const FAKE: &[Asset] = &[
        Asset {
            path: "/index.html",
            content_type: "text/html; charset=utf-8",
            raw: enc(b"<html>", "\"i\""),
            gzip: Some(enc(b"GZ-index", "\"i-gz\"")),
            br: Some(enc(b"BR-index", "\"i-br\"")),
        },
        Asset {
            path: "/assets/app.js",
            content_type: "text/javascript; charset=utf-8",
            raw: enc(b"js", "\"j\""),
            gzip: Some(enc(b"GZ-js", "\"j-gz\"")),
            br: None,
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

    /// GET `path` with Accept-Encoding `accept` and If-None-Match `inm`: status, ETag, coding,
    /// body, and the caching headers every answer must carry.
    async fn get_if(
        path: &str,
        accept: &str,
        inm: Option<&str>,
    ) -> (StatusCode, String, Option<String>, Vec<u8>) {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        if let Some(t) = inm {
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(t).unwrap());
        }
        let r = serve_from(FAKE, &Method::GET, path, &h);
        let status = r.status();
        let hd = r.headers();
        assert_eq!(
            hd[header::VARY],
            "Accept-Encoding",
            "{path} {accept} {inm:?}"
        );
        assert_eq!(hd[header::CACHE_CONTROL], "no-cache", "{path}");
        let etag = hd[header::ETAG].to_str().unwrap().to_string();
        let coding = hd
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, etag, coding, body)
    }

    #[tokio::test]
    async fn each_encoding_revalidates_against_its_own_etag() {
        let ok = StatusCode::OK;
        let nm = StatusCode::NOT_MODIFIED;
        // (Accept-Encoding, the ETag of what it selects, its coding, its body)
        let encodings = [
            ("br, gzip", "\"i-br\"", Some("br"), &b"BR-index"[..]),
            ("gzip", "\"i-gz\"", Some("gzip"), b"GZ-index"),
            ("identity", "\"i\"", None, b"<html>"),
        ];
        for (accept, etag, coding, body) in encodings {
            let coding = coding.map(String::from);
            let full = (ok, etag.to_string(), coding.clone(), body.to_vec());
            assert_eq!(get_if("/", accept, None).await, full, "{accept}");
            // The tag of the encoding being chosen: 304, naming it, without content or its
            // content fields.
            let weak = format!("W/{etag}");
            let listed = format!("\"other\", {etag}");
            for inm in [etag, weak.as_str(), listed.as_str(), "*"] {
                assert_eq!(
                    get_if("/", accept, Some(inm)).await,
                    (nm, etag.to_string(), None, Vec::new()),
                    "{accept} If-None-Match: {inm}"
                );
            }
            // Any other tag, the other encodings' included: the full answer.
            for (_, other, _, _) in encodings.iter().filter(|e| e.1 != etag) {
                assert_eq!(
                    get_if("/", accept, Some(other)).await,
                    full,
                    "{accept} {other}"
                );
            }
            let malformed = format!("{etag} junk");
            for inm in ["\"nope\"", "", "i-br", malformed.as_str(), "\"i"] {
                assert_eq!(
                    get_if("/", accept, Some(inm)).await,
                    full,
                    "{accept} {inm:?}"
                );
            }
        }
        // The single-page app's routes are index.html, validated as it.
        assert_eq!(get_if("/vms", "gzip", Some("\"i-gz\"")).await.0, nm);
        // HEAD: the same decision.
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"i-gz\""));
        assert_eq!(serve_from(FAKE, &Method::HEAD, "/", &h).status(), nm);
    }

    /// The embedded build: every encoding of a file has a different strong ETag, and each is the
    /// hash of the bytes sent (as `build.rs` makes it), so it depends on the build alone and is
    /// the same after every restart of the same binary.
    #[test]
    fn etags_are_hashes_of_the_bytes_sent() {
        use sha2::Digest;
        assert!(!ASSETS.is_empty());
        for a in ASSETS {
            let encodings: Vec<&Encoded> = [Some(&a.raw), a.gzip.as_ref(), a.br.as_ref()]
                .into_iter()
                .flatten()
                .collect();
            for e in &encodings {
                let hash: String = sha2::Sha256::digest(e.bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(e.etag, format!("\"{}\"", &hash[..20]), "{}", a.path);
            }
            let mut tags: Vec<&str> = encodings.iter().map(|e| e.etag).collect();
            tags.sort_unstable();
            tags.dedup();
            assert_eq!(tags.len(), encodings.len(), "{}: {tags:?}", a.path);
        }
    }
}
