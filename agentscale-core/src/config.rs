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
        Some("toml") => toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            Error::InvalidConfig(format!(
                "config file {} is not valid TOML (line {line}): {}",
                path.display(),
                redact_quoted(e.message())
            ))
        })?,
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

/// A key tree: maps from files and env, leaves remembering their source.
#[derive(Debug)]
enum Node {
    Map(BTreeMap<String, Node>),
    /// A value from a config file (arrays and scalars; objects become maps).
    Json {
        value: serde_json::Value,
        origin: Arc<str>,
    },
    /// A raw value from an environment variable (or the file it names).
    Env {
        raw: String,
        origin: String,
    },
}

fn merge_json(map: &mut BTreeMap<String, Node>, value: serde_json::Value, origin: &Arc<str>) {
    if let serde_json::Value::Object(obj) = value {
        for (k, v) in obj {
            match v {
                serde_json::Value::Object(_) => {
                    let entry = map.entry(k).or_insert_with(|| Node::Map(BTreeMap::new()));
                    if !matches!(entry, Node::Map(_)) {
                        *entry = Node::Map(BTreeMap::new());
                    }
                    if let Node::Map(child) = entry {
                        merge_json(child, v, origin);
                    }
                }
                other => {
                    map.insert(
                        k,
                        Node::Json {
                            value: other,
                            origin: origin.clone(),
                        },
                    );
                }
            }
        }
    }
}

fn apply_env(root: &mut BTreeMap<String, Node>, prefix: &str, name: &str, value: String) -> Result<()> {
    let rest = &name[prefix.len() + 1..];
    let (rest, from_file) = match rest.strip_suffix("_FILE") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if segments.iter().any(String::is_empty) {
        return Err(Error::InvalidConfig(format!(
            "environment variable {name}: empty key segment (use `__` only between keys)"
        )));
    }
    let (raw, origin) = if from_file {
        let path = PathBuf::from(value.trim());
        let text = read_limited(&path, &format!("environment variable {name}"))?;
        (text.trim().to_string(), format!("{SECRET_FILE_ORIGIN}{name}"))
    } else {
        (value, format!("env {name}"))
    };
    let mut map = root;
    let (last, parents) = match segments.split_last() {
        Some(x) => x,
        None => {
            return Err(Error::InvalidConfig(format!(
                "environment variable {name}: no key"
            )))
        }
    };
    for (i, seg) in parents.iter().enumerate() {
        let entry = map
            .entry(seg.clone())
            .or_insert_with(|| Node::Map(BTreeMap::new()));
        if let Node::Env { origin, .. } = entry {
            return Err(Error::InvalidConfig(format!(
                "environment variable {name}: `{}` is already set as a value by {origin}",
                segments[..=i].join(".")
            )));
        }
        if let Node::Json { .. } = entry {
            // A file value (scalar or array) is replaced by the env map.
            *entry = Node::Map(BTreeMap::new());
        }
        match entry {
            Node::Map(child) => map = child,
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "environment variable {name}: cannot nest here"
                )))
            }
        }
    }
    map.insert(last.clone(), Node::Env { raw, origin });
    Ok(())
}

/// Replaces every double-quoted fragment of a message by `"***"`, so a value
/// quoted by serde or a parser never reaches a log.
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push_str("***\"");
            // Skip to the closing quote, honouring backslash escapes.
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
        }
    }
    out
}

/// Deserialisation error carrying the key path.
#[derive(Debug)]
struct DeError(String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(redact_quoted(&msg.to_string()))
    }
}

/// Key-path marker: messages that already name their key start with it.
const KEYED: char = '`';

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

/// Prefix of the origin of values read through the `_FILE` convention.
const SECRET_FILE_ORIGIN: &str = "file named by ";

fn leaf_error(path: &str, origin: &str, e: impl fmt::Display) -> DeError {
    let mut msg = redact_quoted(&e.to_string());
    if msg.starts_with(KEYED) {
        DeError(msg)
    } else {
        if origin.starts_with(SECRET_FILE_ORIGIN) {
            // Mounted secrets: not even a number is echoed.
            msg = match msg.split_once(", expected ") {
                Some((_, expected)) => format!("the value (hidden) is not valid, expected {expected}"),
                None => "the value (hidden) is not valid".to_string(),
            };
        }
        DeError(format!(
            "{KEYED}{}{KEYED} (from {origin}): {msg}",
            display_path(path)
        ))
    }
}

