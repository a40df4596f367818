//! What a server lets `exec` jobs do, decided once at start-up from the
//! operator's settings: which programs run (each allowed command resolved
//! to an absolute path on the server's own `PATH`, never looked up again
//! on a job's), which environment a program starts from (not the
//! server's: only the variables the operator passes), which variables a
//! job may not set, and where a program may run.

use crate::domain::FieldViolation;
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{OsStr, OsString},
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

/// Which programs a server lets `exec` run.
#[derive(Debug, Clone, Default)]
pub enum CommandPolicy {
    /// Any program (a bare name is looked up on the `PATH` the program
    /// gets, which a job cannot change unless the operator allows it).
    #[default]
    Any,
    /// Only these commands: names, resolved on the server's `PATH` at
    /// start-up, or absolute paths. A job names one as written or by the
    /// path it resolved to, and runs that path.
    Only(Vec<String>),
}

/// The server variables a program gets by default. None of them holds a
/// secret; anything else (`DATABASE_URL`, tokens, cloud credentials)
/// reaches a program only if the operator passes it by name.
pub const DEFAULT_ENV_PASS: &[&str] = &["HOME", "LANG", "LC_ALL", "TMPDIR", "TZ"];

/// The `PATH` programs get (and commands are resolved on) when the server
/// has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Variables a job may not set in its `env`, because they choose which
/// program runs or make a program load code the job names: the search
/// path, the shells' start-up files, exported functions and word
/// splitting, and the module paths and start-up options of common
/// interpreters. (Program-specific hooks, like git's `GIT_SSH_COMMAND`,
/// are not covered: allow a wrapper script that sets its own
/// environment instead of such a program.)
const REFUSED_ENV: &[&str] = &[
    // Which program or library is found.
    "PATH",
    "GCONV_PATH",
    // Shells.
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "IFS",
    // Python.
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "PYTHONPYCACHEPREFIX",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "PYTHONINSPECT",
    // Perl, Ruby, Node.js, Java.
    "PERL5LIB",
    "PERLLIB",
    "PERL5OPT",
    "PERL5DB",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
];

/// Prefixes of refused variables: the dynamic loader's (`LD_PRELOAD`,
/// `LD_LIBRARY_PATH`, …, and macOS's `DYLD_*`) and bash's exported
/// functions, which replace commands a script runs.
const REFUSED_ENV_PREFIXES: &[&str] = &["LD_", "DYLD_", "BASH_FUNC_"];

/// Whether jobs may not set `key` without the operator's leave.
pub fn is_refused_env(key: &str) -> bool {
    REFUSED_ENV.contains(&key) || REFUSED_ENV_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The operator's settings (`serve`'s `--exec-*` flags).
#[derive(Debug, Clone)]
pub struct ExecSettings {
    /// Which programs jobs may run.
    pub commands: CommandPolicy,
    /// Server variables programs get, by name (their values are read at
    /// start-up; an unset one is left out). `PATH` is always given.
    pub env_pass: Vec<String>,
    /// Refused variables (see [`is_refused_env`]) jobs may set anyway.
    pub allow_env: Vec<String>,
    /// If set, programs run under this directory: a job's `cwd` must lie
    /// inside it (a relative one is taken from it), and a job without
    /// `cwd` runs in it.
    pub cwd_root: Option<PathBuf>,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            commands: CommandPolicy::Any,
            env_pass: DEFAULT_ENV_PASS.iter().map(|s| s.to_string()).collect(),
            allow_env: Vec::new(),
            cwd_root: None,
        }
    }
}

/// Why the settings cannot be used; the server refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecSetupError {
    /// An allowed command that does not name an executable file.
    #[error("command {command:?} {why}")]
    Command { command: String, why: String },
    /// The working-directory root is unusable.
    #[error("{path:?}: {why}")]
    CwdRoot { path: PathBuf, why: String },
}

/// The settings made concrete: what every `exec` job is checked against
/// and every program started with.
#[derive(Debug, Clone)]
pub(super) struct Confinement {
    /// Allowed commands as written, with the program each runs; `None`:
    /// any.
    commands: Option<BTreeMap<String, PathBuf>>,
    /// The programs' environment before a job's own `env`: `PATH` (the
    /// server's, absolute entries only) and the passed variables.
    base_env: Vec<(OsString, OsString)>,
    allow_env: BTreeSet<String>,
    /// Canonical, so a job's canonical `cwd` can be compared with it.
    cwd_root: Option<PathBuf>,
}

