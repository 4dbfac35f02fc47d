//! `/api/v1`: authentication, then one arm per route that parses the input into a
//! `control::Request` (forwarded to the controller) or an `admin::AdminAction` (applied by
//! `admin::apply`), or reads the api's own state (tasks, audit, stats). No storage logic here.

use crate::admin::AdminAction;
use crate::http::{self as h, err, Resp};
use crate::idempotency::{Lookup, Stored};
use crate::render::reply_value;
use crate::routes::{self, Found, R};
use crate::sessions::{self, csrf_ok};
use crate::state::{is_long, target_of, Auth, Caller, State};
use control::{ControlError, ErrorCode, Reply, Request};
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

pub static OPENAPI: &str = include_str!("../openapi.json");

pub async fn handle(
    st: Arc<State>,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Resp {
    let path = req
        .uri()
        .path()
        .strip_prefix("/api/v1")
        .unwrap_or("")
        .to_string();
    let (r, params) = match routes::find(req.method(), &path) {
        Found::Route(r, p) => (r, p),
        Found::NotFound => {
            return h::error(&err(
                ErrorCode::NotFound,
                format!("no API endpoint {}", req.uri().path()),
            ))
        }
        Found::WrongMethod(ms) => {
            let mut resp = h::json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": {"code": "method_not_allowed", "message": format!("{} is not allowed here", req.method())}}),
            );
            let allow = ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return resp;
        }
    };
    match handle_route(&st, r, params, req, peer).await {
        Ok(resp) => resp,
        Err(e) => h::error(&e),
    }
}

fn authenticate(
    st: &State,
    hdrs: &http::HeaderMap,
    peer: SocketAddr,
) -> Result<Caller, ControlError> {
    if let Some(a) = h::header_str(hdrs, "authorization") {
        let tok = a.strip_prefix("Bearer ").ok_or_else(|| {
            err(
                ErrorCode::Unauthorized,
                "Authorization must be 'Bearer <token>'",
            )
        })?;
        let (user, role, id) = st.directory.check_token(tok.trim()).ok_or_else(|| {
            err(
                ErrorCode::Unauthorized,
                "the API token is not valid, expired or revoked",
            )
        })?;
        return Ok(Caller {
            user,
            role,
            auth: Auth::Token { id },
            source: peer,
        });
    }
    if let Some(cookie) = h::cookie(hdrs, sessions::SESSION_COOKIE) {
        if let Some(s) = st.sessions.get(cookie) {
            // The role comes from the directory so a demoted user is demoted at once.
            let role = st.directory.role_of(&s.user).unwrap_or(s.role);
            return Ok(Caller {
                user: s.user,
                role,
                auth: Auth::Session {
                    cookie: cookie.to_string(),
                    csrf: s.csrf,
                },
                source: peer,
            });
        }
    }
    Err(err(
        ErrorCode::Unauthorized,
        "log in first (session expired or no credentials)",
    ))
}

use crate::bodies::*;
use crate::login::login;

