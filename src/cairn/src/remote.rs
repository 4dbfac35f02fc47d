//! Where a CLI request goes: the node's unix socket (default), or a node's HTTPS API with
//! `--server URL --token TOKEN --ca-cert FILE`. Both carry the same `control::Request`, so every
//! command works the same either way. Owned by the api work.

use control::{ControlError, Reply, Request};

use crate::cli::Target;

pub fn call(target: &Target, req: &Request) -> Result<Reply, ControlError> {
    let Some(url) = &target.server else {
        return node::socket::call(&target.socket_path(), req);
    };
    let token = target.token.as_deref().ok_or_else(|| {
        ControlError::invalid(
            "--server needs --token (or CAIRN_TOKEN): create one under Users & tokens",
        )
    })?;
    let ca_path = target.ca_cert.as_ref().ok_or_else(|| {
        ControlError::invalid("--server needs --ca-cert FILE: the node's certificate (Settings in the web UI, or DATA/api/tls/cert.pem)")
    })?;
    let ca = std::fs::read(ca_path)
        .map_err(|e| ControlError::invalid(format!("--ca-cert {}: {e}", ca_path.display())))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ControlError::internal(e.to_string()))?;
    rt.block_on(api::client::call(url, token, &ca, req))
}
