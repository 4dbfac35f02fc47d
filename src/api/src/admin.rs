//! Mutations that belong to the API itself — users, tokens, the certificate — as one
//! `AdminAction` type applied in one function, [`apply`], which checks the policy, acts and
//! audits. Storage mutations go to the node's `Controller` instead.
//!
//! Why an api-local type and not more `control::Request` variants: users, tokens and the TLS
//! certificate are state of the HTTPS front end (its state dir), not of the node's engine; the
//! controller could not execute them, and the CLI's unix socket has no users. When the cluster
//! crate replicates users, these variants move into the cluster's action type unchanged.
//!
//! Policy (the api-local counterpart of `control::allowed`):
//! - users: admin only, except that anyone may change their own password;
//! - tokens: anyone may create tokens for themselves with a role no higher than their own, and
//!   list or revoke their own; admin may list and revoke everyone's. Someone else's token id
//!   is "not found" to a non-admin, so ids cannot be probed;
//! - certificate: anyone logged in may read it; only admin may replace it.

use crate::state::{role_name, Caller, State};
use crate::users::rank;
use control::{ControlError, ErrorCode, Role};
use serde::Deserialize;

/// Default token lifetime: 90 days.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 90 * 86_400;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminAction {
    UserCreate {
        name: String,
        role: Role,
        password: String,
    },
    UserUpdate {
        name: String,
        role: Option<Role>,
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    TokenCreate {
        name: String,
        role: Option<Role>,
        expires_in_secs: Option<u64>,
    },
    TokenRevoke {
        id: String,
    },
    CertificateReplace {
        cert_pem: String,
        key_pem: String,
    },
}

impl AdminAction {
    pub fn action(&self) -> &'static str {
        match self {
            AdminAction::UserCreate { .. } => "user_create",
            AdminAction::UserUpdate { .. } => "user_update",
            AdminAction::UserDelete { .. } => "user_delete",
            AdminAction::TokenCreate { .. } => "token_create",
            AdminAction::TokenRevoke { .. } => "token_revoke",
            AdminAction::CertificateReplace { .. } => "certificate_replace",
        }
    }

    /// What the audit log names (never a password, secret or key).
    pub fn target(&self) -> String {
        match self {
            AdminAction::UserCreate { name, role, .. } => format!("{name} ({})", role_name(*role)),
            AdminAction::UserUpdate {
                name,
                role,
                password,
            } => {
                let mut s = name.clone();
                if let Some(r) = role {
                    s.push_str(&format!(" role={}", role_name(*r)));
                }
                if password.is_some() {
                    s.push_str(" password");
                }
                s
            }
            AdminAction::UserDelete { name } => name.clone(),
            AdminAction::TokenCreate { name, .. } => name.clone(),
            AdminAction::TokenRevoke { id } => id.clone(),
            AdminAction::CertificateReplace { .. } => "tls".into(),
        }
    }
}

fn forbidden(c: &Caller, what: &str) -> ControlError {
    ControlError::new(
        ErrorCode::Forbidden,
        format!("the {} role may not {what}", role_name(c.role)),
    )
}

fn wrap((code, msg): (ErrorCode, String)) -> ControlError {
    ControlError::new(code, msg)
}

/// Check, apply and audit one admin action. Blocking (argon2id hashing): call it from
/// `spawn_blocking`.
pub fn apply(
    st: &State,
    c: &Caller,
    a: AdminAction,
) -> Result<(u16, serde_json::Value), ControlError> {
    let (action, target) = (a.action(), a.target());
    let res = apply_inner(st, c, a);
    st.audit_result(c, action, &target, res.as_ref().map(|_| ()));
    res
}

fn apply_inner(
    st: &State,
    c: &Caller,
    a: AdminAction,
) -> Result<(u16, serde_json::Value), ControlError> {
    let admin = c.role == Role::Admin;
    match a {
        AdminAction::UserCreate {
            name,
            role,
            password,
        } => {
            if !admin {
                return Err(forbidden(c, "manage users"));
            }
            let u = st
                .directory
                .add_user(&name, role, &password)
                .map_err(wrap)?;
            Ok((201, serde_json::to_value(u).unwrap_or_default()))
        }
        AdminAction::UserUpdate {
            name,
            role,
            password,
        } => {
            let own_password_only = name == c.user && role.is_none();
            if !admin && !own_password_only {
                return Err(forbidden(c, "manage other users or roles"));
            }
            if role.is_none() && password.is_none() {
                return Err(ControlError::invalid(
                    "nothing to change: give role and/or password",
                ));
            }
            let u = st
                .directory
                .update_user(&name, role, password.as_deref())
                .map_err(wrap)?;
            // Role or password changed: existing browser sessions of that user end.
            st.sessions.remove_user(&name);
            Ok((200, serde_json::to_value(u).unwrap_or_default()))
        }
        AdminAction::UserDelete { name } => {
            if !admin {
                return Err(forbidden(c, "manage users"));
            }
            if name == c.user {
                return Err(ControlError::conflict("you cannot delete your own account"));
            }
            st.directory.delete_user(&name).map_err(wrap)?;
            st.sessions.remove_user(&name);
            Ok((204, serde_json::Value::Null))
        }
        AdminAction::TokenCreate {
            name,
            role,
            expires_in_secs,
        } => {
            let role = role.unwrap_or(c.role);
            if rank(role) > rank(c.role) {
                return Err(forbidden(
                    c,
                    &format!("create a token with the {} role", role_name(role)),
                ));
            }
            let ttl = expires_in_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
            let (view, secret) = st
                .directory
                .create_token(&c.user, &name, role, ttl)
                .map_err(wrap)?;
            let mut v = serde_json::to_value(view).unwrap_or_default();
            v["token"] = serde_json::Value::String(secret);
            Ok((201, v))
        }
        AdminAction::TokenRevoke { id } => {
            let t = st.directory.token(&id);
            match t {
                Some(t) if admin || t.owner == c.user => {}
                _ => return Err(ControlError::not_found(format!("no token with id {id:?}"))),
            }
            let v = st.directory.revoke_token(&id).map_err(wrap)?;
            Ok((200, serde_json::to_value(v).unwrap_or_default()))
        }
        AdminAction::CertificateReplace { cert_pem, key_pem } => {
            if !admin {
                return Err(forbidden(c, "replace the certificate"));
            }
            let info = st
                .certs
                .replace(cert_pem.as_bytes(), key_pem.as_bytes())
                .map_err(ControlError::invalid)?;
            st.event(
                "info",
                "certificate",
                format!("certificate replaced by {}", c.user),
            );
            Ok((200, serde_json::to_value(info).unwrap_or_default()))
        }
    }
}