async fn handle_route(
    st: &Arc<State>,
    r: R,
    params: Vec<String>,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Result<Resp, ControlError> {
    let q = h::query(req.uri().query());
    let method = req.method().clone();
    let mutation = !matches!(method, Method::GET | Method::HEAD);
    match r {
        R::Health => return Ok(h::json(StatusCode::OK, &json!({"status": "ok"}))),
        R::OpenApi => return Ok(h::with_type(StatusCode::OK, "application/json", OPENAPI)),
        R::Login => {
            let body = h::read_body(req.into_body(), 4096).await?;
            return login(st, &body, peer).await;
        }
        _ => {}
    }
    let hdrs = req.headers();
    let caller = authenticate(st, hdrs, peer)?;
    if mutation {
        if let Auth::Session { csrf, .. } = &caller.auth {
            if !csrf_ok(
                csrf,
                h::header_str(hdrs, sessions::CSRF_HEADER),
                h::cookie(hdrs, sessions::CSRF_COOKIE),
            ) {
                return Err(err(
                    ErrorCode::Forbidden,
                    "missing or wrong CSRF token (X-CSRF-Token header); reload the page",
                ));
            }
        }
    }
    if r == R::StatsStream {
        return crate::sse::stream(st.clone());
    }
    if r == R::VmConsoleWs {
        return crate::ws::console(st.clone(), caller, &params[0], req);
    }
    if !mutation {
        if let Some(resp) = crate::lists::serve(st, r, &params, &q, &caller).await? {
            return Ok(resp);
        }
    }
    // Read before the body consumes the request; a bad key is still reported after the body.
    let idem_key = if mutation {
        crate::idempotency::key_of(hdrs)
    } else {
        Ok(None)
    };
    let body = if mutation {
        h::read_body(req.into_body(), h::MAX_BODY_BYTES).await?
    } else {
        bytes::Bytes::new()
    };
    let idem_key = idem_key?;
    // Stored answers are kept on disk for a day: one that carries a secret shown once (an API
    // token, a cluster join token) must never be, so such a request takes no key.
    if idem_key.is_some() && matches!(r, R::TokenCreate | R::ClusterToken) {
        return Err(ControlError::invalid(
            "this answer holds a secret that is shown once and never stored, so it cannot be \
             replayed: send it without an Idempotency-Key (a retry makes a new one)",
        ));
    }
    let mut fingerprint = String::new();
    if let Some(k) = &idem_key {
        let mut fp = format!("{} {}\n", method, path_of(r, &params)).into_bytes();
        fp.extend_from_slice(&body);
        fingerprint = crate::files::sha256_hex(&fp);
        match st.idempotency.begin(&caller.user, k, &fingerprint) {
            Lookup::Fresh => {}
            Lookup::Replay(s) => {
                let mut resp = h::with_type(
                    StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK),
                    "application/json",
                    s.body,
                );
                resp.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(resp);
            }
            Lookup::Mismatch => {
                return Err(err(
                    ErrorCode::Conflict,
                    "this Idempotency-Key was used for a different request",
                ))
            }
            Lookup::InFlight => {
                return Err(err(
                    ErrorCode::Conflict,
                    "a request with this Idempotency-Key is still running",
                ))
            }
        }
    }
    let res = dispatch(st, r, &params, &q, &body, &caller).await;
    if let Some(k) = &idem_key {
        match &res {
            // Only answers that reflect a decision are remembered; a transient failure may be retried.
            Ok((status, v)) => st.idempotency.finish(
                &caller.user,
                k,
                Stored {
                    fingerprint: fingerprint.clone(),
                    status: *status,
                    body: encode(v).into(),
                },
            ),
            Err(e) if e.http_status() < 500 => st.idempotency.finish(
                &caller.user,
                k,
                Stored {
                    fingerprint: fingerprint.clone(),
                    status: e.http_status(),
                    body: encode(
                        &json!({"error": {"code": e.code.as_str(), "message": e.message}}),
                    )
                    .into(),
                },
            ),
            Err(_) => st.idempotency.abandon(&caller.user, k),
        }
    }
    match res {
        Ok((204, _)) => Ok(h::no_content()),
        Ok((status, v)) => Ok(h::json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            &v,
        )),
        Err(e) => Err(e),
    }
}

fn encode(v: &Value) -> Vec<u8> {
    if v.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(v).unwrap_or_default()
    }
}

fn path_of(r: R, params: &[String]) -> String {
    format!("{r:?}/{}", params.join("/"))
}

fn qget<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

fn size_of(size_bytes: Option<u64>, size: Option<&str>) -> Result<u64, ControlError> {
    match (size_bytes, size) {
        (Some(n), None) => Ok(n),
        (None, Some(s)) => size_text(s),
        (Some(_), Some(_)) => Err(ControlError::invalid("give size_bytes or size, not both")),
        (None, None) => Err(ControlError::invalid(
            "size_bytes (or size, like \"10G\") is required",
        )),
    }
}

pub(crate) type Out = Result<(u16, Value), ControlError>;

