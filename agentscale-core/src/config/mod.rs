//! Configuration: serde structs loadable from environment variables and
//! mounted files (the way Kubernetes ConfigMaps and Secrets arrive).
//!
//! Secrets are wrapped in [`Secret`], whose `Debug` and `Display` print
//! `[redacted]`, so they never reach logs.
//!
//! # Loading
//!
//! Any `serde::de::DeserializeOwned` type loads with a [`ConfigLoader`]; a
//! backend's config struct just derives `Deserialize` and uses [`Secret`] for
//! credentials. Sources, later ones overriding earlier ones key by key:
//!
//! 1. config files, TOML (`.toml`) or JSON (`.json`) by extension — what a
//!    mounted ConfigMap gives;
//! 2. environment variables with a prefix, `__` separating nesting levels:
//!    `AGENTSCALE_WORKER__CONCURRENCY=32` sets `worker.concurrency` (keys are
//!    lower-cased; a single `_` stays part of the key). A value is read as a
//!    JSON scalar when it parses as one (`32`, `true`, `1.5`, `"quoted"`) and as
//!    a string otherwise, but a string field always receives the text as
//!    written (`AGENTSCALE_TENANT=007` is the string `"007"`, and a password
//!    `123456` stays a string). A sequence field accepts a JSON array or a
//!    comma-separated list (`AGENTSCALE_KAFKA__BROKERS=k1:9092,k2:9092`);
//!    `null` sets an `Option` field to `None`;
//! 3. the `_FILE` convention: `AGENTSCALE_REDIS__URL_FILE=/var/run/secrets/redis-url`
//!    sets `redis.url` to the contents of that file, trimmed — how Kubernetes
//!    Secrets are mounted. A variable ending in `_FILE` is always read this
//!    way, so a field whose own name ends in `_file` must come from a config
//!    file (or from a `..._FILE_FILE` variable).
//!
//! Variables with the prefix that match no field are ignored unless the
//! struct says `#[serde(deny_unknown_fields)]` (recommended: it catches typos
//! such as `AGENTSCALE_WORKR__CONCURRENCY`).
//!
//! ```
//! use agentscale_core::config::{ConfigLoader, Secret};
//! use serde::Deserialize;
//!
//! #[derive(Debug, Deserialize)]
//! struct Settings {
//!     worker: Worker,
//!     redis: Redis,
//! }
//! #[derive(Debug, Deserialize)]
//! struct Worker {
//!     concurrency: usize,
//!     #[serde(default)]
//!     queues: Vec<String>,
//! }
//! #[derive(Debug, Deserialize)]
//! struct Redis {
//!     url: Secret,
//! }
//!
//! let settings: Settings = ConfigLoader::new()
//!     .env_prefix("AGENTSCALE")
//!     // In a real service omit `env_vars`: the process environment is read.
//!     .env_vars([
//!         ("AGENTSCALE_WORKER__CONCURRENCY", "32"),
//!         ("AGENTSCALE_WORKER__QUEUES", "research,chat"),
//!         ("AGENTSCALE_REDIS__URL", "redis://:pw@redis:6379"),
//!     ])
//!     .load()?;
//! assert_eq!(settings.worker.concurrency, 32);
//! assert_eq!(settings.worker.queues, ["research", "chat"]);
//! assert_eq!(format!("{:?}", settings.redis.url), "[redacted]");
//! # Ok::<(), agentscale_core::Error>(())
//! ```
//!
//! A mounted file that changes while the process runs can be applied live
//! with a [`reload::Reloader`]: safe settings change in place, the others
//! are reported as needing a restart, and an invalid file is rejected.
//!
//! Errors are [`Error::InvalidConfig`] naming the key and where its value came
//! from (file path or variable name). Values are never quoted in messages: a
//! mistyped secret does not end up in a log. Loading never panics.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A secret string (password, token, URL with credentials). `Debug` and
/// `Display` print `[redacted]`; read it with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call this only where the value is used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Serialises as `[redacted]`: dumping a config never leaks the secret.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Replaces the password in a URL such as `redis://user:pass@host:6379/0` by
/// `***`, for log lines and error messages.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            return format!("{}://{}:***@{}", &url[..scheme_end], user, &rest[at + 1..]);
        }
    }
    url.to_string()
}

