//! `POST /auth/login`: the failed-login limiter, argon2id verification off the async runtime,
//! the session and CSRF cookies, and an audit line for every attempt.

use crate::http::{self as h, err, Resp};
use crate::sessions;
use crate::state::State;
use control::{ControlError, ErrorCode};
use http::{header, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

pub(crate) async fn login(
    st: &Arc<State>,
    body: &[u8],
    peer: SocketAddr,
) -> Result<Resp, ControlError> {
    let ip = peer.ip();
    if let Err(secs) = st.limiter.check(ip) {
        let mut r = h::error(&err(
            ErrorCode::Busy,
            format!("too many failed logins from {ip}; try again in {secs} s"),
        ));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(r);
    }
    let b: LoginBody = h::parse_json(body)?;
    if b.user.chars().count() > 64 || b.password.chars().count() > crate::users::MAX_PASSWORD_LEN {
        return Err(ControlError::invalid("user or password is too long"));
    }
    let st2 = st.clone();
    let (user, pw) = (b.user.clone(), b.password);
    let role = tokio::task::spawn_blocking(move || st2.directory.login(&user, &pw))
        .await
        .map_err(|e| ControlError::internal(e.to_string()))?;
    let source = ip.to_string();
    let Some(role) = role else {
        st.limiter.failed(ip);
        st.audit.record(
            &b.user,
            "login",
            &source,
            "login",
            &b.user,
            "unauthorized",
            "wrong user name or password",
        );
        return Err(err(ErrorCode::Unauthorized, "wrong user name or password"));
    };
    st.limiter.succeeded(ip);
    st.audit
        .record(&b.user, "login", &source, "login", &b.user, "ok", "");
    let (cookie, csrf) = st.sessions.create(&b.user, role);
    let mut r = h::json(
        StatusCode::OK,
        &json!({"user": b.user, "role": role, "csrf_token": csrf}),
    );
    let c1 = format!(
        "{}={cookie}; Path=/; Secure; HttpOnly; SameSite=Strict",
        sessions::SESSION_COOKIE
    );
    let c2 = format!(
        "{}={csrf}; Path=/; Secure; SameSite=Strict",
        sessions::CSRF_COOKIE
    );
    for c in [c1, c2] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(r)
}