impl Confinement {
    /// Resolves `settings` against the server's environment, as `var`
    /// reads it.
    pub(super) fn new(
        settings: &ExecSettings,
        var: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Confinement, ExecSetupError> {
        // Relative entries (`.`, an empty one) would find programs in
        // whatever directory a job runs in.
        let path = var("PATH")
            .map(|p| std::env::join_paths(std::env::split_paths(&p).filter(|d| d.is_absolute())))
            .and_then(Result::ok)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| FALLBACK_PATH.into());
        let commands = match &settings.commands {
            CommandPolicy::Any => None,
            CommandPolicy::Only(names) => Some(
                names
                    .iter()
                    .map(|n| n.trim())
                    .filter(|n| !n.is_empty())
                    .map(|name| Ok((name.to_string(), resolve(name, &path)?)))
                    .collect::<Result<_, ExecSetupError>>()?,
            ),
        };
        let mut base_env = vec![(OsString::from("PATH"), path)];
        for name in &settings.env_pass {
            let name = name.trim();
            if name.is_empty() || name == "PATH" {
                continue;
            }
            if let Some(value) = var(name) {
                base_env.push((name.into(), value));
            }
        }
        let cwd_root = match &settings.cwd_root {
            None => None,
            Some(root) => {
                let bad = |why: &str| ExecSetupError::CwdRoot {
                    path: root.clone(),
                    why: why.into(),
                };
                if !root.is_absolute() {
                    return Err(bad("must be an absolute path"));
                }
                let canonical = root.canonicalize().map_err(|e| bad(&e.to_string()))?;
                if !canonical.is_dir() {
                    return Err(bad("is not a directory"));
                }
                Some(canonical)
            }
        };
        Ok(Confinement {
            commands,
            base_env,
            allow_env: settings
                .allow_env
                .iter()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect(),
            cwd_root,
        })
    }

