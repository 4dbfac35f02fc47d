//! The server's shared state and the one path every request takes after routing: who is
//! calling (session cookie or bearer token), may they (the control crate's policy, or the
//! api-local policy in `admin`), run it, audit it.

use crate::audit::AuditLog;
use crate::idempotency::IdempotencyCache;
use crate::sessions::{LoginLimiter, Sessions};
use crate::stats::StatsHub;
use crate::tasks::Tasks;
use crate::tls::CertStore;
use crate::users::Directory;
use control::{Actor, ControlError, Controller, ErrorCode, Reply, Request, Role, Via};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    pub auth: Auth,
    pub source: SocketAddr,
}

#[derive(Debug, Clone)]
pub enum Auth {
    Session { cookie: String, csrf: String },
    Token { id: String },
}

impl Caller {
    pub fn via(&self) -> String {
        match &self.auth {
            Auth::Session { .. } => "session".into(),
            Auth::Token { id } => format!("token:{id}"),
        }
    }
    pub fn actor(&self) -> Actor {
        Actor {
            user: self.user.clone(),
            role: self.role,
            via: Via::Api,
        }
    }
}

/// Something that happened that an operator may want to see (task lifecycle, certificate,
/// lockouts). Bounded ring, newest last.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    pub time_unix: u64,
    pub severity: &'static str,
    pub kind: String,
    pub message: String,
}

pub const MAX_EVENTS: usize = 1000;

pub struct State {
    pub controller: Arc<dyn Controller>,
    pub directory: Directory,
    pub sessions: Sessions,
    pub limiter: LoginLimiter,
    pub audit: AuditLog,
    pub idempotency: IdempotencyCache,
    pub lists: Arc<crate::lists::ListCache>,
    pub tasks: Tasks,
    pub stats: Arc<StatsHub>,
    pub certs: Arc<CertStore>,
    pub events: Mutex<(u64, VecDeque<Event>)>,
    pub sse_clients: std::sync::atomic::AtomicUsize,
    pub started: std::time::Instant,
    pub system_log: Option<crate::LogSource>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// Operations that run as tasks.
pub fn is_long(req: &Request) -> bool {
    matches!(
        req,
        Request::VdiskClone { .. }
            | Request::VdiskImport { .. }
            | Request::VdiskExport { .. }
            | Request::SnapshotRollback { .. }
            | Request::DiskScrub
            // A graceful stop waits for the guest (10 s by default, up to 10 min).
            | Request::VmStop { force: false, .. }
            // A planned move waits for the target to serve the disk.
            | Request::VdiskTakeover { .. }
            // A planned VM move waits for the target to serve every disk and define the VM.
            | Request::VmMove { .. }
    )
}

/// The object a request acts on, for the audit log.
pub fn target_of(req: &Request) -> String {
    match req {
        Request::DiskAdd { path } | Request::DiskProbe { path } => path.clone(),
        Request::DiskRemove { disk } => disk.clone(),
        Request::VdiskCreate { name, .. }
        | Request::VdiskGet { name }
        | Request::VdiskResize { name, .. }
        | Request::VdiskDelete { name } => name.clone(),
        Request::VdiskClone {
            source,
            snapshot,
            name,
        } => match snapshot {
            Some(s) => format!("{source}@{s} -> {name}"),
            None => format!("{source} -> {name}"),
        },
        Request::VdiskImport { name, file } => format!("{file} -> {name}"),
        Request::VdiskExport { name, file, .. } => format!("{name} -> {file}"),
        Request::SnapshotCreate { vdisk, name }
        | Request::SnapshotDelete { vdisk, name }
        | Request::SnapshotRollback { vdisk, name } => format!("{vdisk}@{name}"),
        Request::SnapshotList { vdisk } | Request::SnapshotDiff { vdisk, .. } => vdisk.clone(),
        Request::NbdStart { vdisk, .. } => vdisk.clone(),
        Request::NbdStop { id } => id.to_string(),
        Request::VmCreate { name, .. }
        | Request::VmGet { name }
        | Request::VmStart { name }
        | Request::VmStop { name, .. }
        | Request::VmPause { name }
        | Request::VmResume { name }
        | Request::VmDelete { name }
        | Request::VmConsole { name, .. } => name.clone(),
        Request::VmDiskAttach { name, vdisk } => format!("{vdisk} -> {name}"),
        Request::VmDiskDetach { name, vdisk, .. } => format!("{vdisk} <- {name}"),
        Request::VmUpdate { name, new_name, .. } => match new_name {
            Some(n) if n != name => format!("{name} -> {n}"),
            _ => name.clone(),
        },
        Request::ClusterRemove { node, .. } => node.clone(),
        Request::ClusterLocate { node, address } => format!("{node} at {address}"),
        Request::VdiskTakeover { name, to, .. } | Request::VmMove { name, to } => {
            format!("{name} -> {to}")
        }
        Request::ClusterToken { witness, .. } => {
            if *witness {
                "witness".into()
            } else {
                "data".into()
            }
        }
        _ => String::new(),
    }
}

impl State {
    pub fn event(&self, severity: &'static str, kind: &str, message: String) {
        let mut g = self.events.lock();
        g.0 += 1;
        let e = Event {
            id: g.0,
            time_unix: crate::files::now_unix(),
            severity,
            kind: kind.into(),
            message,
        };
        if g.1.len() >= MAX_EVENTS {
            g.1.pop_front();
        }
        g.1.push_back(e);
    }

    pub fn audit_result(
        &self,
        c: &Caller,
        action: &str,
        target: &str,
        res: Result<(), &ControlError>,
    ) {
        let (result, msg) = match res {
            Ok(()) => ("ok".to_string(), String::new()),
            Err(e) => (e.code.as_str().to_string(), e.message.clone()),
        };
        self.audit.record(
            &c.user,
            &c.via(),
            &c.source.ip().to_string(),
            action,
            target,
            &result,
            &msg,
        );
    }

    /// Authorize (the control crate's policy) and validate before anything runs.
    pub fn precheck(&self, c: &Caller, req: &Request) -> Result<(), ControlError> {
        if !control::allowed(c.role, req) {
            let e = ControlError::new(
                ErrorCode::Forbidden,
                format!("the {} role may not do {}", role_name(c.role), req.action()),
            );
            if req.is_mutation() {
                self.audit_result(c, req.action(), &target_of(req), Err(&e));
            }
            return Err(e);
        }
        req.validate()
    }

    /// Forward one request to the controller; audit it if it changes anything.
    pub async fn control(&self, c: &Caller, req: Request) -> Result<Reply, ControlError> {
        self.precheck(c, &req)?;
        self.run(c, req).await
    }

    /// Run an already checked request.
    pub async fn run(&self, c: &Caller, req: Request) -> Result<Reply, ControlError> {
        let mutation = req.is_mutation();
        let (action, target) = (req.action(), target_of(&req));
        let res = self.controller.execute(c.actor(), req).await;
        if mutation {
            self.audit_result(c, action, &target, res.as_ref().map(|_| ()));
        }
        res
    }
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Operator => "operator",
        Role::ReadOnly => "read-only",
    }
}