fn map_error(path: &str, e: DeError) -> DeError {
    if e.0.starts_with(KEYED) {
        e
    } else {
        DeError(format!("{KEYED}{}{KEYED}: {}", display_path(path), e.0))
    }
}

/// The raw env text as JSON, when it parses as a scalar (or as an array or
/// object written in JSON).
fn parse_env(raw: &str) -> Option<serde_json::Value> {
    let t = raw.trim();
    if t.is_empty() {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(t).ok()
}

struct NodeDe {
    node: Node,
    path: String,
}

impl<'de> IntoDeserializer<'de, DeError> for NodeDe {
    type Deserializer = NodeDe;

    fn into_deserializer(self) -> NodeDe {
        self
    }
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

struct MapAccessImpl {
    iter: std::collections::btree_map::IntoIter<String, Node>,
    pending: Option<(String, Node)>,
    path: String,
}

impl<'de> de::MapAccess<'de> for MapAccessImpl {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some((k, v)) => {
                let key = seed.deserialize(k.clone().into_deserializer())?;
                self.pending = Some((k, v));
                Ok(Some(key))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (k, node) = self
            .pending
            .take()
            .ok_or_else(|| DeError("value requested before key".into()))?;
        let path = join_path(&self.path, &k);
        // Errors raised after the node was read (a `deserialize_with`
        // helper such as `duration`) carry no key yet: name it here.
        seed.deserialize(NodeDe {
            node,
            path: path.clone(),
        })
        .map_err(|e| map_error(&path, e))
    }
}

macro_rules! env_scalar {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                match self.node {
                    Node::Env { raw, origin } => match parse_env(&raw) {
                        Some(json) => json.$method(visitor).map_err(|e| leaf_error(&self.path, &origin, e)),
                        None => visitor.visit_string::<DeError>(raw).map_err(|e| leaf_error(&self.path, &origin, e)),
                    },
                    Node::Json { value, origin } => {
                        value.$method(visitor).map_err(|e| leaf_error(&self.path, &origin, e))
                    }
                    node @ Node::Map(_) => NodeDe { node, path: self.path }.deserialize_any(visitor),
                }
            }
        )*
    };
}

