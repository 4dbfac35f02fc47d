//! The route table of `/api/v1`: one row per (method, path pattern). Adding an endpoint (the VM
//! endpoints, later) is one row here plus one arm in `v1::dispatch`; the OpenAPI test checks that
//! this table and `openapi.json` list the same operations.

use http::Method;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum R {
    Health,
    OpenApi,
    Login,
    Logout,
    Me,
    Nodes,
    Node,
    Disks,
    DiskAdd,
    DiskRemove,
    DiskScrub,
    DiskProbe,
    Pool,
    Vdisks,
    VdiskCreate,
    VdiskGet,
    VdiskResize,
    VdiskDelete,
    VdiskClone,
    VdiskTakeover,
    VdiskImport,
    VdiskExport,
    Snapshots,
    SnapshotCreate,
    SnapshotDelete,
    SnapshotRollback,
    SnapshotDiff,
    NbdList,
    NbdStart,
    NbdStop,
    Tasks,
    Task,
    Events,
    Alerts,
    Users,
    UserCreate,
    UserGet,
    UserUpdate,
    UserDelete,
    Tokens,
    TokenCreate,
    TokenRevoke,
    Cert,
    CertReplace,
    Audit,
    SystemLog,
    Stats,
    StatsHistory,
    StatsStream,
    Control,
    Vms,
    VmCreate,
    VmGet,
    VmDelete,
    VmStart,
    VmDiskAttach,
    VmDiskDetach,
    VmStop,
    VmPause,
    VmResume,
    VmConsole,
    VmDisks,
    Cluster,
    VmConsoleWs,
    VmUpdate,
    VmMove,
    ClusterToken,
    ClusterRemove,
    ClusterLocate,
}

/// Every route: method, pattern under `/api/v1` (`{x}` is one path segment), handler.
pub const ROUTES: &[(Method, &str, R)] = &[
    (Method::GET, "/health", R::Health),
    (Method::GET, "/openapi.json", R::OpenApi),
    (Method::POST, "/auth/login", R::Login),
    (Method::POST, "/auth/logout", R::Logout),
    (Method::GET, "/auth/me", R::Me),
    (Method::GET, "/nodes", R::Nodes),
    (Method::GET, "/nodes/{id}", R::Node),
    (Method::GET, "/disks", R::Disks),
    (Method::POST, "/disks", R::DiskAdd),
    (Method::DELETE, "/disks/{id}", R::DiskRemove),
    (Method::POST, "/disks/scrub", R::DiskScrub),
    (Method::POST, "/disks/probe", R::DiskProbe),
    (Method::GET, "/pool", R::Pool),
    (Method::GET, "/vdisks", R::Vdisks),
    (Method::POST, "/vdisks", R::VdiskCreate),
    (Method::POST, "/vdisks/import", R::VdiskImport),
    (Method::GET, "/vdisks/{name}", R::VdiskGet),
    (Method::PATCH, "/vdisks/{name}", R::VdiskResize),
    (Method::DELETE, "/vdisks/{name}", R::VdiskDelete),
    (Method::POST, "/vdisks/{name}/clone", R::VdiskClone),
    (Method::POST, "/vdisks/{name}/takeover", R::VdiskTakeover),
    (Method::POST, "/vdisks/{name}/export", R::VdiskExport),
    (Method::GET, "/vdisks/{name}/snapshots", R::Snapshots),
    (Method::POST, "/vdisks/{name}/snapshots", R::SnapshotCreate),
    (
        Method::DELETE,
        "/vdisks/{name}/snapshots/{snapshot}",
        R::SnapshotDelete,
    ),
    (
        Method::POST,
        "/vdisks/{name}/snapshots/{snapshot}/rollback",
        R::SnapshotRollback,
    ),
    (Method::GET, "/vdisks/{name}/diff", R::SnapshotDiff),
    (Method::GET, "/nbd", R::NbdList),
    (Method::POST, "/nbd", R::NbdStart),
    (Method::DELETE, "/nbd/{id}", R::NbdStop),
    (Method::GET, "/tasks", R::Tasks),
    (Method::GET, "/tasks/{id}", R::Task),
    (Method::GET, "/events", R::Events),
    (Method::GET, "/alerts", R::Alerts),
    (Method::GET, "/users", R::Users),
    (Method::POST, "/users", R::UserCreate),
    (Method::GET, "/users/{name}", R::UserGet),
    (Method::PATCH, "/users/{name}", R::UserUpdate),
    (Method::DELETE, "/users/{name}", R::UserDelete),
    (Method::GET, "/tokens", R::Tokens),
    (Method::POST, "/tokens", R::TokenCreate),
    (Method::DELETE, "/tokens/{id}", R::TokenRevoke),
    (Method::GET, "/certificate", R::Cert),
    (Method::PUT, "/certificate", R::CertReplace),
    (Method::GET, "/audit", R::Audit),
    (Method::GET, "/system/log", R::SystemLog),
    (Method::GET, "/stats", R::Stats),
    (Method::GET, "/stats/history", R::StatsHistory),
    (Method::GET, "/stats/stream", R::StatsStream),
    (Method::POST, "/control", R::Control),
    (Method::GET, "/vms", R::Vms),
    (Method::POST, "/vms", R::VmCreate),
    (Method::GET, "/vms/{name}", R::VmGet),
    (Method::DELETE, "/vms/{name}", R::VmDelete),
    (Method::POST, "/vms/{name}/start", R::VmStart),
    (Method::POST, "/vms/{name}/stop", R::VmStop),
    (Method::POST, "/vms/{name}/pause", R::VmPause),
    (Method::POST, "/vms/{name}/resume", R::VmResume),
    (Method::POST, "/vms/{name}/move", R::VmMove),
    (Method::GET, "/vms/{name}/console", R::VmConsole),
    (Method::GET, "/vms/{name}/disks", R::VmDisks),
    (Method::POST, "/vms/{name}/disks", R::VmDiskAttach),
    (Method::DELETE, "/vms/{name}/disks/{vdisk}", R::VmDiskDetach),
    (Method::GET, "/cluster", R::Cluster),
    (Method::GET, "/vms/{name}/console/ws", R::VmConsoleWs),
    (Method::PATCH, "/vms/{name}", R::VmUpdate),
    (Method::POST, "/cluster/tokens", R::ClusterToken),
    (Method::DELETE, "/cluster/members/{node}", R::ClusterRemove),
    (
        Method::POST,
        "/cluster/members/{node}/locate",
        R::ClusterLocate,
    ),
];