/// Largest file read for a config file or a `_FILE` variable (1 MiB).
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Loads a config struct from files and environment variables; see the
/// [module docs](self) for the rules.
///
/// ```no_run
/// # use agentscale_core::config::ConfigLoader;
/// # #[derive(serde::Deserialize)] struct Settings {}
/// // /etc/agentscale/config.toml is the mounted ConfigMap; AGENTSCALE_* override it.
/// let settings: Settings = ConfigLoader::new()
///     .optional_file("/etc/agentscale/config.toml")
///     .file_from_env("AGENTSCALE_CONFIG")
///     .env_prefix("AGENTSCALE")
///     .load()?;
/// # Ok::<(), agentscale_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConfigLoader {
    files: Vec<FileSource>,
    env_prefix: Option<String>,
    env: Option<Vec<(String, String)>>,
}

#[derive(Debug, Clone)]
enum FileSource {
    Required(PathBuf),
    Optional(PathBuf),
    /// The path is the value of this variable, when it is set.
    FromEnv(String),
}

impl ConfigLoader {
    /// A loader with no sources (loading gives an empty map).
    pub fn new() -> Self {
        ConfigLoader::default()
    }

    /// Adds a config file that must exist (`.toml` or `.json`).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(FileSource::Required(path.into()));
        self
    }

    /// Adds a config file that is skipped when it does not exist.
    pub fn optional_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(FileSource::Optional(path.into()));
        self
    }

    /// Adds the config file named by environment variable `var`, when it is
    /// set (for example `AGENTSCALE_CONFIG=/etc/agentscale/config.toml`). The
    /// variable itself is not mapped to a key.
    pub fn file_from_env(mut self, var: impl Into<String>) -> Self {
        self.files.push(FileSource::FromEnv(var.into()));
        self
    }

    /// Reads variables named `<prefix>_<KEY>` (for example `AGENTSCALE`).
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.env_prefix = Some(prefix.trim_end_matches('_').to_string());
        self
    }

    /// Uses these variables instead of the process environment (for tests,
    /// or a service that assembles its environment itself).
    pub fn env_vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = Some(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self
    }

    fn var(&self, name: &str) -> Result<Option<String>> {
        match &self.env {
            Some(vars) => Ok(vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())),
            None => match std::env::var(name) {
                Ok(v) => Ok(Some(v)),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidConfig(format!(
                    "environment variable {name} is not valid UTF-8"
                ))),
            },
        }
    }

    fn prefixed_vars(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let wanted = format!("{prefix}_");
        let mut out = Vec::new();
        match &self.env {
            Some(vars) => {
                out.extend(vars.iter().filter(|(k, _)| k.starts_with(&wanted)).cloned());
            }
            None => {
                for (k, v) in std::env::vars_os() {
                    let Some(k) = k.to_str() else { continue };
                    if !k.starts_with(&wanted) {
                        continue;
                    }
                    let v = v.into_string().map_err(|_| {
                        Error::InvalidConfig(format!("environment variable {k} is not valid UTF-8"))
                    })?;
                    out.push((k.to_string(), v));
                }
            }
        }
        Ok(out)
    }

    /// Loads and deserialises `T`. [`Error::InvalidConfig`] names the key and
    /// the source of a bad value, without the value.
    pub fn load<T: DeserializeOwned>(&self) -> Result<T> {
        let root = self.tree()?;
        T::deserialize(NodeDe {
            node: root,
            path: String::new(),
        })
        .map_err(|e| Error::InvalidConfig(e.0))
    }

    /// Builds the merged key tree of all sources.
    fn tree(&self) -> Result<Node> {
        let mut root = BTreeMap::new();
        let mut config_vars = Vec::new();
        for f in &self.files {
            let path = match f {
                FileSource::Required(p) => p.clone(),
                FileSource::Optional(p) => {
                    if !p.exists() {
                        continue;
                    }
                    p.clone()
                }
                FileSource::FromEnv(var) => {
                    config_vars.push(var.clone());
                    match self.var(var)? {
                        Some(p) if !p.trim().is_empty() => PathBuf::from(p.trim()),
                        _ => continue,
                    }
                }
            };
            let value = read_config_file(&path)?;
            let origin: Arc<str> = Arc::from(path.display().to_string());
            merge_json(&mut root, value, &origin);
        }
        if let Some(prefix) = &self.env_prefix {
            let mut vars = self.prefixed_vars(prefix)?;
            vars.retain(|(k, _)| !config_vars.contains(k));
            // Sorted, so a parent key is seen before its children and the
            // result does not depend on the environment's order.
            vars.sort();
            for (name, value) in vars {
                apply_env(&mut root, prefix, &name, value)?;
            }
        }
        Ok(Node::Map(root))
    }
}