impl<'de> Deserializer<'de> for NodeDe {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node {
            Node::Map(m) => {
                let path = self.path;
                visitor
                    .visit_map(MapAccessImpl {
                        iter: m.into_iter(),
                        pending: None,
                        path: path.clone(),
                    })
                    .map_err(|e| map_error(&path, e))
            }
            Node::Json { value, origin } => value
                .deserialize_any(visitor)
                .map_err(|e| leaf_error(&self.path, &origin, e)),
            Node::Env { raw, origin } => match parse_env(&raw) {
                Some(json) => json
                    .deserialize_any(visitor)
                    .map_err(|e| leaf_error(&self.path, &origin, e)),
                None => visitor
                    .visit_string::<DeError>(raw)
                    .map_err(|e| leaf_error(&self.path, &origin, e)),
            },
        }
    }

    env_scalar!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
    );

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node {
            // A string field gets the text as written, even if it looks like
            // a number or a boolean.
            Node::Env { raw, origin } => visitor
                .visit_string::<DeError>(raw)
                .map_err(|e| leaf_error(&self.path, &origin, e)),
            Node::Json {
                value: serde_json::Value::Number(n),
                origin,
            } => visitor
                .visit_string::<DeError>(n.to_string())
                .map_err(|e| leaf_error(&self.path, &origin, e)),
            Node::Json {
                value: serde_json::Value::Bool(b),
                origin,
            } => visitor
                .visit_string::<DeError>(b.to_string())
                .map_err(|e| leaf_error(&self.path, &origin, e)),
            Node::Json { value, origin } => value
                .deserialize_string(visitor)
                .map_err(|e| leaf_error(&self.path, &origin, e)),
            node @ Node::Map(_) => NodeDe {
                node,
                path: self.path,
            }
            .deserialize_any(visitor),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node {
            Node::Json {
                value: serde_json::Value::Null,
                ..
            } => visitor.visit_none(),
            Node::Env { ref raw, .. } if raw.trim() == "null" => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node {
            Node::Env { raw, origin } => {
                let t = raw.trim();
                if t.starts_with('[') {
                    let json: serde_json::Value =
                        serde_json::from_str(t).map_err(|e| leaf_error(&self.path, &origin, e))?;
                    json.deserialize_seq(visitor)
                        .map_err(|e| leaf_error(&self.path, &origin, e))
                } else {
                    // Comma-separated items, each read like an env value.
                    let items: Vec<NodeDe> = if t.is_empty() {
                        Vec::new()
                    } else {
                        t.split(',')
                            .enumerate()
                            .map(|(i, item)| NodeDe {
                                node: Node::Env {
                                    raw: item.trim().to_string(),
                                    origin: origin.clone(),
                                },
                                path: format!("{}[{i}]", self.path),
                            })
                            .collect()
                    };
                    visitor.visit_seq(de::value::SeqDeserializer::new(items.into_iter()))
                }
            }
            Node::Json { value, origin } => value
                .deserialize_seq(visitor)
                .map_err(|e| leaf_error(&self.path, &origin, e)),
            node @ Node::Map(_) => NodeDe {
                node,
                path: self.path,
            }
            .deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.node {
            Node::Env { raw, origin } => {
                let t = raw.trim();
                if t.starts_with('{') || t.starts_with('"') {
                    let json: serde_json::Value =
                        serde_json::from_str(t).map_err(|e| leaf_error(&self.path, &origin, e))?;
                    json.deserialize_enum(name, variants, visitor)
                        .map_err(|e| leaf_error(&self.path, &origin, e))
                } else {
                    let d: de::value::StringDeserializer<DeError> = t.to_string().into_deserializer();
                    d.deserialize_enum(name, variants, visitor)
                        .map_err(|e| leaf_error(&self.path, &origin, e))
                }
            }
            Node::Json { value, origin } => value
                .deserialize_enum(name, variants, visitor)
                .map_err(|e| leaf_error(&self.path, &origin, e)),
            Node::Map(m) => {
                let path = self.path;
                let json = map_to_enum_json(m).map_err(|e| map_error(&path, e))?;
                json.deserialize_enum(name, variants, visitor)
                    .map_err(|e| map_error(&path, DeError(redact_quoted(&e.to_string()))))
            }
        }
    }

    serde::forward_to_deserialize_any! {
        bytes byte_buf unit unit_struct tuple tuple_struct map struct ignored_any
    }
}

/// An externally tagged enum given as a map (`{ variant: {...} }`) from
/// several sources: rebuilt as JSON so serde_json can drive the variant.
fn map_to_enum_json(m: BTreeMap<String, Node>) -> Result<serde_json::Value, DeError> {
    fn to_json(node: Node) -> serde_json::Value {
        match node {
            Node::Map(m) => serde_json::Value::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
            Node::Json { value, .. } => value,
            Node::Env { raw, .. } => parse_env(&raw).unwrap_or(serde_json::Value::String(raw)),
        }
    }
    Ok(to_json(Node::Map(m)))
}

/// Parses a duration as written in config files and environment variables:
/// `"250ms"`, `"30s"`, `"2m"`, `"1h"`, `"1d"` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m, h or d)")),
    };
    Ok(std::time::Duration::from_millis(ms))
}

