//! API keys for the read APIs that are not public (`/v1/analytics/*`, `/v1/top`).
//!
//! A key is `tally_<id>_<secret>`; only the SHA-256 of the secret is stored, in
//! `<data dir>/keys.json`, written by `tally keys` (create, list, revoke) and read by
//! the merger, which picks changes up within a second without a restart. A key is scoped
//! to the whole platform or to one channel, and has its own rate limit (requests per
//! minute). Clients send it as `Authorization: Bearer <key>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Requests a minute a key may make unless created with another limit.
pub const DEFAULT_PER_MIN: u32 = 600;

/// What a key may read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every channel, and what is platform-wide (bot traffic).
    Platform,
    /// One channel's videos.
    Channel(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Platform => f.write_str("platform"),
            Scope::Channel(c) => write!(f, "channel:{c}"),
        }
    }
}

/// A scope that is neither `platform` nor `channel:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: a scope is `platform` or `channel:<channel id>`")]
pub struct ScopeError(String);

impl std::str::FromStr for Scope {
    type Err = ScopeError;

    /// `platform` or `channel:<id>`.
    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        match s.split_once(':') {
            None if s == "platform" => Ok(Scope::Platform),
            Some(("channel", c)) if !c.is_empty() => Ok(Scope::Channel(c.to_owned())),
            _ => Err(ScopeError(s.to_owned())),
        }
    }
}

/// One key as stored (no secret: its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id, part of the key.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may read.
    pub scope: Scope,
    /// Requests per minute.
    pub per_min: u32,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Revoked at, ms since the Unix epoch.
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}

#[derive(Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<KeyRecord>,
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Reading or writing failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file is not a key file.
    #[error("{0} is not a key file: {1}")]
    Format(PathBuf, String),
    /// No key has this id.
    #[error("no key with id {0:?}")]
    NoSuchKey(String),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
}

/// The key file of a data dir.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("keys.json")
}

fn read(path: &Path) -> Result<KeyFile, KeysError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| KeysError::Format(path.to_owned(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
        Err(e) => Err(KeysError::Io(path.to_owned(), e)),
    }
}

fn write(path: &Path, file: &KeyFile) -> Result<(), KeysError> {
    let io = |e| KeysError::Io(path.to_owned(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    let json = serde_json::to_vec_pretty(file).map_err(|e| KeysError::Format(path.to_owned(), e.to_string()))?;
    f.write_all(&json).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

use tally_delta::now_ms;

fn random(n: usize) -> Result<Vec<u8>, KeysError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| KeysError::Invalid(format!("no randomness for a key: {e}")))?;
    Ok(b)
}

fn digest_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a key in `path`; returns its record and the key, which is shown only now.
pub fn create(path: &Path, name: &str, scope: Scope, per_min: u32) -> Result<(KeyRecord, String), KeysError> {
    if per_min == 0 {
        return Err(KeysError::Invalid("--per-min must be at least 1".into()));
    }
    let mut file = read(path)?;
    let id: String = random(6)?.iter().map(|b| format!("{b:02x}")).collect();
    let secret = B64.encode(random(32)?);
    let rec = KeyRecord {
        id: id.clone(),
        name: name.to_owned(),
        scope,
        per_min,
        hash: digest_hex(&secret),
        created_ms: now_ms(),
        revoked_ms: None,
    };
    file.keys.push(rec.clone());
    write(path, &file)?;
    Ok((rec, format!("tally_{id}_{secret}")))
}

/// Every key in `path`, revoked ones included.
pub fn list(path: &Path) -> Result<Vec<KeyRecord>, KeysError> {
    Ok(read(path)?.keys)
}

/// Revokes the key `id`; it stops working within a second.
pub fn revoke(path: &Path, id: &str) -> Result<KeyRecord, KeysError> {
    let mut file = read(path)?;
    let rec = file
        .keys
        .iter_mut()
        .find(|k| k.id == id)
        .ok_or_else(|| KeysError::NoSuchKey(id.to_owned()))?;
    rec.revoked_ms.get_or_insert_with(now_ms);
    let rec = rec.clone();
    write(path, &file)?;
    Ok(rec)
}

/// Why a request was not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No key, or not a valid one (unknown, wrong secret, revoked): one answer for all.
    Unauthenticated,
    /// Over the key's rate limit.
    RateLimited {
        /// The key's limit.
        per_min: u32,
    },
}

/// A key that authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Its id.
    pub id: String,
    /// What it may read.
    pub scope: Scope,
}

struct Loaded {
    checked: Instant,
    modified: Option<SystemTime>,
    keys: HashMap<String, KeyRecord>,
}

