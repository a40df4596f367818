//! Who is calling, and may they: bearer tokens from a file of hashed
//! tokens (reloaded on SIGHUP), client-certificate identities (mTLS), the
//! permission each RPC needs, and label scopes.
//!
//! The token file (JSON):
//!
//! ```json
//! {"tokens": [
//!   {"name": "video-ci", "sha256": "<hex SHA-256 of the token>",
//!    "permissions": ["read", "start", "control"], "scope": {"team": "video"}},
//!   {"name": "ops", "sha256": "…", "permissions": ["admin"]}
//! ]}
//! ```
//!
//! Only digests are stored; `jobvisor token new` makes a token and its
//! entry. A scoped token sees and controls only jobs carrying all its scope
//! labels, and the jobs it starts get them.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// GetJob, ListJobs, ListJobItems, WatchJob.
    Read,
    /// StartJob.
    Start,
    /// PauseJob, ResumeJob, CancelJob, DeleteJob and the other control
    /// calls.
    Control,
    /// WorkerService: take the items of jobs (within the token's scope)
    /// as a worker.
    Work,
    /// Everything.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Start => "start",
            Permission::Control => "control",
            Permission::Work => "work",
            Permission::Admin => "admin",
        }
    }

    /// The permission an RPC needs, by its path; `None` for RPCs that
    /// need none (health, reflection) or that this server does not know.
    pub fn for_method(path: &str) -> Option<Permission> {
        if path.starts_with("/jobvisor.v1.WorkerService/") {
            return Some(Permission::Work);
        }
        let method = path.strip_prefix("/jobvisor.v1.JobService/")?;
        Some(match method {
            "GetJob" | "ListJobs" | "ListJobItems" | "WatchJob" => Permission::Read,
            "StartJob" | "RunJob" | "AddItems" => Permission::Start,
            _ => Permission::Control,
        })
    }
}

/// How the caller was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Token,
    Certificate,
    /// Authentication is off: everyone may do everything.
    Nobody,
}

/// The identity attached to every request (in its extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name or the certificate's subject; empty for `Nobody`.
    pub name: String,
    pub permissions: BTreeSet<Permission>,
    /// Labels every job this caller sees must carry.
    pub scope: BTreeMap<String, String>,
    pub via: Via,
}

impl Caller {
    /// Anyone, when authentication is off.
    pub fn anyone() -> Caller {
        Caller {
            name: String::new(),
            permissions: [Permission::Admin].into(),
            scope: BTreeMap::new(),
            via: Via::Nobody,
        }
    }

    pub fn may(&self, p: Permission) -> bool {
        self.permissions.contains(&Permission::Admin) || self.permissions.contains(&p)
    }

    /// Whether a job with these labels is within the caller's scope.
    pub fn sees(&self, labels: &BTreeMap<String, String>) -> bool {
        self.scope.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// A label selector narrowed to the caller's scope: the selector with
    /// the scope's labels added, or `None` when it asks for another value
    /// of a scope label, which none of the caller's jobs carries (the
    /// scope never overrides what the caller asked for).
    pub fn narrow(&self, selector: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
        let mut narrowed = selector;
        for (key, value) in &self.scope {
            match narrowed.get(key) {
                Some(asked) if asked != value => return None,
                Some(_) => {}
                None => {
                    narrowed.insert(key.clone(), value.clone());
                }
            }
        }
        Some(narrowed)
    }

    /// The name to record with a control call, if the caller has one.
    pub fn identity(&self) -> Option<String> {
        (self.via != Via::Nobody).then(|| self.name.clone())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    sha256: String,
    permissions: Vec<Permission>,
    #[serde(default)]
    scope: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<FileEntry>,
}

/// The token table, from its file; swapped whole on reload.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    table: RwLock<Arc<HashMap<[u8; 32], Caller>>>,
}

/// The SHA-256 digest of a token, as stored in the file.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse(path: &Path) -> anyhow::Result<HashMap<[u8; 32], Caller>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
    let file: File = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))?;
    let mut table = HashMap::new();
    let mut names = BTreeSet::new();
    for (i, entry) in file.tokens.into_iter().enumerate() {
        let at = format!("token file {}, tokens[{i}]", path.display());
        if entry.name.trim().is_empty() {
            anyhow::bail!("{at}: name is required");
        }
        if !names.insert(entry.name.clone()) {
            anyhow::bail!("{at}: name {:?} appears twice", entry.name);
        }
        let bytes: Vec<u8> = (0..entry.sha256.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(entry.sha256.get(i..i + 2)?, 16).ok())
            .collect();
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            anyhow::anyhow!("{at}: sha256 must be 64 hex digits (see `jobvisor token new`)")
        })?;
        if entry.permissions.is_empty() {
            anyhow::bail!("{at}: permissions must list read, start, control or admin");
        }
        let caller = Caller {
            name: entry.name,
            permissions: entry.permissions.into_iter().collect(),
            scope: entry.scope,
            via: Via::Token,
        };
        if table.insert(key, caller).is_some() {
            anyhow::bail!("{at}: the same token appears twice");
        }
    }
    Ok(table)
}