    /// The program a job's `command` runs, or why it may not.
    pub(super) fn program(&self, command: &str) -> Result<PathBuf, String> {
        let Some(allowed) = &self.commands else {
            return Ok(PathBuf::from(command));
        };
        allowed
            .iter()
            .find(|(name, path)| *name == command || path.as_os_str() == command)
            .map(|(_, path)| path.clone())
            .ok_or_else(|| {
                format!(
                    "command {command:?} is not allowed on this server; allowed: {}",
                    allowed.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// The variables of a job's `env` it may not set, as violations of
    /// `params[env]`.
    pub(super) fn check_env(&self, env: &BTreeMap<String, String>) -> Vec<FieldViolation> {
        let mut bad = Vec::new();
        for (key, value) in env {
            let why = if key.is_empty() || key.contains(['=', '\0']) {
                format!("{key:?} is not a variable name")
            } else if value.contains('\0') {
                format!("the value of {key} contains a NUL byte")
            } else if is_refused_env(key) && !self.allow_env.contains(key) {
                format!(
                    "sets {key}, which changes which program runs or what code it loads; \
                     this server does not let jobs set it (the operator may allow it with \
                     --exec-allow-env)"
                )
            } else {
                continue;
            };
            bad.push(FieldViolation::new("params[env]", why));
        }
        bad
    }

    /// Where a program runs: the job's `cwd`, checked, or the root.
    pub(super) fn cwd(&self, cwd: Option<&str>) -> Result<Option<PathBuf>, FieldViolation> {
        let bad = |why: String| FieldViolation::new("params[cwd]", why);
        let Some(cwd) = cwd else {
            return Ok(self.cwd_root.clone());
        };
        let given = Path::new(cwd);
        if cwd.is_empty() || given.components().any(|c| c == Component::ParentDir) {
            return Err(bad(format!(
                "{cwd:?} must be a directory path without `..`"
            )));
        }
        let path = match &self.cwd_root {
            Some(root) => root.join(given),
            None if given.is_absolute() => given.to_path_buf(),
            None => {
                return Err(bad(format!(
                    "{cwd:?} must be an absolute path on this server"
                )));
            }
        };
        let canonical = path
            .canonicalize()
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| bad(format!("{cwd:?} is not a directory on this server")))?;
        if let Some(root) = &self.cwd_root
            && !canonical.starts_with(root)
        {
            return Err(bad(format!(
                "{cwd:?} is outside {}, where this server runs programs",
                root.display()
            )));
        }
        Ok(Some(canonical))
    }

    /// The environment a program starts from, before the job's own.
    pub(super) fn base_env(&self) -> &[(OsString, OsString)] {
        &self.base_env
    }
}

/// The absolute path of an allowed command: itself if absolute, else the
/// first executable file of that name on `path`.
fn resolve(name: &str, path: &OsStr) -> Result<PathBuf, ExecSetupError> {
    let bad = |why: String| ExecSetupError::Command {
        command: name.to_string(),
        why,
    };
    if name.contains('/') {
        let candidate = PathBuf::from(name);
        if !candidate.is_absolute() {
            return Err(bad(
                "must be a name found on the server's PATH or an absolute path".into(),
            ));
        }
        return if is_executable(&candidate) {
            Ok(candidate)
        } else {
            Err(bad("is not an executable file".into()))
        };
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            bad(format!(
                "is not found on the server's PATH ({})",
                path.display()
            ))
        })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_env(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn confine(settings: &ExecSettings) -> Confinement {
        Confinement::new(
            settings,
            &server_env(&[
                ("PATH", ".:/usr/bin::/bin:bin"),
                ("LANG", "C.UTF-8"),
                ("DATABASE_URL", "postgres://u:secret@db/jobs"),
                ("JOBVISOR_TOKEN", "tok"),
            ]),
        )
        .unwrap()
    }

    #[test]
    fn programs_get_the_absolute_path_and_only_passed_variables() {
        let c = confine(&ExecSettings::default());
        let env: Vec<_> = c
            .base_env()
            .iter()
            .map(|(k, v)| format!("{}={}", k.display(), v.display()))
            .collect();
        assert_eq!(env, ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);

        let passing = ExecSettings {
            env_pass: vec!["JOBVISOR_TOKEN".into(), "PATH".into(), "UNSET".into()],
            ..ExecSettings::default()
        };
        let names: Vec<_> = confine(&passing)
            .base_env()
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(names, ["PATH", "JOBVISOR_TOKEN"]);

        let bare = Confinement::new(&ExecSettings::default(), &|_| None).unwrap();
        assert_eq!(bare.base_env(), [("PATH".into(), FALLBACK_PATH.into())]);
    }

    #[test]
    fn allowed_commands_resolve_once_to_absolute_paths() {
        let only = |names: &[&str]| ExecSettings {
            commands: CommandPolicy::Only(names.iter().map(|s| s.to_string()).collect()),
            ..ExecSettings::default()
        };
        let c = confine(&only(&["sh", "/bin/true", ""]));
        let sh = c.program("sh").unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(c.program(sh.to_str().unwrap()).unwrap(), sh);
        assert_eq!(c.program("/bin/true").unwrap(), Path::new("/bin/true"));
        assert!(c.program("true").unwrap_err().contains("not allowed"));

        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "not a program").unwrap();
        for (bad, why) in [
            ("no-such-program-here", "not found on the server's PATH"),
            ("bin/sh", "absolute path"),
            (data.to_str().unwrap(), "not an executable file"),
        ] {
            match Confinement::new(&only(&[bad]), &server_env(&[("PATH", "/usr/bin:/bin")])) {
                Err(e @ ExecSetupError::Command { .. }) => {
                    assert!(e.to_string().contains(why), "{bad}: {e}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            confine(&ExecSettings::default())
                .program("anything")
                .unwrap(),
            Path::new("anything")
        );
    }

    #[test]
    fn loader_and_interpreter_variables_are_refused_unless_allowed() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = confine(&ExecSettings::default());
        for key in [
            "PATH",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "DYLD_INSERT_LIBRARIES",
            "BASH_FUNC_date%%",
            "BASH_ENV",
            "PYTHONPATH",
            "PERL5OPT",
            "NODE_OPTIONS",
        ] {
            let bad = c.check_env(&env(&[(key, "x"), ("LANG", "C")]));
            assert_eq!(bad.len(), 1, "{key}");
            assert_eq!(bad[0].field, "params[env]");
            assert!(bad[0].description.contains(key), "{}", bad[0].description);
        }
        assert!(
            c.check_env(&env(&[
                ("LANG", "C"),
                ("PYTHONUNBUFFERED", "1"),
                ("path", "x")
            ]))
            .is_empty()
        );
        assert_eq!(c.check_env(&env(&[("A=B", "x"), ("", "y")])).len(), 2);
        assert_eq!(c.check_env(&env(&[("A", "x\0y")])).len(), 1);

        let allowing = confine(&ExecSettings {
            allow_env: vec!["PATH".into(), "LD_LIBRARY_PATH".into()],
            ..ExecSettings::default()
        });
        assert!(
            allowing
                .check_env(&env(&[
                    ("PATH", "/opt/bin"),
                    ("LD_LIBRARY_PATH", "/opt/lib")
                ]))
                .is_empty()
        );
        assert_eq!(allowing.check_env(&env(&[("LD_PRELOAD", "x.so")])).len(), 1);
    }

    #[test]
    fn a_cwd_is_absolute_and_exists_or_lies_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("work")).unwrap();
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        let top = dir.path().canonicalize().unwrap();

        let open = confine(&ExecSettings::default());
        assert_eq!(open.cwd(None).unwrap(), None);
        assert_eq!(
            open.cwd(Some(dir.path().to_str().unwrap())).unwrap(),
            Some(top.clone())
        );
        for bad in ["work", "", "/tmp/../etc", "/no/such/directory"] {
            let v = open.cwd(Some(bad)).unwrap_err();
            assert_eq!(v.field, "params[cwd]", "{bad}");
        }

        let confined = confine(&ExecSettings {
            cwd_root: Some(root.clone()),
            ..ExecSettings::default()
        });
        let inside = top.join("root");
        assert_eq!(confined.cwd(None).unwrap(), Some(inside.clone()));
        assert_eq!(
            confined.cwd(Some("work")).unwrap(),
            Some(inside.join("work"))
        );
        assert_eq!(
            confined
                .cwd(Some(inside.join("work").to_str().unwrap()))
                .unwrap(),
            Some(inside.join("work"))
        );
        for bad in ["escape", "/tmp", "work/../.."] {
            let v = confined.cwd(Some(bad)).unwrap_err();
            assert_eq!(v.field, "params[cwd]", "{bad}");
        }

        let missing = ExecSettings {
            cwd_root: Some(dir.path().join("missing")),
            ..ExecSettings::default()
        };
        assert!(matches!(
            Confinement::new(&missing, &|_| None),
            Err(ExecSetupError::CwdRoot { .. })
        ));
    }
}
