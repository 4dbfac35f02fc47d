//! Users and API tokens, persisted in `state_dir/users.json` and `state_dir/tokens.json`.
//!
//! Passwords are stored only as argon2id hashes; tokens only as SHA-256 of their secret (a token
//! is 32 random bytes, so a fast hash is enough). A token's secret is returned once, at creation.
//! This module checks credentials and keeps the files; it never decides who may change what —
//! that is `admin::apply`.

use crate::error::{ApiError, Result};
use crate::files::{ct_eq, now_unix, random_hex, read_optional, sha256_hex, write_atomic};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use control::Role;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bounds: a node has few administrators; these keep the files small and lookups cheap.
pub const MAX_USERS: usize = 256;
pub const MAX_TOKENS: usize = 1024;
pub const MIN_PASSWORD_LEN: usize = 12;
pub const MAX_PASSWORD_LEN: usize = 256;
/// The longest a token may live (one year).
pub const MAX_TOKEN_TTL_SECS: u64 = 366 * 86_400;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRec {
    name: String,
    role: Role,
    password_hash: String,
    created_unix: u64,
}

/// What the API shows about a user.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserView {
    pub name: String,
    pub role: Role,
    pub created_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRec {
    id: String,
    name: String,
    owner: String,
    role: Role,
    secret_sha256: String,
    created_unix: u64,
    expires_unix: u64,
    revoked: bool,
}

/// What the API shows about a token (never its secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub role: Role,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub revoked: bool,
}

impl From<&TokenRec> for TokenView {
    fn from(t: &TokenRec) -> Self {
        TokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            owner: t.owner.clone(),
            role: t.role,
            created_unix: t.created_unix,
            expires_unix: t.expires_unix,
            revoked: t.revoked,
        }
    }
}

/// Rank of a role, for "a token may not have more power than its creator".
pub fn rank(r: Role) -> u8 {
    match r {
        Role::ReadOnly => 0,
        Role::Operator => 1,
        Role::Admin => 2,
    }
}

struct Inner {
    users: Vec<UserRec>,
    tokens: Vec<TokenRec>,
}

pub struct Directory {
    users_path: PathBuf,
    tokens_path: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("users", &self.users_path)
            .finish()
    }
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    match read_optional(path)? {
        None => Ok(Vec::new()),
        Some(b) => serde_json::from_slice(&b).map_err(|e| ApiError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

pub fn validate_user_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?} must be 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit"
        ))
    }
}

pub fn validate_password(pw: &str) -> std::result::Result<(), String> {
    let n = pw.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(format!(
            "the password is too short: use at least {MIN_PASSWORD_LEN} characters"
        ));
    }
    // Characters, as the document's maxLength counts them (at most 1 KiB of UTF-8).
    if n > MAX_PASSWORD_LEN {
        return Err(format!(
            "the password is longer than {MAX_PASSWORD_LEN} characters"
        ));
    }
    Ok(())
}

fn hash_password(pw: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        // Hashing with a fresh valid salt and default parameters cannot fail; if it ever did,
        // store an unusable hash rather than a usable wrong one.
        .unwrap_or_else(|_| "!".into())
}

fn verify_password(pw: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash for a user that does not exist, so a failed login costs the same either way.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("not-a-real-password-for-timing"))
}

impl Directory {
    pub fn open(state_dir: &Path) -> Result<Directory> {
        let users_path = state_dir.join("users.json");
        let tokens_path = state_dir.join("tokens.json");
        let users = load(&users_path)?;
        let tokens = load(&tokens_path)?;
        Ok(Directory {
            users_path,
            tokens_path,
            inner: Mutex::new(Inner { users, tokens }),
        })
    }

    fn save_users(&self, inner: &Inner) -> Result<()> {
        let b = serde_json::to_vec_pretty(&inner.users).unwrap_or_default();
        write_atomic(&self.users_path, &b)
    }

    fn save_tokens(&self, inner: &Inner) -> Result<()> {
        let b = serde_json::to_vec_pretty(&inner.tokens).unwrap_or_default();
        write_atomic(&self.tokens_path, &b)
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().users.is_empty()
    }