/// Serde helpers for `Duration` config fields: `#[serde(with = "agentscale_core::config::duration")]`.
/// Reads a number of milliseconds or a string for [`parse_duration`]; writes
/// milliseconds. [`duration::option`] does the same for `Option<Duration>`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Ms(u64),
        Text(String),
    }

    fn from_repr<E: serde::de::Error>(r: Repr) -> Result<Duration, E> {
        match r {
            Repr::Ms(ms) => Ok(Duration::from_millis(ms)),
            Repr::Text(t) => super::parse_duration(&t).map_err(E::custom),
        }
    }

    /// Writes whole milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads milliseconds or a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        from_repr(Repr::deserialize(d)?)
    }

    /// The same for `Option<Duration>` fields.
    pub mod option {
        use super::*;

        /// Writes whole milliseconds or none.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                None => s.serialize_none(),
            }
        }

        /// Reads milliseconds, a duration string, or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<Repr>::deserialize(d)?.map(from_repr).transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&s).expect("json"), "\"[redacted]\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:pw@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    use std::io::Write;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Settings {
        worker: WorkerSection,
        #[serde(default)]
        redis: Option<RedisSection>,
        #[serde(default)]
        tenant: Option<String>,
        #[serde(default)]
        brokers: Vec<String>,
        #[serde(default)]
        mode: Mode,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct WorkerSection {
        concurrency: u32,
        #[serde(default)]
        grace_period_ms: u64,
        #[serde(default)]
        verbose: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct RedisSection {
        url: Secret,
        #[serde(default)]
        pool_size: Option<u32>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        #[default]
        Worker,
        Producer,
    }

    fn file(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(body.as_bytes()).expect("write");
        path
    }

    fn env(vars: &[(&str, &str)]) -> ConfigLoader {
        ConfigLoader::new()
            .env_prefix("AGENTSCALE")
            .env_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn env_nesting_and_scalars() {
        let s: Settings = env(&[
            ("AGENTSCALE_WORKER__CONCURRENCY", "32"),
            ("AGENTSCALE_WORKER__GRACE_PERIOD_MS", "25000"),
            ("AGENTSCALE_WORKER__VERBOSE", "true"),
            ("AGENTSCALE_TENANT", "007"),
            ("AGENTSCALE_BROKERS", "k1:9092, k2:9092"),
            ("AGENTSCALE_MODE", "producer"),
            ("OTHER_WORKER__CONCURRENCY", "1"),
        ])
        .load()
        .expect("load");
        assert_eq!(
            s.worker,
            WorkerSection {
                concurrency: 32,
                grace_period_ms: 25000,
                verbose: true
            }
        );
        assert_eq!(
            s.tenant.as_deref(),
            Some("007"),
            "a string field keeps the text as written"
        );
        assert_eq!(s.brokers, ["k1:9092", "k2:9092"]);
        assert_eq!(s.mode, Mode::Producer);
        assert!(s.redis.is_none());
    }

    #[test]
    fn numeric_looking_secret_stays_a_string() {
        let s: Settings = env(&[
            ("AGENTSCALE_WORKER__CONCURRENCY", "1"),
            ("AGENTSCALE_REDIS__URL", "123456"),
        ])
        .load()
        .expect("load");
        assert_eq!(s.redis.expect("redis").url.expose(), "123456");
    }

    #[test]
    fn json_arrays_and_null() {
        let s: Settings = env(&[
            ("AGENTSCALE_WORKER__CONCURRENCY", "1"),
            ("AGENTSCALE_BROKERS", r#"["a:1","b:2"]"#),
            ("AGENTSCALE_TENANT", "null"),
        ])
        .load()
        .expect("load");
        assert_eq!(s.brokers, ["a:1", "b:2"]);
        assert_eq!(s.tenant, None);
    }

    #[test]
    fn toml_file_then_env_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(
            &dir,
            "config.toml",
            "tenant = \"acme\"\n[worker]\nconcurrency = 8\ngrace_period_ms = 1000\n[redis]\nurl = \"redis://file\"\npool_size = 4\n",
        );
        let s: Settings = env(&[("AGENTSCALE_WORKER__CONCURRENCY", "64")])
            .file(&path)
            .load()
            .expect("load");
        assert_eq!(s.worker.concurrency, 64, "env overrides the file");
        assert_eq!(
            s.worker.grace_period_ms, 1000,
            "keys the env does not set come from the file"
        );
        let redis = s.redis.expect("redis");
        assert_eq!(redis.url.expose(), "redis://file");
        assert_eq!(redis.pool_size, Some(4));
        assert_eq!(s.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn json_file_and_optional_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(
            &dir,
            "config.json",
            r#"{"worker":{"concurrency":3},"brokers":["x:1"]}"#,
        );
        let s: Settings = ConfigLoader::new()
            .optional_file(dir.path().join("missing.toml"))
            .file(&path)
            .load()
            .expect("load");
        assert_eq!(s.worker.concurrency, 3);
        assert_eq!(s.brokers, ["x:1"]);

        let err = ConfigLoader::new()
            .file(dir.path().join("missing.toml"))
            .load::<Settings>()
            .expect_err("missing");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn file_named_by_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(&dir, "c.toml", "[worker]\nconcurrency = 5\n");
        let s: Settings = ConfigLoader::new()
            .file_from_env("AGENTSCALE_CONFIG")
            .env_prefix("AGENTSCALE")
            .env_vars([("AGENTSCALE_CONFIG", path.display().to_string())])
            .load()
            .expect("load");
        assert_eq!(s.worker.concurrency, 5);
    }

    #[test]
    fn file_convention_reads_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = file(&dir, "redis-url", "  redis://:hunter2@redis:6379/0\n");
        let s: Settings = env(&[
            ("AGENTSCALE_WORKER__CONCURRENCY", "2"),
            ("AGENTSCALE_REDIS__URL_FILE", &secret.display().to_string()),
        ])
        .load()
        .expect("load");
        let url = s.redis.expect("redis").url;
        assert_eq!(url.expose(), "redis://:hunter2@redis:6379/0");
        assert_eq!(format!("{url:?}"), "[redacted]");

        let err = env(&[
            ("AGENTSCALE_WORKER__CONCURRENCY", "2"),
            ("AGENTSCALE_REDIS__URL_FILE", "/nonexistent/agentscale/secret"),
        ])
        .load::<Settings>()
        .expect_err("missing secret file");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
        let msg = err.to_string();
        assert!(
            msg.contains("AGENTSCALE_REDIS__URL_FILE") && msg.contains("/nonexistent/agentscale/secret"),
            "{msg}"
        );
    }

    #[test]
    fn errors_name_the_key_and_hide_the_value() {
        let err = env(&[("AGENTSCALE_WORKER__CONCURRENCY", "hunter2-secret")])
            .load::<Settings>()
            .expect_err("bad");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
        let msg = err.to_string();
        assert!(msg.contains("worker.concurrency"), "{msg}");
        assert!(msg.contains("AGENTSCALE_WORKER__CONCURRENCY"), "{msg}");
        assert!(!msg.contains("hunter2"), "value leaked: {msg}");

        let dir = tempfile::tempdir().expect("tempdir");
        let secret = file(&dir, "n", "s3cr3t-value\n");
        let err = env(&[(
            "AGENTSCALE_WORKER__CONCURRENCY_FILE",
            &secret.display().to_string(),
        )])
        .load::<Settings>()
        .expect_err("bad");
        assert!(!err.to_string().contains("s3cr3t"), "value leaked: {err}");

        let err = env(&[]).load::<Settings>().expect_err("missing");
        assert!(err.to_string().contains("missing field `worker`"), "{err}");
        let err = env(&[("AGENTSCALE_WORKER__VERBOSE", "true")])
            .load::<Settings>()
            .expect_err("missing");
        assert!(
            err.to_string().contains("`worker`: missing field `concurrency`"),
            "{err}"
        );

        let path = file(&dir, "bad.toml", "[worker]\nconcurrency = \"many-secret\"\n");
        let err = ConfigLoader::new()
            .file(&path)
            .load::<Settings>()
            .expect_err("bad");
        let msg = err.to_string();
        assert!(
            msg.contains("worker.concurrency") && msg.contains("bad.toml"),
            "{msg}"
        );
        assert!(!msg.contains("many-secret"), "value leaked: {msg}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, body) in [
            ("a.toml", "[worker\nconcurrency = "),
            ("b.json", "{\"worker\": "),
            ("c.json", "[1, 2]"),
            ("d.yaml", "worker: {}"),
        ] {
            let path = file(&dir, name, body);
            let err = ConfigLoader::new()
                .file(&path)
                .load::<Settings>()
                .expect_err(name);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{name}: {err}");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        for bad in [
            "AGENTSCALE_WORKER____CONCURRENCY",
            "AGENTSCALE_WORKER__",
            "AGENTSCALE___X",
        ] {
            let err = env(&[(bad, "1")]).load::<Settings>().expect_err(bad);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{bad}: {err}");
        }
        let err = env(&[
            ("AGENTSCALE_WORKER", "1"),
            ("AGENTSCALE_WORKER__CONCURRENCY", "1"),
        ])
        .load::<Settings>()
        .expect_err("conflict");
        assert!(
            err.to_string().contains("AGENTSCALE_WORKER__CONCURRENCY"),
            "{err}"
        );
        let err = env(&[("AGENTSCALE_WORKER__CONCURRENCY", "-1")])
            .load::<Settings>()
            .expect_err("negative");
        assert!(err.to_string().contains("worker.concurrency"), "{err}");
    }

    #[test]
    fn redacts_quoted_fragments() {
        assert_eq!(
            redact_quoted(r#"invalid type: string "pw\"x", expected u32"#),
            r#"invalid type: string "***", expected u32"#
        );
        assert_eq!(redact_quoted("no quotes"), "no quotes");
    }

    #[test]
    fn loads_into_any_deserialize_type() {
        let v: serde_json::Value = env(&[("AGENTSCALE_A__B", "1"), ("AGENTSCALE_A__C", "x")])
            .load()
            .expect("load");
        assert_eq!(v, serde_json::json!({"a": {"b": 1, "c": "x"}}));
        let m: BTreeMap<String, BTreeMap<String, u8>> =
            env(&[("AGENTSCALE_Q__DEPTH", "7")]).load().expect("load");
        assert_eq!(m["q"]["depth"], 7);
    }
}