/// Routes anyone may call without logging in.
pub fn is_public(r: R) -> bool {
    matches!(r, R::Health | R::OpenApi | R::Login)
}

pub enum Found {
    Route(R, Vec<String>),
    /// The path exists but not with this method (405).
    WrongMethod(Vec<Method>),
    NotFound,
}

/// Longest accepted path segment (names are at most 64 bytes; ids shorter).
const MAX_SEGMENT: usize = 256;

/// One row of [`ROUTES`] split into segments once (routing runs on every request).
struct Pattern {
    method: &'static Method,
    segs: Vec<&'static str>,
    /// Per segment: a literal (true) or a `{x}` parameter (false).
    literal: Vec<bool>,
    r: R,
}

fn table() -> &'static [Pattern] {
    static TABLE: OnceLock<Vec<Pattern>> = OnceLock::new();
    TABLE.get_or_init(|| {
        ROUTES
            .iter()
            .map(|(m, pat, r)| {
                let segs: Vec<&'static str> = pat.split('/').collect();
                Pattern {
                    method: m,
                    literal: segs.iter().map(|s| !s.starts_with('{')).collect(),
                    segs,
                    r: *r,
                }
            })
            .collect()
    })
}

/// More segments than any route has: such a path matches nothing.
const MAX_SEGMENTS: usize = 8;

