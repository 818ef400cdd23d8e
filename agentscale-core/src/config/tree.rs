//! The key tree merged from files and environment variables, and the serde
//! deserializer over it that names the failing key and its source.

use super::*;

/// A key tree: maps from files and env, leaves remembering their source.
#[derive(Debug)]
pub(super) enum Node {
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

pub(super) fn merge_json(map: &mut BTreeMap<String, Node>, value: serde_json::Value, origin: &Arc<str>) {
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

pub(super) fn apply_env(
    root: &mut BTreeMap<String, Node>,
    prefix: &str,
    name: &str,
    value: String,
) -> Result<()> {
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
pub(super) fn redact_quoted(msg: &str) -> String {
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
pub(super) struct DeError(pub(super) String);

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
pub(super) const KEYED: char = '`';

pub(super) fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

/// Prefix of the origin of values read through the `_FILE` convention.
pub(super) const SECRET_FILE_ORIGIN: &str = "file named by ";

pub(super) fn leaf_error(path: &str, origin: &str, e: impl fmt::Display) -> DeError {
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

pub(super) fn map_error(path: &str, e: DeError) -> DeError {
    if e.0.starts_with(KEYED) {
        e
    } else {
        DeError(format!("{KEYED}{}{KEYED}: {}", display_path(path), e.0))
    }
}

/// The raw env text as JSON, when it parses as a scalar (or as an array or
/// object written in JSON).
pub(super) fn parse_env(raw: &str) -> Option<serde_json::Value> {
    let t = raw.trim();
    if t.is_empty() {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(t).ok()
}

pub(super) struct NodeDe {
    pub(super) node: Node,
    pub(super) path: String,
}

impl<'de> IntoDeserializer<'de, DeError> for NodeDe {
    type Deserializer = NodeDe;

    fn into_deserializer(self) -> NodeDe {
        self
    }
}

pub(super) fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub(super) struct MapAccessImpl {
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
pub(super) fn map_to_enum_json(m: BTreeMap<String, Node>) -> Result<serde_json::Value, DeError> {
    fn to_json(node: Node) -> serde_json::Value {
        match node {
            Node::Map(m) => serde_json::Value::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
            Node::Json { value, .. } => value,
            Node::Env { raw, .. } => parse_env(&raw).unwrap_or(serde_json::Value::String(raw)),
        }
    }
    Ok(to_json(Node::Map(m)))
}
