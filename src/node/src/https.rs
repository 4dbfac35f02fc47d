//! Starting the HTTPS API (the `api` crate) next to the CLI socket. Owned by the api work; kept
//! in its own file so `lib.rs` only calls it. The API state (certificate, users, tokens, audit
//! log) lives in `DATA/api/`. On the very first start the `admin` account is created and its
//! one-time password printed once; later starts print nothing.

use std::sync::Arc;

use crate::{NodeConfig, NodeError, Result};

pub(crate) async fn start(
    cfg: &NodeConfig,
    controller: Arc<dyn control::Controller>,
) -> Result<Option<api::ApiHandle>> {
    let Some(listen) = cfg.api_listen else {
        return Ok(None);
    };
    let state = cfg.data_dir.join("api");
    let err = |e: api::ApiError| NodeError::Runtime(format!("HTTPS API: {e}"));
    if let Some(pw) = api::bootstrap_admin(&state).map_err(err)? {
        println!(
            "First start: web UI user '{}' with one-time password: {pw}",
            api::BOOTSTRAP_ADMIN
        );
        println!("(shown only now; change it under Users & tokens)");
    }
    let mut api_cfg = api::ApiConfig::new(listen, state);
    api_cfg.system_log = cfg.system_log.clone();
    let handle = api::serve(api_cfg, controller).await.map_err(err)?;
    println!("Web UI and API: https://{}/", handle.local_addr);
    Ok(Some(handle))
}