async fn dispatch(
    st: &Arc<State>,
    r: R,
    p: &[String],
    q: &[(String, String)],
    body: &[u8],
    c: &Caller,
) -> Out {
    let param = |i: usize| p.get(i).cloned().unwrap_or_default();
    match r {
        R::Vms
        | R::VmCreate
        | R::VmGet
        | R::VmDelete
        | R::VmStart
        | R::VmStop
        | R::VmPause
        | R::VmResume
        | R::VmConsole
        | R::VmDisks
        | R::VmDiskAttach
        | R::VmDiskDetach
        | R::VmUpdate
        | R::Cluster
        | R::ClusterToken
        | R::ClusterLocate
        | R::ClusterRemove => crate::vms::dispatch(st, r, p, q, body, c).await,
        R::Health | R::OpenApi | R::Login => Err(ControlError::internal("handled before dispatch")),
        R::Logout => {
            if let Auth::Session { cookie, .. } = &c.auth {
                st.sessions.remove(cookie);
            }
            Ok((204, Value::Null))
        }
        R::Me => Ok((
            200,
            json!({"user": c.user, "role": c.role, "via": c.via(),
            "csrf_token": match &c.auth { Auth::Session { csrf, .. } => Some(csrf.clone()), _ => None }}),
        )),
        R::Nodes | R::Node => {
            let paging = if r == R::Nodes {
                Some(h::paging(q)?)
            } else {
                None
            };
            let nodes = crate::stats::node_views(st, c).await?;
            if let Some((limit, cursor)) = paging {
                let key = |n: &Value| n["name"].as_str().unwrap_or_default().to_string();
                return Ok((200, h::page(nodes, key, limit, cursor.as_deref())));
            }
            let id = param(0);
            nodes
                .into_iter()
                .find(|n| {
                    n["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(id.as_str())
                        || n["name"].as_str() == Some(id.as_str())
                })
                .map(|n| (200, n))
                .ok_or_else(|| ControlError::not_found(format!("no node {id:?}")))
        }
        R::Disks => list(st, c, Request::DiskList, q).await,
        R::DiskAdd => {
            let b: PathBody = h::parse_json(body)?;
            simple(st, c, Request::DiskAdd { path: b.path }, 201).await
        }
        R::DiskRemove => simple(st, c, Request::DiskRemove { disk: param(0) }, 200).await,
        R::DiskScrub => task(st, c, Request::DiskScrub).await,
        R::DiskProbe => {
            let b: PathBody = h::parse_json(body)?;
            simple(st, c, Request::DiskProbe { path: b.path }, 200).await
        }
        R::Pool => simple(st, c, Request::PoolInfo, 200).await,
        R::Vdisks => Err(ControlError::internal("handled before dispatch")),
        R::VdiskCreate => {
            let b: VdiskCreateBody = h::parse_json(body)?;
            let size_bytes = size_of(b.size_bytes, b.size.as_deref())?;
            simple(
                st,
                c,
                Request::VdiskCreate {
                    name: b.name,
                    size_bytes,
                },
                201,
            )
            .await
        }
        R::VdiskGet => simple(st, c, Request::VdiskGet { name: param(0) }, 200).await,
        R::VdiskResize => {
            let b: ResizeBody = h::parse_json(body)?;
            let size_bytes = size_of(b.size_bytes, b.size.as_deref())?;
            simple(
                st,
                c,
                Request::VdiskResize {
                    name: param(0),
                    size_bytes,
                },
                200,
            )
            .await
        }
        R::VdiskDelete => simple(st, c, Request::VdiskDelete { name: param(0) }, 204).await,
        R::VdiskClone => {
            let b: CloneBody = h::parse_json(body)?;
            task(
                st,
                c,
                Request::VdiskClone {
                    source: param(0),
                    snapshot: b.snapshot,
                    name: b.name,
                },
            )
            .await
        }
        R::VdiskTakeover => {
            let b: crate::bodies::TakeoverBody = h::parse_json(body)?;
            task(
                st,
                c,
                Request::VdiskTakeover {
                    name: param(0),
                    to: b.to,
                    force: b.force,
                },
            )
            .await
        }
        R::VmMove => {
            let b: crate::bodies::VmMoveBody = h::parse_json(body)?;
            task(
                st,
                c,
                Request::VmMove {
                    name: param(0),
                    to: b.to,
                },
            )
            .await
        }
        R::VdiskImport => {
            let b: ImportBody = h::parse_json(body)?;
            task(
                st,
                c,
                Request::VdiskImport {
                    name: b.name,
                    file: b.file,
                },
            )
            .await
        }
        R::VdiskExport => {
            let b: ExportBody = h::parse_json(body)?;
            task(
                st,
                c,
                Request::VdiskExport {
                    name: param(0),
                    snapshot: b.snapshot,
                    file: b.file,
                },
            )
            .await
        }
        R::Snapshots => list(st, c, Request::SnapshotList { vdisk: param(0) }, q).await,
        R::SnapshotCreate => {
            let b: NameBody = h::parse_json(body)?;
            simple(
                st,
                c,
                Request::SnapshotCreate {
                    vdisk: param(0),
                    name: b.name,
                },
                201,
            )
            .await
        }
        R::SnapshotDelete => {
            simple(
                st,
                c,
                Request::SnapshotDelete {
                    vdisk: param(0),
                    name: param(1),
                },
                204,
            )
            .await
        }
        R::SnapshotRollback => {
            task(
                st,
                c,
                Request::SnapshotRollback {
                    vdisk: param(0),
                    name: param(1),
                },
            )
            .await
        }
        R::SnapshotDiff => {
            let from = qget(q, "from").ok_or_else(|| {
                ControlError::invalid("query parameter 'from' (a snapshot name) is required")
            })?;
            let to = qget(q, "to").filter(|s| !s.is_empty()).map(str::to_string);
            let req = Request::SnapshotDiff {
                vdisk: param(0),
                from: from.into(),
                to,
            };
            let reply = st.control(c, req).await?;
            Ok((200, json!({"ranges": reply_value(&reply)?})))
        }
        R::NbdList => list(st, c, Request::NbdList, q).await,
        R::NbdStart => {
            let b: NbdBody = h::parse_json(body)?;
            simple(
                st,
                c,
                Request::NbdStart {
                    vdisk: b.vdisk,
                    snapshot: b.snapshot,
                    listen: b.listen,
                    read_only: b.read_only,
                },
                201,
            )
            .await
        }
        R::NbdStop => {
            let id = param(0)
                .parse::<u64>()
                .map_err(|_| ControlError::invalid("export id must be a number"))?;
            simple(st, c, Request::NbdStop { id }, 204).await
        }
        R::Tasks => {
            let (limit, cursor) = h::paging(q)?;
            let before = parse_cursor(cursor)?;
            let items = st.tasks.list(before, limit + 1);
            Ok((200, id_page(items, limit, |t| t.id)))
        }
        R::Task => {
            let id = param(0)
                .parse::<u64>()
                .map_err(|_| ControlError::invalid("task id must be a number"))?;
            let t = st
                .tasks
                .get(id)
                .ok_or_else(|| ControlError::not_found(format!("no task {id}")))?;
            Ok((200, serde_json::to_value(t).unwrap_or_default()))
        }
        R::Events => {
            let (limit, cursor) = h::paging(q)?;
            let before = parse_cursor(cursor)?;
            let items: Vec<_> = st
                .events
                .lock()
                .1
                .iter()
                .rev()
                .filter(|e| before == 0 || e.id < before)
                .take(limit + 1)
                .cloned()
                .collect();
            Ok((200, id_page(items, limit, |e| e.id)))
        }
        R::Alerts => {
            let mut items = crate::sse::alerts(st);
            // The cluster's part: what this node sees of the others (its own view, plus each
            // member's lease, asked with a short timeout as `GET /cluster` does).
            match st.control(c, Request::ClusterStatus).await {
                Ok(Reply::Cluster(v)) => items.extend(crate::sse::cluster_alerts(&v)),
                Ok(_) => {}
                Err(e) => items.push(json!({"severity": "warning", "kind": "cluster_unknown",
                    "message": format!("the cluster's state is not known here: {}", e.message)})),
            }
            Ok((200, json!({ "items": items })))
        }
        R::Users | R::UserGet => {
            if c.role != control::Role::Admin && !(r == R::UserGet && param(0) == c.user) {
                return Err(err(ErrorCode::Forbidden, "only an admin may list users"));
            }
            if r == R::UserGet {
                let u = st.directory.user(&param(0)).ok_or_else(|| {
                    ControlError::not_found(format!("no user named {:?}", param(0)))
                })?;
                return Ok((200, serde_json::to_value(u).unwrap_or_default()));
            }
            let (limit, cursor) = h::paging(q)?;
            Ok((
                200,
                h::page(
                    st.directory.users(),
                    |u| u.name.clone(),
                    limit,
                    cursor.as_deref(),
                ),
            ))
        }
        R::UserCreate => {
            let b: UserCreateBody = h::parse_json(body)?;
            admin(
                st,
                c,
                AdminAction::UserCreate {
                    name: b.name,
                    role: b.role,
                    password: b.password,
                },
            )
            .await
        }
        R::UserUpdate => {
            let b: UserUpdateBody = h::parse_json(body)?;
            admin(
                st,
                c,
                AdminAction::UserUpdate {
                    name: param(0),
                    role: b.role,
                    password: b.password,
                },
            )
            .await
        }
        R::UserDelete => admin(st, c, AdminAction::UserDelete { name: param(0) }).await,
        R::Tokens => {
            let (limit, cursor) = h::paging(q)?;
            let mine: Vec<_> = st
                .directory
                .tokens()
                .into_iter()
                .filter(|t| c.role == control::Role::Admin || t.owner == c.user)
                .collect();
            Ok((
                200,
                h::page(
                    mine,
                    |t| format!("{:020}-{}", t.created_unix, t.id),
                    limit,
                    cursor.as_deref(),
                ),
            ))
        }
        R::TokenCreate => {
            let b: TokenBody = h::parse_json(body)?;
            admin(
                st,
                c,
                AdminAction::TokenCreate {
                    name: b.name,
                    role: b.role,
                    expires_in_secs: b.expires_in_secs,
                },
            )
            .await
        }
        R::TokenRevoke => admin(st, c, AdminAction::TokenRevoke { id: param(0) }).await,
        R::Cert => {
            let mut v = serde_json::to_value(st.certs.info()).unwrap_or_default();
            v["cert_pem"] = Value::String(
                st.certs
                    .cert_pem()
                    .map_err(|e| ControlError::internal(e.to_string()))?,
            );
            Ok((200, v))
        }
        R::CertReplace => {
            let b: CertBody = h::parse_json(body)?;
            admin(
                st,
                c,
                AdminAction::CertificateReplace {
                    cert_pem: b.cert_pem,
                    key_pem: b.key_pem,
                },
            )
            .await
        }
        R::Audit => {
            let (limit, cursor) = h::paging(q)?;
            let before = parse_cursor(cursor)?;
            let items = st.audit.list(before, limit + 1);
            Ok((200, id_page(items, limit, |e| e.id)))
        }
        R::SystemLog => Ok((200, crate::syslog::page(st.system_log.as_ref(), q)?)),
        R::Stats => Ok((
            200,
            st.stats
                .latest()
                .map(|s| serde_json::to_value(&*s).unwrap_or_default())
                .unwrap_or(json!(null)),
        )),
        R::StatsHistory => {
            let since = match qget(q, "since_ms") {
                Some(s) => s.parse::<u64>().map_err(|_| {
                    ControlError::invalid("since_ms must be a number (milliseconds since 1970)")
                })?,
                None => 0,
            };
            let limit = match qget(q, "limit") {
                Some(s) => s
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=crate::stats::HISTORY).contains(n))
                    .ok_or_else(|| ControlError::invalid("limit must be 1-3600"))?,
                None => crate::stats::HISTORY,
            };
            let items = st.stats.history(since, limit);
            let items: Vec<&crate::stats::Sample> = items.iter().map(|s| &**s).collect();
            Ok((200, json!({"items": items})))
        }
        R::StatsStream | R::VmConsoleWs => Err(ControlError::internal("handled before dispatch")),
        // Any control request as-is (the CLI's `--server` mode): same policy, validation and
        // audit as the REST routes; long operations run to completion before answering.
        R::Control => {
            let v: Value = h::parse_json(body)?;
            let req = Request::from_json(v).map_err(|e| {
                ControlError::invalid(format!("the request body is not valid: {e}"))
            })?;
            let reply = st.control(c, req).await?;
            Ok((
                200,
                serde_json::to_value(&reply).map_err(|e| ControlError::internal(e.to_string()))?,
            ))
        }
    }
}