/// The route for `method` on `path`. Routing is exact: of the patterns that match the path, only
/// the most specific ones count (a literal segment beats a `{x}` at the first place they
/// differ), so `/disks/probe` is the probe endpoint and never the disk `probe`; a method the
/// path does not have is a 405 listing that path's own methods. The names the literal routes
/// take are refused when a virtual disk is created ([`is_reserved_name`]).
pub fn find(method: &Method, path: &str) -> Found {
    let mut segs = [""; MAX_SEGMENTS];
    let mut n = 0;
    for s in path.trim_end_matches('/').split('/') {
        if n == MAX_SEGMENTS {
            return Found::NotFound;
        }
        segs[n] = s;
        n += 1;
    }
    let segs = &segs[..n];
    // The most specific matching pattern's literal flags, and the rows that have them (one per
    // method: rows with equal flags that match the same path differ only in their method).
    let mut best: Option<&[bool]> = None;
    let mut rows: Vec<&Pattern> = Vec::new();
    for p in table() {
        if p.segs.len() != n {
            continue;
        }
        let ok = p
            .segs
            .iter()
            .zip(&p.literal)
            .zip(segs)
            .all(|((ps, lit), s)| {
                if *lit {
                    ps == s
                } else {
                    !s.is_empty() && s.len() <= MAX_SEGMENT
                }
            });
        if !ok {
            continue;
        }
        match best {
            Some(k) if k == p.literal.as_slice() => rows.push(p),
            Some(k) if k > p.literal.as_slice() => {}
            _ => {
                best = Some(&p.literal);
                rows.clear();
                rows.push(p);
            }
        }
    }
    let Some(literal) = best else {
        return Found::NotFound;
    };
    match rows
        .iter()
        .find(|p| p.method == method || (method == Method::HEAD && *p.method == Method::GET))
    {
        Some(p) => {
            let params = segs
                .iter()
                .zip(literal)
                .filter(|(_, lit)| !**lit)
                .map(|(s, _)| crate::http::pct_decode(s))
                .collect();
            Found::Route(p.r, params)
        }
        None => Found::WrongMethod(rows.iter().map(|p| p.method.clone()).collect()),
    }
}

/// Whether `name` is a literal route right under `collection` (`is_reserved_name("/vdisks",
/// "import")`): an object of that name could not be reached at `collection/{name}`.
pub fn is_reserved_name(collection: &str, name: &str) -> bool {
    ROUTES.iter().any(|(_, pat, _)| {
        pat.strip_prefix(collection)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.split('/').next())
            == Some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_before_pattern_and_405() {
        assert!(matches!(
            find(&Method::POST, "/disks/scrub"),
            Found::Route(R::DiskScrub, _)
        ));
        assert!(
            matches!(find(&Method::DELETE, "/disks/d1"), Found::Route(R::DiskRemove, p) if p == ["d1"])
        );
        assert!(matches!(
            find(&Method::POST, "/vdisks/import"),
            Found::Route(R::VdiskImport, _)
        ));
        assert!(
            matches!(find(&Method::GET, "/vdisks/a%20b"), Found::Route(R::VdiskGet, p) if p == ["a b"])
        );
        assert!(matches!(
            find(&Method::PUT, "/vdisks"),
            Found::WrongMethod(_)
        ));
        assert!(matches!(find(&Method::GET, "/nope"), Found::NotFound));
    }

    #[test]
    fn literal_paths_route_exactly() {
        let allow = |m: Method, p: &str| match find(&m, p) {
            Found::WrongMethod(ms) => ms,
            _ => panic!("{m} {p}: not a 405"),
        };
        // Before: DELETE /disks/probe deleted a disk "probe"; GET listed DELETE and POST.
        assert_eq!(allow(Method::DELETE, "/disks/probe"), [Method::POST]);
        assert_eq!(allow(Method::GET, "/disks/probe"), [Method::POST]);
        assert_eq!(allow(Method::GET, "/vdisks/import"), [Method::POST]);
        assert_eq!(
            allow(Method::PUT, "/vdisks/x"),
            [Method::GET, Method::PATCH, Method::DELETE]
        );
        let clone_of_import = matches!(find(&Method::POST, "/vdisks/import/clone"), Found::Route(R::VdiskClone, p) if p == ["import"]);
        assert!(clone_of_import);
        assert!(is_reserved_name("/vdisks", "import"));
        assert!(!is_reserved_name("/vdisks", "imported"));
        assert!(is_reserved_name("/disks", "probe") && is_reserved_name("/disks", "scrub"));
        assert!(!is_reserved_name("/vms", "import"));
    }

    #[test]
    fn segment_bound_exceeds_every_route_and_long_paths_miss() {
        assert!(table().iter().all(|p| p.segs.len() < MAX_SEGMENTS));
        let long = "/vms/x".repeat(MAX_SEGMENTS);
        assert!(matches!(find(&Method::GET, &long), Found::NotFound));
        // Trailing slashes are ignored as before; HEAD is answered by GET routes.
        assert!(matches!(find(&Method::HEAD, "/vms/a/"), Found::Route(R::VmGet, p) if p == ["a"]));
        assert!(matches!(
            find(&Method::GET, "/vms//start"),
            Found::NotFound | Found::WrongMethod(_)
        ));
    }
}