/// Loads `T` from environment variables with `prefix` (see [`ConfigLoader`]).
pub fn from_env<T: DeserializeOwned>(prefix: &str) -> Result<T> {
    ConfigLoader::new().env_prefix(prefix).load()
}

/// Loads `T` from one TOML or JSON file.
pub fn from_file<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    ConfigLoader::new().file(path.as_ref()).load()
}

fn read_limited(path: &Path, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::InvalidConfig(format!("{what}: cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(Error::InvalidConfig(format!(
            "{what}: {} is {} bytes; at most {MAX_CONFIG_FILE_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidConfig(format!("{what}: cannot read {}: {e}", path.display())))
}

fn read_config_file(path: &Path) -> Result<serde_json::Value> {
    let text = read_limited(path, "config file")?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    // Parser messages name line and column; they may quote a fragment of the
    // file, so they are redacted like every other value.
    let value: serde_json::Value = match ext.as_deref() {
        #[cfg(feature = "toml")]
        Some("toml") => toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            Error::InvalidConfig(format!(
                "config file {} is not valid TOML (line {line}): {}",
                path.display(),
                tree::redact_quoted(e.message())
            ))
        })?,
        #[cfg(not(feature = "toml"))]
        Some("toml") => {
            return Err(Error::InvalidConfig(format!(
                "config file {}: TOML files need agentscale-core's `toml` feature (on by default)",
                path.display()
            )))
        }
        Some("json") => serde_json::from_str(&text).map_err(|e| {
            Error::InvalidConfig(format!(
                "config file {} is not valid JSON at line {} column {}",
                path.display(),
                e.line(),
                e.column()
            ))
        })?,
        _ => {
            return Err(Error::InvalidConfig(format!(
                "config file {}: unsupported extension (use .toml or .json)",
                path.display()
            )))
        }
    };
    if !value.is_object() {
        return Err(Error::InvalidConfig(format!(
            "config file {}: the top level must be a table/object",
            path.display()
        )));
    }
    Ok(value)
}

pub mod reload;
mod tree;
use tree::{apply_env, merge_json, Node, NodeDe};
mod durations;
pub use durations::{duration, parse_duration};

#[cfg(all(test, feature = "toml"))]
mod tests;

/// Plain setters for a config builder that wraps its config in a `config`
/// field: `config_setters! { /// Sets x. x: u32, … }` inside the builder's
/// `impl` block expands to `pub fn x(mut self, value: u32) -> Self`. Used
/// by the backends' `XConfigBuilder`s so they all read the same way.
#[macro_export]
#[doc(hidden)]
macro_rules! config_setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}
