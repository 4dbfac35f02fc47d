//! Application calls between members: an opaque request (bytes) that the receiving member
//! hands to the handler its application registered (`ClusterNode::set_app_handler`), over the
//! same mutual-TLS member transport as raft. The cluster crate never looks inside; the node
//! layer defines the messages (lease state, planned virtual disk moves).
//!
//! Must never: accept a call from a caller without a member certificate, or a request or reply
//! over [`MAX_APP_BYTES`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::network::{PeerRequest, PeerResponse};
use crate::node::ClusterNode;
use crate::types::NodeId;
use crate::Error;

/// Bound on an application request or reply.
pub const MAX_APP_BYTES: usize = 256 * 1024;

/// What a member does with application calls from other members.
pub trait AppHandler: Send + Sync {
    /// Answer `req` from member `from` (Err: a message for the caller).
    fn handle(&self, from: NodeId, req: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

impl ClusterNode {
    /// Register the handler for application calls (replaces any earlier one).
    pub fn set_app_handler(&self, h: Arc<dyn AppHandler>) {
        *self.app.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }

    pub(crate) async fn handle_app(&self, from: NodeId, req: Vec<u8>) -> Result<Vec<u8>, String> {
        if req.len() > MAX_APP_BYTES {
            return Err(format!("request over {MAX_APP_BYTES} bytes"));
        }
        let h = self.app.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(h) = h else {
            return Err("this member takes no application calls yet".into());
        };
        let out = h.handle(from, req).await?;
        if out.len() > MAX_APP_BYTES {
            return Err(format!("reply over {MAX_APP_BYTES} bytes"));
        }
        Ok(out)
    }

    /// Send application request `req` to member `id` and wait at most `timeout` for the
    /// answer. Err(Error::Rejected) carries the other member's refusal; any other error means
    /// no answer (unreachable, timed out, not a member).
    pub async fn call_app(
        &self,
        id: NodeId,
        req: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        if req.len() > MAX_APP_BYTES {
            return Err(Error::Config(format!(
                "application request over {MAX_APP_BYTES} bytes"
            )));
        }
        if self.is_isolated() {
            return Err(Error::Config("isolated (fault injection)".into()));
        }
        let addr = self
            .read(|s| s.members.get(&id).map(|m| m.addr.clone()))
            .ok_or_else(|| Error::Config(format!("no member {id}")))?;
        let c = self.clients.get(id, &addr)?;
        match c.call_timeout(&PeerRequest::App(req), timeout).await? {
            PeerResponse::App(Ok(out)) if out.len() <= MAX_APP_BYTES => Ok(out),
            PeerResponse::App(Ok(_)) => Err(Error::Config(format!(
                "member {id} answered with over {MAX_APP_BYTES} bytes"
            ))),
            PeerResponse::App(Err(e)) => Err(Error::Rejected(e)),
            _ => Err(Error::Config(format!(
                "member {id} answered an application call with another kind of reply"
            ))),
        }
    }
}