/// The merger's view of the key file, re-read when it changes (checked at most once a
/// second, and whenever an unknown key id is presented), with a rate limiter per key.
pub struct KeyStore {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    limiters: Mutex<HashMap<String, (u32, DefaultDirectRateLimiter)>>,
}

impl KeyStore {
    /// The keys of `path` (the file may not exist yet).
    pub fn open(path: PathBuf) -> KeyStore {
        let store = KeyStore {
            path,
            loaded: Mutex::new(Loaded {
                checked: Instant::now() - Duration::from_secs(60),
                modified: None,
                keys: HashMap::new(),
            }),
            limiters: Mutex::new(HashMap::new()),
        };
        store.refresh(true);
        store
    }

    /// Re-reads the file if it changed; checks at most once a second unless `now`.
    fn refresh(&self, now: bool) {
        let mut l = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if !now && l.checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        l.checked = Instant::now();
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if modified == l.modified {
            return;
        }
        match read(&self.path) {
            Ok(f) => {
                l.keys = f.keys.into_iter().map(|k| (k.id.clone(), k)).collect();
                l.modified = modified;
            }
            // keep the keys we have; a half-written file is never seen (rename)
            Err(e) => tracing::error!(error = %e, "API key file unreadable; keeping the keys loaded before"),
        }
    }

    /// Checks a bearer key and takes one request from its allowance.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Grant, Denied> {
        self.refresh(false);
        let (id, secret) = bearer
            .and_then(|b| b.strip_prefix("tally_"))
            .and_then(|b| b.split_once('_'))
            .ok_or(Denied::Unauthenticated)?;
        let known = |store: &KeyStore| {
            let l = store.loaded.lock().unwrap_or_else(|p| p.into_inner());
            l.keys.get(id).cloned()
        };
        // a key created a moment ago works at once (an unknown id costs one `stat`)
        let rec = known(self).or_else(|| {
            self.refresh(true);
            known(self)
        });
        // compare digests in constant time, against a dummy when the id is unknown
        let given = Sha256::digest(secret.as_bytes());
        let want = rec.as_ref().map_or_else(|| digest_hex("no such key"), |r| r.hash.clone());
        let given_hex: String = given.iter().map(|b| format!("{b:02x}")).collect();
        let differ = given_hex
            .bytes()
            .zip(want.bytes())
            .fold(u8::from(given_hex.len() != want.len()), |acc, (a, b)| acc | (a ^ b));
        let rec = match rec {
            Some(r) if differ == 0 && r.revoked_ms.is_none() => r,
            _ => return Err(Denied::Unauthenticated),
        };
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let per_min = NonZeroU32::new(rec.per_min).unwrap_or(NonZeroU32::MIN);
        let entry = limiters
            .entry(rec.id.clone())
            .or_insert_with(|| (rec.per_min, RateLimiter::direct(Quota::per_minute(per_min))));
        if entry.0 != rec.per_min {
            *entry = (rec.per_min, RateLimiter::direct(Quota::per_minute(per_min)));
        }
        entry.1.check().map_err(|_| Denied::RateLimited { per_min: rec.per_min })?;
        Ok(Grant {
            id: rec.id,
            scope: rec.scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_keys_authenticate_until_revoked_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let (rec, key) = create(&path, "dashboard", Scope::Channel("c1".into()), 3).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains(key.splitn(3, '_').nth(2).unwrap()));
        let store = KeyStore::open(path.clone());
        let g = store.authenticate(Some(&key)).unwrap();
        assert_eq!(g.scope, Scope::Channel("c1".into()));
        for bad in [
            None,
            Some("tally_nope_nope"),
            Some(&*format!("tally_{}_wrong", rec.id)),
            Some("garbage"),
        ] {
            assert_eq!(store.authenticate(bad), Err(Denied::Unauthenticated), "{bad:?}");
        }
        assert!(store.authenticate(Some(&key)).is_ok());
        assert!(store.authenticate(Some(&key)).is_ok());
        assert_eq!(store.authenticate(Some(&key)), Err(Denied::RateLimited { per_min: 3 }));
        revoke(&path, &rec.id).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(store.authenticate(Some(&key)), Err(Denied::Unauthenticated));
        assert!(list(&path).unwrap()[0].revoked_ms.is_some());
        assert!(matches!(revoke(&path, "zzz"), Err(KeysError::NoSuchKey(_))));
    }

    #[test]
    fn scopes_parse_and_print() {
        assert_eq!("platform".parse::<Scope>(), Ok(Scope::Platform));
        assert_eq!("channel:c9".parse::<Scope>(), Ok(Scope::Channel("c9".into())));
        assert!("channel:".parse::<Scope>().is_err());
        assert!("everything".parse::<Scope>().is_err());
        assert_eq!(Scope::Channel("c9".into()).to_string(), "channel:c9");
    }
}