fn parse_cursor(c: Option<String>) -> Result<u64, ControlError> {
    match c {
        None => Ok(0),
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| ControlError::invalid("cursor is not one this list gave out")),
    }
}

/// A page of a newest-first list keyed by numeric id; `items` holds up to limit + 1 entries.
fn id_page<T: serde::Serialize>(mut items: Vec<T>, limit: usize, id: impl Fn(&T) -> u64) -> Value {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(|t| id(t).to_string())
    } else {
        None
    };
    json!({"items": items, "next_cursor": next})
}

pub(crate) async fn simple(st: &State, c: &Caller, req: Request, status: u16) -> Out {
    let reply = st.control(c, req).await?;
    if status == 204 {
        return Ok((204, Value::Null));
    }
    let status = if matches!(reply, Reply::Done) && status == 201 {
        200
    } else {
        status
    };
    Ok((status, reply_value(&reply)?))
}

/// A quick mutation that still leaves a task record (so the Tasks view lists it with its
/// result, like the long ones): checked first, so bad input or a denied role makes no task.
pub(crate) async fn recorded(st: &State, c: &Caller, req: Request, status: u16) -> Out {
    st.precheck(c, &req)?;
    let t = st.tasks.start(req.action(), &target_of(&req), &c.user)?;
    let res = st.run(c, req).await;
    st.tasks.finish(t.id, &res);
    let reply = res?;
    Ok((status, reply_value(&reply)?))
}