    /// Check a name and password; returns the user's role. Slow by design (argon2id).
    pub fn login(&self, name: &str, password: &str) -> Option<Role> {
        let rec = self
            .inner
            .lock()
            .users
            .iter()
            .find(|u| u.name == name)
            .map(|u| (u.role, u.password_hash.clone()));
        match rec {
            Some((role, hash)) => verify_password(password, &hash).then_some(role),
            None => {
                let _ = verify_password(password, dummy_hash());
                None
            }
        }
    }

    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.inner
            .lock()
            .users
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.role)
    }

    pub fn users(&self) -> Vec<UserView> {
        self.inner
            .lock()
            .users
            .iter()
            .map(|u| UserView {
                name: u.name.clone(),
                role: u.role,
                created_unix: u.created_unix,
            })
            .collect()
    }

    pub fn user(&self, name: &str) -> Option<UserView> {
        self.users().into_iter().find(|u| u.name == name)
    }

    /// Add a user. Errors are (code, message) for the caller to wrap.
    pub fn add_user(
        &self,
        name: &str,
        role: Role,
        password: &str,
    ) -> std::result::Result<UserView, (control::ErrorCode, String)> {
        use control::ErrorCode as C;
        validate_user_name(name).map_err(|m| (C::InvalidArgument, m))?;
        validate_password(password).map_err(|m| (C::InvalidArgument, m))?;
        let hash = hash_password(password);
        let mut inner = self.inner.lock();
        if inner.users.iter().any(|u| u.name == name) {
            return Err((C::AlreadyExists, format!("user {name:?} already exists")));
        }
        if inner.users.len() >= MAX_USERS {
            return Err((
                C::Conflict,
                format!("at most {MAX_USERS} users are allowed"),
            ));
        }
        let rec = UserRec {
            name: name.into(),
            role,
            password_hash: hash,
            created_unix: now_unix(),
        };
        inner.users.push(rec);
        if let Err(e) = self.save_users(&inner) {
            inner.users.pop();
            return Err((C::Internal, e.to_string()));
        }
        Ok(UserView {
            name: name.into(),
            role,
            created_unix: now_unix(),
        })
    }

    /// Change a user's role and/or password. Refuses to remove the last admin.
    pub fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        password: Option<&str>,
    ) -> std::result::Result<UserView, (control::ErrorCode, String)> {
        use control::ErrorCode as C;
        if let Some(p) = password {
            validate_password(p).map_err(|m| (C::InvalidArgument, m))?;
        }
        let hash = password.map(hash_password);
        let mut inner = self.inner.lock();
        let admins = inner.users.iter().filter(|u| u.role == Role::Admin).count();
        let Some(i) = inner.users.iter().position(|u| u.name == name) else {
            return Err((C::NotFound, format!("no user named {name:?}")));
        };
        let old = inner.users[i].clone();
        if let Some(r) = role {
            if old.role == Role::Admin && r != Role::Admin && admins == 1 {
                return Err((
                    C::Conflict,
                    "this is the last admin; make another admin first".into(),
                ));
            }
            inner.users[i].role = r;
        }
        if let Some(h) = hash {
            inner.users[i].password_hash = h;
        }
        if let Err(e) = self.save_users(&inner) {
            inner.users[i] = old;
            return Err((C::Internal, e.to_string()));
        }
        let u = &inner.users[i];
        let view = UserView {
            name: u.name.clone(),
            role: u.role,
            created_unix: u.created_unix,
        };
        // A lowered role also lowers the user's tokens, so no token outranks its owner.
        let new_rank = rank(view.role);
        let mut changed = false;
        for t in inner.tokens.iter_mut().filter(|t| t.owner == name) {
            if rank(t.role) > new_rank {
                t.role = view.role;
                changed = true;
            }
        }
        if changed {
            let _ = self.save_tokens(&inner);
        }
        Ok(view)
    }

    /// Delete a user and revoke their tokens. Refuses to delete the last admin.
    pub fn delete_user(&self, name: &str) -> std::result::Result<(), (control::ErrorCode, String)> {
        use control::ErrorCode as C;
        let mut inner = self.inner.lock();
        let Some(i) = inner.users.iter().position(|u| u.name == name) else {
            return Err((C::NotFound, format!("no user named {name:?}")));
        };
        let admins = inner.users.iter().filter(|u| u.role == Role::Admin).count();
        if inner.users[i].role == Role::Admin && admins == 1 {
            return Err((
                C::Conflict,
                "this is the last admin and cannot be deleted".into(),
            ));
        }
        let removed = inner.users.remove(i);
        if let Err(e) = self.save_users(&inner) {
            inner.users.insert(i, removed);
            return Err((C::Internal, e.to_string()));
        }
        for t in inner.tokens.iter_mut().filter(|t| t.owner == name) {
            t.revoked = true;
        }
        let _ = self.save_tokens(&inner);
        Ok(())
    }

    /// Create a token; returns its view and the full secret (shown once).
    pub fn create_token(
        &self,
        owner: &str,
        name: &str,
        role: Role,
        ttl_secs: u64,
    ) -> std::result::Result<(TokenView, String), (control::ErrorCode, String)> {
        use control::ErrorCode as C;
        // Characters, not bytes, as the document's maxLength counts them.
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(|c| c.is_control()) {
            return Err((
                C::InvalidArgument,
                "token name must be 1-64 printable characters".into(),
            ));
        }
        if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL_SECS {
            return Err((
                C::InvalidArgument,
                format!("expires_in_secs must be between 1 and {MAX_TOKEN_TTL_SECS}"),
            ));
        }
        let mut inner = self.inner.lock();
        let now = now_unix();
        // Expired and revoked tokens older than a day are forgotten to keep the bound meaningful.
        inner
            .tokens
            .retain(|t| !((t.revoked || t.expires_unix <= now) && t.expires_unix + 86_400 < now));
        if inner.tokens.len() >= MAX_TOKENS {
            return Err((
                C::Conflict,
                format!("at most {MAX_TOKENS} tokens are allowed; revoke some first"),
            ));
        }
        let id = random_hex(8);
        let secret = random_hex(32);
        let rec = TokenRec {
            id: id.clone(),
            name: name.into(),
            owner: owner.into(),
            role,
            secret_sha256: sha256_hex(secret.as_bytes()),
            created_unix: now,
            expires_unix: now.saturating_add(ttl_secs),
            revoked: false,
        };
        let view = TokenView::from(&rec);
        inner.tokens.push(rec);
        if let Err(e) = self.save_tokens(&inner) {
            inner.tokens.pop();
            return Err((C::Internal, e.to_string()));
        }
        Ok((view, format!("cairn_{id}_{secret}")))
    }

    pub fn tokens(&self) -> Vec<TokenView> {
        self.inner
            .lock()
            .tokens
            .iter()
            .map(TokenView::from)
            .collect()
    }

    pub fn token(&self, id: &str) -> Option<TokenView> {
        self.inner
            .lock()
            .tokens
            .iter()
            .find(|t| t.id == id)
            .map(TokenView::from)
    }

    pub fn revoke_token(
        &self,
        id: &str,
    ) -> std::result::Result<TokenView, (control::ErrorCode, String)> {
        use control::ErrorCode as C;
        let mut inner = self.inner.lock();
        let Some(t) = inner.tokens.iter_mut().find(|t| t.id == id) else {
            return Err((C::NotFound, format!("no token with id {id:?}")));
        };
        t.revoked = true;
        let view = TokenView::from(&*t);
        self.save_tokens(&inner)
            .map_err(|e| (C::Internal, e.to_string()))?;
        Ok(view)
    }

    /// Check a bearer token; returns (owner, role, token id) if it is valid now.
    pub fn check_token(&self, bearer: &str) -> Option<(String, Role, String)> {
        let rest = bearer.strip_prefix("cairn_")?;
        let (id, secret) = rest.split_once('_')?;
        if id.len() != 16 || secret.len() != 64 {
            return None;
        }
        let inner = self.inner.lock();
        let t = inner.tokens.iter().find(|t| t.id == id)?;
        let good = ct_eq(
            sha256_hex(secret.as_bytes()).as_bytes(),
            t.secret_sha256.as_bytes(),
        );
        if !good || t.revoked || t.expires_unix <= now_unix() {
            return None;
        }
        // The owner must still exist; their current role caps the token's.
        let owner_role = inner.users.iter().find(|u| u.name == t.owner)?.role;
        let role = if rank(t.role) <= rank(owner_role) {
            t.role
        } else {
            owner_role
        };
        Some((t.owner.clone(), role, t.id.clone()))
    }
}