impl Tokens {
    /// Loads the file; any problem is an error naming the file and entry.
    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        let table = parse(path)?;
        Ok(Tokens {
            path: path.to_path_buf(),
            table: RwLock::new(Arc::new(table)),
        })
    }

    /// Reads the file again; on error the old table stays in force.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let table = parse(&self.path)?;
        let n = table.len();
        *self.table.write().expect("token table lock") = Arc::new(table);
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.table.read().expect("token table lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caller a bearer token belongs to.
    pub fn lookup(&self, token: &str) -> Option<Caller> {
        let table = self.table.read().expect("token table lock").clone();
        table.get(&digest(token)).cloned()
    }
}

/// A new random token and the file entry for it.
pub fn new_token(
    name: &str,
    permissions: &[Permission],
    scope: &BTreeMap<String, String>,
) -> (String, serde_json::Value) {
    let token = format!(
        "jv_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let entry = serde_json::json!({
        "name": name,
        "sha256": hex(&digest(&token)),
        "permissions": permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "scope": scope,
    });
    (token, entry)
}

/// The subject of a DER client certificate, e.g. "CN=alice,O=video".
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn a_selector_is_narrowed_to_the_scope_and_never_overridden_by_it() {
        let video = Caller {
            scope: [("team".to_string(), "video".to_string())].into(),
            ..Caller::anyone()
        };
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            video.narrow(labels(&[("env", "prod")])),
            Some(labels(&[("env", "prod"), ("team", "video")]))
        );
        assert_eq!(
            video.narrow(labels(&[("team", "video")])),
            Some(labels(&[("team", "video")]))
        );
        assert_eq!(video.narrow(labels(&[("team", "audio")])), None);
        assert_eq!(
            Caller::anyone().narrow(labels(&[("team", "audio")])),
            Some(labels(&[("team", "audio")]))
        );
    }

    #[test]
    fn tokens_are_looked_up_by_digest_and_reloaded() {
        let (token, entry) = new_token(
            "video-ci",
            &[Permission::Read, Permission::Control],
            &[("team".to_string(), "video".to_string())].into(),
        );
        let file = write(&serde_json::json!({ "tokens": [entry] }).to_string());
        let tokens = Tokens::load(file.path()).unwrap();
        let caller = tokens.lookup(&token).unwrap();
        assert_eq!(caller.name, "video-ci");
        assert!(caller.may(Permission::Read) && !caller.may(Permission::Start));
        assert!(caller.sees(&[("team".into(), "video".into()), ("x".into(), "y".into())].into()));
        assert!(!caller.sees(&[("team".into(), "data".into())].into()));
        assert!(tokens.lookup("wrong").is_none());
        // The file never holds the token itself.
        assert!(
            !std::fs::read_to_string(file.path())
                .unwrap()
                .contains(&token)
        );

        std::fs::write(file.path(), r#"{"tokens": []}"#).unwrap();
        assert_eq!(tokens.reload().unwrap(), 0);
        assert!(tokens.lookup(&token).is_none());
        std::fs::write(file.path(), "not json").unwrap();
        assert!(tokens.reload().is_err(), "a bad file is refused");
    }

    #[test]
    fn bad_files_name_the_problem() {
        for (text, expected) in [
            (
                r#"{"tokens":[{"name":"a","sha256":"zz","permissions":["read"]}]}"#,
                "64 hex",
            ),
            (
                r#"{"tokens":[{"name":"a","sha256":"00","permissions":["fly"]}]}"#,
                "unknown variant",
            ),
            (
                r#"{"tokens":[{"name":"","sha256":"00","permissions":["read"]}]}"#,
                "name is required",
            ),
            (r#"{"tokenz":[]}"#, "unknown field"),
        ] {
            let file = write(text);
            let err = Tokens::load(file.path()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn methods_need_their_permission() {
        let p = |m: &str| Permission::for_method(&format!("/jobvisor.v1.JobService/{m}"));
        assert_eq!(p("GetJob"), Some(Permission::Read));
        assert_eq!(p("WatchJob"), Some(Permission::Read));
        assert_eq!(p("StartJob"), Some(Permission::Start));
        assert_eq!(p("AddItems"), Some(Permission::Start));
        assert_eq!(p("PauseJob"), Some(Permission::Control));
        assert_eq!(p("DeleteJob"), Some(Permission::Control));
        assert_eq!(p("CancelItems"), Some(Permission::Control));
        assert_eq!(p("SetJobRateLimit"), Some(Permission::Control));
        assert_eq!(Permission::for_method("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            Permission::for_method("/jobvisor.v1.WorkerService/Work"),
            Some(Permission::Work)
        );
        assert_eq!(
            Permission::for_method("/jobvisor.v1.WorkerService/Unknown"),
            Some(Permission::Work),
            "anything under the worker service needs the permission"
        );
    }
}