/// A paged list. The reply's items stay typed until the page is cut, so a list of thousands
/// costs one page of JSON, not thousands of `Value` trees.
pub(crate) async fn list(st: &State, c: &Caller, req: Request, q: &[(String, String)]) -> Out {
    let (limit, cursor) = h::paging(q)?;
    let cur = cursor.as_deref();
    let page = match st.control(c, req).await? {
        Reply::Vdisks(v) => h::page_by(v, |d| d.name.as_str(), limit, cur),
        Reply::Disks(v) => h::page_by(v, |d| d.name.as_str(), limit, cur),
        Reply::Snapshots(v) => h::page_by(v, |s| s.name.as_str(), limit, cur),
        Reply::Vms(v) => h::page_by(v, |m| m.name.as_str(), limit, cur),
        Reply::NbdExports(v) => h::page(v, |e| format!("{:020}", e.id), limit, cur),
        other => {
            return Err(ControlError::internal(format!(
                "the node answered a list with {}",
                reply_value(&other)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            )))
        }
    };
    Ok((200, page))
}

/// Long operations: check role, input and that the source exists now (so a typo is a 404, not
/// a failed task), then run in the background and answer 202 with the task.
pub(crate) async fn task(st: &Arc<State>, c: &Caller, req: Request) -> Out {
    debug_assert!(is_long(&req));
    st.precheck(c, &req)?;
    // A new disk named like a route (`import`) is refused now, not as a failed task (the node
    // refuses it too, for the CLI).
    if let Request::VdiskClone { name, .. } | Request::VdiskImport { name, .. } = &req {
        if crate::routes::is_reserved_name("/vdisks", name) {
            return Err(ControlError::new(
                ErrorCode::AlreadyExists,
                format!("the name {name:?} is reserved (it is the API's /vdisks/{name} endpoint); choose another name"),
            ));
        }
    }
    let exists = match &req {
        Request::VdiskClone { source, .. } => Some(source.clone()),
        Request::VdiskExport { name, .. } => Some(name.clone()),
        Request::SnapshotRollback { vdisk, .. } => Some(vdisk.clone()),
        _ => None,
    };
    if let Some(name) = exists {
        let found = st.run(c, Request::VdiskGet { name: name.clone() }).await?;
        // Another member's disk (the node passed the check on): a file export writes on this
        // node's host and reads this node's copy, so it is that member's to do.
        if let (Request::VdiskExport { .. }, Reply::Vdisk(v)) = (&req, &found) {
            if let Some(member) = &v.node {
                return Err(err(
                    ErrorCode::Conflict,
                    format!(
                        "virtual disk {name} is on member {member}: export it there (the file is \
                         written on the host of the member that holds the disk)"
                    ),
                ));
            }
        }
    }
    if let Request::VmStop { name, .. } = &req {
        // A stop of a VM that is not running is refused now, not as a failed task.
        let Reply::Vm(vm) = st.run(c, Request::VmGet { name: name.clone() }).await? else {
            return Err(ControlError::internal(
                "the node answered vm_get with something else",
            ));
        };
        if !matches!(vm.state.as_str(), "running" | "paused") {
            return Err(err(
                ErrorCode::Conflict,
                format!("{name} is not running (it is {})", vm.state),
            ));
        }
    }
    let t = st.tasks.start(req.action(), &target_of(&req), &c.user)?;
    st.event(
        "info",
        "task",
        format!("task {} started: {} {}", t.id, t.action, t.target),
    );
    let (st2, c2, id) = (st.clone(), c.clone(), t.id);
    tokio::spawn(async move {
        let res = st2.run(&c2, req).await;
        st2.tasks.finish(id, &res);
        match &res {
            Ok(_) => st2.event("info", "task", format!("task {id} succeeded")),
            Err(e) => st2.event("error", "task", format!("task {id} failed: {}", e.message)),
        }
    });
    Ok((202, serde_json::to_value(t).unwrap_or_default()))
}

async fn admin(st: &Arc<State>, c: &Caller, a: AdminAction) -> Out {
    let (st2, c2) = (st.clone(), c.clone());
    tokio::task::spawn_blocking(move || crate::admin::apply(&st2, &c2, a))
        .await
        .map_err(|e| ControlError::internal(e.to_string()))?
}
