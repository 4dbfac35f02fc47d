//! HTTP plumbing shared by every handler: the body type, bounded body reading, JSON and error
//! responses, cookies, query strings and pagination. No policy lives here.

use bytes::Bytes;
use control::{ControlError, ErrorCode};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use serde::Serialize;
use std::convert::Infallible;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

/// Largest JSON request body (certificate uploads included).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn json<T: Serialize + ?Sized>(status: StatusCode, v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => with_type(status, "application/json", b),
        Err(e) => error(&ControlError::internal(format!(
            "cannot encode the reply: {e}"
        ))),
    }
}

pub fn with_type(status: StatusCode, ctype: &'static str, b: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(full(b));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

pub fn no_content() -> Resp {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// `{"error":{"code":"...","message":"..."}}` with the code's HTTP status.
pub fn error(e: &ControlError) -> Resp {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(
        status,
        &serde_json::json!({"error": {"code": e.code.as_str(), "message": e.message}}),
    )
}

pub fn err(code: ErrorCode, msg: impl Into<String>) -> ControlError {
    ControlError::new(code, msg)
}

/// What an answer must say about an HTTP/1 connection whose request carried a body.
///
/// Handlers read a body only when they need it: an answer that comes first (no such route,
/// wrong method, not logged in, a GET that carries one) leaves it on the connection, and hyper
/// then closes the connection after the answer. A client that was not told reuses it and its
/// next request fails mid-send (schemathesis found this: `PUT /api/v1/nbd` after a 405). So
/// such an answer says `Connection: close`. Mutations that succeed have read their body; an
/// error answer may have read it too, and closing then only costs a new handshake.
/// HTTP/2 needs none of this (a stream ends on its own) and must not send the header.
#[derive(Debug, Clone, Copy)]
pub struct BodyOnWire {
    http1_with_body: bool,
    read_only_method: bool,
}

impl BodyOnWire {
    pub fn of<B: hyper::body::Body>(req: &http::Request<B>) -> BodyOnWire {
        BodyOnWire {
            http1_with_body: req.version() <= http::Version::HTTP_11 && !req.body().is_end_stream(),
            read_only_method: matches!(*req.method(), http::Method::GET | http::Method::HEAD),
        }
    }

    pub fn must_close(self, status: StatusCode) -> bool {
        self.http1_with_body
            && (status.is_client_error()
                || status.is_server_error()
                || (self.read_only_method && status != StatusCode::SWITCHING_PROTOCOLS))
    }
}

/// Read a request body, refusing more than `max` bytes.
pub async fn read_body(body: hyper::body::Incoming, max: usize) -> Result<Bytes, ControlError> {
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ControlError::new(
            ErrorCode::InvalidArgument,
            format!("the request body is larger than {max} bytes"),
        )),
        Err(e) => Err(ControlError::invalid(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// Parse a JSON body into `T`, with a message that names the problem.
pub fn parse_json<T: for<'de> serde::Deserialize<'de>>(b: &[u8]) -> Result<T, ControlError> {
    if b.is_empty() {
        return Err(ControlError::invalid("a JSON request body is required"));
    }
    let bad =
        |e: serde_json::Error| ControlError::invalid(format!("the request body is not valid: {e}"));
    let mut v: serde_json::Value = serde_json::from_slice(b).map_err(bad)?;
    whole_numbers(&mut v);
    T::deserialize(v).map_err(bad)
}

/// JSON Schema counts `280.0` as an integer, so a body the document calls valid may carry one
/// where a count is expected: every number with no fraction becomes an integer before the body
/// is read (a real fraction, `2.5` vCPUs, is still refused by the field's type).
fn whole_numbers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                // Every whole f64 in these ranges converts exactly.
                if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    *v = Value::from(f as u64);
                } else if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(whole_numbers),
        Value::Object(o) => o.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Decoded `?a=b&c=d` pairs (percent-decoding and `+` as space); at most 32.
pub fn query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .take(32)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `limit` and `cursor` from a query string.
pub fn paging(q: &[(String, String)]) -> Result<(usize, Option<String>), ControlError> {
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    for (k, v) in q {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ControlError::invalid(format!(
                            "limit must be a number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "cursor" if !v.is_empty() => {
                // Characters, as the document's maxLength counts them.
                if v.chars().count() > 256 {
                    return Err(ControlError::invalid("cursor is too long"));
                }
                cursor = Some(v.clone());
            }
            _ => {}
        }
    }
    Ok((limit, cursor))
}

/// One page of a list sorted by `key`: items after `cursor`, at most `limit`, plus the cursor
/// of the next page (null on the last page).
pub fn page<T: Serialize>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    limit: usize,
    cursor: Option<&str>,
) -> serde_json::Value {
    // Lists usually arrive sorted already; sort (with each key computed once) only if not.
    if !items.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
        items.sort_by_cached_key(|a| key(a));
    }
    let start = match cursor {
        Some(c) => items
            .iter()
            .position(|i| key(i).as_str() > c)
            .unwrap_or(items.len()),
        None => 0,
    };
    let rest = items.len() - start;
    let taken: Vec<&T> = items.iter().skip(start).take(limit).collect();
    let next = (rest > limit)
        .then(|| taken.last().map(|t| key(t)))
        .flatten();
    serde_json::json!({"items": taken, "next_cursor": next})
}

/// One page of a list ordered by a string key, without turning the whole list into JSON first
/// (a node may hold thousands of virtual disks; a page is at most `MAX_LIMIT` of them). The
/// cursor is the key of the last item of the previous page; it is found by binary search.
pub fn page_by<T: Serialize>(
    mut items: Vec<T>,
    key: fn(&T) -> &str,
    limit: usize,
    cursor: Option<&str>,
) -> serde_json::Value {
    // The node answers sorted; sort only if it did not.
    if !items.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
        items.sort_by(|a, b| key(a).cmp(key(b)));
    }
    let start = cursor.map_or(0, |c| items.partition_point(|i| key(i) <= c));
    let end = start.saturating_add(limit).min(items.len());
    let next = (end < items.len() && end > start).then(|| key(&items[end - 1]).to_string());
    serde_json::json!({"items": &items[start..end], "next_cursor": next})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_closes_only_when_a_body_may_be_left_unread() {
        let req = |m: http::Method, v: http::Version, body: &'static str| {
            let mut r = http::Request::new(Full::new(Bytes::from_static(body.as_bytes())));
            *r.method_mut() = m;
            *r.version_mut() = v;
            BodyOnWire::of(&r)
        };
        use http::{Method as M, Version as V};
        let put = req(M::PUT, V::HTTP_11, "{}");
        assert!(put.must_close(StatusCode::METHOD_NOT_ALLOWED));
        assert!(put.must_close(StatusCode::UNAUTHORIZED));
        assert!(put.must_close(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(
            !put.must_close(StatusCode::CREATED),
            "a success read its body"
        );
        assert!(!req(M::PUT, V::HTTP_11, "").must_close(StatusCode::NOT_FOUND));
        assert!(!req(M::PUT, V::HTTP_2, "{}").must_close(StatusCode::NOT_FOUND));
        let get = req(M::GET, V::HTTP_11, "x");
        assert!(get.must_close(StatusCode::OK), "a GET never reads its body");
        assert!(!get.must_close(StatusCode::SWITCHING_PROTOCOLS));
        assert!(!req(M::GET, V::HTTP_11, "").must_close(StatusCode::OK));
    }

    #[test]
    fn page_by_walks_every_item_once() {
        let names: Vec<String> = ["d", "a", "c", "b", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let p = page_by(names.clone(), |s| s.as_str(), 2, cursor.as_deref());
            for i in p["items"].as_array().unwrap() {
                seen.push(i.as_str().unwrap().to_string());
            }
            match p["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        let past = page_by(names, |s| s.as_str(), 2, Some("zz"));
        assert_eq!(past["items"].as_array().unwrap().len(), 0);
        assert!(past["next_cursor"].is_null());
    }
}
