//! `/api/v1/vms` (define, edit, list, power, console tail, disks) and `/api/v1/cluster` (status,
//! join tokens, member removal): each route
//! parses its input into a `control::Request` and forwards it like every other route (policy,
//! validation and audit in `State::control`). A graceful stop runs as a task, since it waits for
//! the guest. Never touches a VM or the VMM directly.

use crate::bodies::{
    ClusterLocateBody, ClusterTokenBody, VmCreateBody, VmDiskAttachBody, VmStopBody, VmUpdateBody,
};
use crate::http as h;
use crate::render::reply_value;
use crate::routes::R;
use crate::state::{Caller, State};
use crate::v1::{recorded, simple, task, Out};
use control::{ControlError, Reply, Request};
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) async fn dispatch(
    st: &Arc<State>,
    r: R,
    p: &[String],
    q: &[(String, String)],
    body: &[u8],
    c: &Caller,
) -> Out {
    let name = p.first().cloned().unwrap_or_default();
    match r {
        R::Vms => Err(ControlError::internal("handled before dispatch")),
        R::VmCreate => {
            let b: VmCreateBody = h::parse_json(body)?;
            let req = Request::VmCreate {
                name: b.name,
                vcpus: b.vcpus,
                memory_mib: b.memory_mib,
                disks: b.disks,
                kernel: b.kernel,
                cmdline: b.cmdline,
                nics: b.nics,
            };
            simple(st, c, req, 201).await
        }
        R::VmGet => simple(st, c, Request::VmGet { name }, 200).await,
        R::VmDelete => simple(st, c, Request::VmDelete { name }, 204).await,
        R::VmStart => simple(st, c, Request::VmStart { name }, 200).await,
        R::VmPause => simple(st, c, Request::VmPause { name }, 200).await,
        R::VmResume => simple(st, c, Request::VmResume { name }, 200).await,
        R::VmStop => {
            let b: VmStopBody = if body.iter().all(u8::is_ascii_whitespace) {
                VmStopBody::default()
            } else {
                h::parse_json(body)?
            };
            let req = Request::VmStop {
                name,
                force: b.force,
                timeout_ms: b.timeout_ms,
            };
            if b.force {
                simple(st, c, req, 200).await
            } else {
                task(st, c, req).await
            }
        }
        R::VmConsole => {
            let max_bytes =
                match q.iter().find(|(k, _)| k == "max_bytes") {
                    Some((_, v)) => Some(v.parse::<u64>().map_err(|_| {
                        ControlError::invalid("max_bytes must be a number of bytes")
                    })?),
                    None => None,
                };
            simple(st, c, Request::VmConsole { name, max_bytes }, 200).await
        }
        R::VmDisks => vm_disks(st, c, name).await,
        R::VmDiskAttach => {
            let b: VmDiskAttachBody = h::parse_json(body)?;
            let req = Request::VmDiskAttach {
                name,
                vdisk: b.vdisk,
            };
            simple(st, c, req, 200).await
        }
        R::VmDiskDetach => {
            let force = match q.iter().find(|(k, _)| k == "force") {
                Some((_, v)) => v
                    .parse::<bool>()
                    .map_err(|_| ControlError::invalid("force must be true or false"))?,
                None => false,
            };
            let timeout_ms = match q.iter().find(|(k, _)| k == "timeout_ms") {
                Some((_, v)) => Some(v.parse::<u64>().map_err(|_| {
                    ControlError::invalid("timeout_ms must be a number of milliseconds")
                })?),
                None => None,
            };
            let req = Request::VmDiskDetach {
                name,
                vdisk: p.get(1).cloned().unwrap_or_default(),
                force,
                timeout_ms,
            };
            simple(st, c, req, 200).await
        }
        R::VmUpdate => {
            let b: VmUpdateBody = h::parse_json(body)?;
            let req = Request::VmUpdate {
                name,
                new_name: b.name,
                description: b.description,
                vcpus: b.vcpus,
                memory_mib: b.memory_mib,
                cmdline: b.cmdline,
                disks: b.disks,
                nics: b.nics,
            };
            recorded(st, c, req, 200).await
        }
        R::Cluster => simple(st, c, Request::ClusterStatus, 200).await,
        R::ClusterToken => {
            let b: ClusterTokenBody = if body.iter().all(u8::is_ascii_whitespace) {
                ClusterTokenBody::default()
            } else {
                h::parse_json(body)?
            };
            let req = Request::ClusterToken {
                witness: b.witness,
                ttl_secs: b.ttl_secs,
            };
            simple(st, c, req, 201).await
        }
        R::ClusterLocate => {
            let b: ClusterLocateBody = h::parse_json(body)?;
            let req = Request::ClusterLocate {
                node: name,
                address: b.address,
            };
            recorded(st, c, req, 200).await
        }
        R::ClusterRemove => {
            let force = match q.iter().find(|(k, _)| k == "force") {
                Some((_, v)) => v
                    .parse::<bool>()
                    .map_err(|_| ControlError::invalid("force must be true or false"))?,
                None => false,
            };
            let req = Request::ClusterRemove { node: name, force };
            // A data member is drained before it leaves: until then the node answers with the
            // cluster view (the member draining, what is left), and the caller asks again.
            let (_, v) = recorded(st, c, req, 200).await?;
            let draining = v.get("data").and_then(|d| d.get("draining")).is_some();
            Ok((if draining { 202 } else { 200 }, v))
        }
        _ => Err(ControlError::internal("not a VM route")),
    }
}

/// The VM's disks in attach order, each with its virtual disk (null if it was deleted since)
/// and the VM's I/O counters for it (null until the VM has run).
async fn vm_disks(st: &State, c: &Caller, name: String) -> Out {
    let Reply::Vm(vm) = st.control(c, Request::VmGet { name }).await? else {
        return Err(ControlError::internal(
            "the node answered vm_get with something else",
        ));
    };
    let mut items = Vec::with_capacity(vm.disks.len());
    for d in &vm.disks {
        let vdisk = match st.control(c, Request::VdiskGet { name: d.clone() }).await {
            Ok(r) => reply_value(&r)?,
            Err(e) if e.code == control::ErrorCode::NotFound => Value::Null,
            Err(e) => return Err(e),
        };
        let stats = vm
            .stats
            .as_ref()
            .and_then(|s| s.disks.iter().find(|x| &x.id == d))
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or(Value::Null);
        items.push(json!({"name": d, "vdisk": vdisk, "stats": stats}));
    }
    Ok((200, json!({"items": items})))
}
