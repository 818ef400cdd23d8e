//! Scorers: how an output is compared with what was expected.
//!
//! A scorer maps `(expected, actual)` to a score in `0.0..=1.0`; a case
//! passes when its score reaches the case's threshold (by default the
//! scorer's [`Scorer::default_threshold`]). Outputs are read as JSON when
//! they parse as JSON, otherwise as a JSON string of their UTF-8 text.
//!
//! | name | `expected` | parameters | score |
//! |---|---|---|---|
//! | `exact` | any JSON | `ignore_case` | 1 when equal (strings trimmed), else 0 |
//! | `contains` | a string or an array of strings | `ignore_case` | fraction of the strings found in the output's text |
//! | `regex` | a pattern (Rust `regex` syntax) | | 1 when it matches the output's text |
//! | `json_fields` | an object `{"/json/pointer": value, …}` | | fraction of the pointers whose value equals |
//! | `json_schema` | a JSON Schema (subset, below) | | 1 when the output validates |
//! | `numeric` | a number | `tolerance` (absolute), `relative` (fraction) | 1 when within either tolerance |
//! | `embedding` | a string | | cosine similarity through the registry's [`Embedder`] (default threshold 0.8) |
//! | your name | anything | | whatever your [`Scorer`] returns ([`ScorerRegistry::register`]) |
//!
//! The `json_schema` scorer checks the keywords `type`, `enum`, `const`,
//! `required`, `properties`, `additionalProperties` (boolean), `items`,
//! `minimum`, `maximum`, `minLength`, `maxLength`, `minItems`, `maxItems`;
//! any other keyword is refused when the golden set loads (rather than
//! silently ignored). Register a user scorer for full JSON Schema drafts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use agentscale_core::{Embedder, Error, Output, Result};
use async_trait::async_trait;
use regex::Regex;
use serde_json::Value as JsonValue;

/// The score of one output, with an optional note saying why.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// `0.0..=1.0`.
    pub value: f64,
    /// What differed, for the report (short).
    pub note: Option<String>,
}

impl Score {
    /// A score without a note.
    pub fn new(value: f64) -> Self {
        Score {
            value: clamp01(value),
            note: None,
        }
    }

    /// A score with a note.
    pub fn with_note(value: f64, note: impl Into<String>) -> Self {
        Score {
            value: clamp01(value),
            note: Some(note.into()),
        }
    }
}

fn clamp01(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 1.0)
    }
}

/// Compares an output with what was expected.
#[async_trait]
pub trait Scorer: Send + Sync + fmt::Debug {
    /// Scores `actual` against `expected` (`0.0..=1.0`).
    async fn score(&self, expected: &JsonValue, actual: &JsonValue) -> Result<Score>;

    /// The pass threshold of a case that sets none.
    fn default_threshold(&self) -> f64 {
        1.0
    }
}

#[allow(dead_code)]
fn _object_safe(_: Box<dyn Scorer>) {}

/// Reads an output the way scorers see it: its JSON when it parses, else a
/// JSON string of its (lossy UTF-8) text; `null` when there is none.
pub fn output_to_json(output: &Output) -> JsonValue {
    match output.as_bytes() {
        None => JsonValue::Null,
        Some(b) => serde_json::from_slice(b)
            .unwrap_or_else(|_| JsonValue::String(String::from_utf8_lossy(b).into_owned())),
    }
}

/// The text of a JSON value: a string as is, anything else as compact JSON.
pub fn text_of(v: &JsonValue) -> String {
    match v {
        JsonValue::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Names → scorers. Holds the built-ins, the embedder of the `embedding`
/// scorer (optional) and your own scorers.
#[derive(Debug, Clone, Default)]
pub struct ScorerRegistry {
    embedder: Option<Arc<dyn Embedder>>,
    user: BTreeMap<String, Arc<dyn Scorer>>,
}

/// Names of the built-in scorers.
pub const BUILTIN_SCORERS: [&str; 7] = [
    "exact",
    "contains",
    "regex",
    "json_fields",
    "json_schema",
    "numeric",
    "embedding",
];

/// Why a scorer spec was refused: the field at fault (`scorer`,
/// `scorer.tolerance`, `expected`, …) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The field of the golden-set line at fault.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn spec_err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl ScorerRegistry {
    /// The built-in scorers, without an embedder.
    pub fn new() -> Self {
        ScorerRegistry::default()
    }

    /// Enables the `embedding` scorer with this embedder.
    pub fn embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    /// Adds a user-defined scorer under `name` (a built-in name is refused).
    pub fn register(mut self, name: impl Into<String>, scorer: Arc<dyn Scorer>) -> Result<Self> {
        let name = name.into();
        if BUILTIN_SCORERS.contains(&name.as_str()) {
            return Err(Error::InvalidConfig(format!(
                "scorer name {name:?} is a built-in scorer"
            )));
        }
        if name.is_empty() {
            return Err(Error::InvalidConfig("a scorer name must not be empty".into()));
        }
        self.user.insert(name, scorer);
        Ok(self)
    }

    /// Builds the scorer that `spec` names (`"exact"` or
    /// `{"name": "numeric", "tolerance": 0.01}`) for a case expecting
    /// `expected`, checking both. Returns the scorer's name and the scorer.
    pub fn prepare(
        &self,
        spec: &JsonValue,
        expected: &JsonValue,
    ) -> std::result::Result<(String, Arc<dyn Scorer>), SpecError> {
        let (name, params) = match spec {
            JsonValue::String(s) => (s.clone(), serde_json::Map::new()),
            JsonValue::Object(o) => {
                let name = match o.get("name") {
                    Some(JsonValue::String(s)) => s.clone(),
                    Some(_) => return Err(spec_err("scorer.name", "must be a string")),
                    None => return Err(spec_err("scorer.name", "missing")),
                };
                let mut params = o.clone();
                params.remove("name");
                (name, params)
            }
            _ => {
                return Err(spec_err(
                    "scorer",
                    "must be a scorer name or an object with a name",
                ))
            }
        };
        let known = |allowed: &[&str]| -> std::result::Result<(), SpecError> {
            match params.keys().find(|k| !allowed.contains(&k.as_str())) {
                Some(k) => Err(spec_err(
                    &format!("scorer.{k}"),
                    format!("unknown parameter of scorer {name:?}"),
                )),
                None => Ok(()),
            }
        };
        let ignore_case = || -> std::result::Result<bool, SpecError> {
            match params.get("ignore_case") {
                None => Ok(false),
                Some(JsonValue::Bool(b)) => Ok(*b),
                Some(_) => Err(spec_err("scorer.ignore_case", "must be true or false")),
            }
        };
        let scorer: Arc<dyn Scorer> = match name.as_str() {
            "exact" => {
                known(&["ignore_case"])?;
                Arc::new(Exact {
                    ignore_case: ignore_case()?,
                })
            }
            "contains" => {
                known(&["ignore_case"])?;
                let ok = match expected {
                    JsonValue::String(_) => true,
                    JsonValue::Array(a) => !a.is_empty() && a.iter().all(JsonValue::is_string),
                    _ => false,
                };
                if !ok {
                    return Err(spec_err(
                        "expected",
                        "the contains scorer expects a string or a non-empty array of strings",
                    ));
                }
                Arc::new(Contains {
                    ignore_case: ignore_case()?,
                })
            }
            "regex" => {
                known(&[])?;
                let JsonValue::String(p) = expected else {
                    return Err(spec_err("expected", "the regex scorer expects a pattern string"));
                };
                let re = regex::RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| spec_err("expected", format!("invalid regex: {e}")))?;
                Arc::new(RegexMatch(re))
            }
            "json_fields" => {
                known(&[])?;
                let JsonValue::Object(o) = expected else {
                    return Err(spec_err(
                        "expected",
                        "the json_fields scorer expects an object of JSON pointers to values",
                    ));
                };
                if o.is_empty() {
                    return Err(spec_err("expected", "names no field"));
                }
                if let Some(k) = o.keys().find(|k| !k.is_empty() && !k.starts_with('/')) {
                    return Err(spec_err(
                        "expected",
                        format!("{k:?} is not a JSON pointer (starts with '/')"),
                    ));
                }
                Arc::new(JsonFields)
            }
            "json_schema" => {
                known(&[])?;
                check_schema(expected, "").map_err(|m| spec_err("expected", m))?;
                Arc::new(JsonSchema)
            }
            "numeric" => {
                known(&["tolerance", "relative"])?;
                if !expected.is_number() {
                    return Err(spec_err("expected", "the numeric scorer expects a number"));
                }
                let num = |k: &str| -> std::result::Result<f64, SpecError> {
                    match params.get(k) {
                        None => Ok(0.0),
                        Some(v) => match v.as_f64() {
                            Some(x) if x >= 0.0 && x.is_finite() => Ok(x),
                            _ => Err(spec_err(&format!("scorer.{k}"), "must be a number ≥ 0")),
                        },
                    }
                };
                Arc::new(Numeric {
                    tolerance: num("tolerance")?,
                    relative: num("relative")?,
                })
            }
            "embedding" => {
                known(&[])?;
                let Some(embedder) = &self.embedder else {
                    return Err(spec_err(
                        "scorer",
                        "the embedding scorer needs an embedder (ScorerRegistry::embedder)",
                    ));
                };
                if !expected.is_string() {
                    return Err(spec_err("expected", "the embedding scorer expects a string"));
                }
                Arc::new(EmbeddingSimilarity {
                    embedder: embedder.clone(),
                })
            }
            other => match self.user.get(other) {
                Some(s) => {
                    known(&[])?;
                    s.clone()
                }
                None => {
                    let mut names: Vec<&str> = BUILTIN_SCORERS.to_vec();
                    names.extend(self.user.keys().map(String::as_str));
                    return Err(spec_err(
                        "scorer",
                        format!("unknown scorer {other:?} (known: {})", names.join(", ")),
                    ));
                }
            },
        };
        Ok((name, scorer))
    }
}

#[derive(Debug)]
struct Exact {
    ignore_case: bool,
}

#[async_trait]
impl Scorer for Exact {
    async fn score(&self, expected: &JsonValue, actual: &JsonValue) -> Result<Score> {
        let equal = match (expected, actual) {
            (JsonValue::String(e), JsonValue::String(a)) if self.ignore_case => {
                e.trim().to_lowercase() == a.trim().to_lowercase()
            }
            (JsonValue::String(e), JsonValue::String(a)) => e.trim() == a.trim(),
            (e, a) => e == a,
        };
        Ok(if equal {
            Score::new(1.0)
        } else {
            Score::with_note(
                0.0,
                format!("expected {}, got {}", short(expected), short(actual)),
            )
        })
    }
}

#[derive(Debug)]
struct Contains {
    ignore_case: bool,
}

#[async_trait]
impl Scorer for Contains {
    async fn score(&self, expected: &JsonValue, actual: &JsonValue) -> Result<Score> {
        let fold = |s: String| if self.ignore_case { s.to_lowercase() } else { s };
        let text = fold(text_of(actual));
        let needles: Vec<String> = match expected {
            JsonValue::Array(a) => a.iter().map(text_of).collect(),
            other => vec![text_of(other)],
        };
        let missing: Vec<&String> = needles
            .iter()
            .filter(|n| !text.contains(&fold((*n).clone())))
            .collect();
        let value = 1.0 - missing.len() as f64 / needles.len().max(1) as f64;
        Ok(if missing.is_empty() {
            Score::new(value)
        } else {
            Score::with_note(value, format!("missing {missing:?}"))
        })
    }
}

#[derive(Debug)]
struct RegexMatch(Regex);

#[async_trait]
impl Scorer for RegexMatch {
    async fn score(&self, _expected: &JsonValue, actual: &JsonValue) -> Result<Score> {
        Ok(if self.0.is_match(&text_of(actual)) {
            Score::new(1.0)
        } else {
            Score::with_note(
                0.0,
                format!("{} does not match /{}/", short(actual), self.0.as_str()),
            )
        })
    }
}

#[derive(Debug)]
struct JsonFields;

#[async_trait]
impl Scorer for JsonFields {
    async fn score(&self, expected: &JsonValue, actual: &JsonValue) -> Result<Score> {
        let JsonValue::Object(fields) = expected else {
            return Err(Error::invalid_input("json_fields expects an object"));
        };
        let wrong: Vec<&String> = fields
            .iter()
            .filter(|(ptr, want)| actual.pointer(ptr) != Some(*want))
            .map(|(ptr, _)| ptr)
            .collect();
        let value = 1.0 - wrong.len() as f64 / fields.len().max(1) as f64;
        Ok(if wrong.is_empty() {
            Score::new(value)
        } else {
            Score::with_note(value, format!("fields differ: {wrong:?}"))
        })
    }
}

#[derive(Debug)]
struct JsonSchema;

#[async_trait]
impl Scorer for JsonSchema {
    async fn score(&self, expected: &JsonValue, actual: &JsonValue) -> Result<Score> {
        let mut errors = Vec::new();
        validate(expected, actual, "", &mut errors);
        Ok(if errors.is_empty() {
            Score::new(1.0)
        } else {
            errors.truncate(5);
            Score::with_note(0.0, errors.join("; "))
        })
    }
}

#[derive(Debug)]
struct Numeric {
    tolerance: f64,
    relative: f64,
}

#[async_trait]
impl Scorer for Numeric {
    async fn score(&self, expected: &JsonValue, actual: &JsonValue) -> Result<Score> {
        let want = expected.as_f64().unwrap_or(f64::NAN);
        let got = match actual {
            JsonValue::Number(n) => n.as_f64(),
            JsonValue::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let Some(got) = got else {
            return Ok(Score::with_note(
                0.0,
                format!("{} is not a number", short(actual)),
            ));
        };
        let diff = (got - want).abs();
        let ok = diff <= self.tolerance || diff <= self.relative * want.abs();
        Ok(if ok {
            Score::new(1.0)
        } else {
            Score::with_note(0.0, format!("expected {want}, got {got} (off by {diff})"))
        })
    }
}

#[derive(Debug)]
struct EmbeddingSimilarity {
    embedder: Arc<dyn Embedder>,
}

#[async_trait]
impl Scorer for EmbeddingSimilarity {
    async fn score(&self, expected: &JsonValue, actual: &JsonValue) -> Result<Score> {
        let texts = vec![text_of(expected), text_of(actual)];
        let v = self.embedder.embed(&texts).await?;
        match (v.first(), v.get(1)) {
            (Some(a), Some(b)) => Ok(Score::new(cosine(a, b))),
            _ => Err(Error::invalid_input(
                "the embedder returned fewer vectors than texts",
            )),
        }
    }

    fn default_threshold(&self) -> f64 {
        0.8
    }
}

/// The `embedding` scorer on its own (for example as a shadow comparison):
/// cosine similarity of the two texts' embeddings.
pub fn embedding_similarity(embedder: Arc<dyn Embedder>) -> Arc<dyn Scorer> {
    Arc::new(EmbeddingSimilarity { embedder })
}

/// Cosine similarity of two vectors (0 when either is zero or they differ
/// in length).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

fn short(v: &JsonValue) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let head: String = s.chars().take(77).collect();
        format!("{head}...")
    } else {
        s
    }
}

const SCHEMA_KEYWORDS: [&str; 15] = [
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "title",
    "description",
];

/// Checks that a schema uses only the supported keywords.
fn check_schema(schema: &JsonValue, at: &str) -> std::result::Result<(), String> {
    let JsonValue::Object(o) = schema else {
        return Err(format!("schema at {at:?} must be an object"));
    };
    for (k, v) in o {
        if !SCHEMA_KEYWORDS.contains(&k.as_str()) {
            return Err(format!("unsupported JSON Schema keyword {k:?} at {at:?}"));
        }
        match k.as_str() {
            "properties" => {
                let JsonValue::Object(props) = v else {
                    return Err(format!("properties at {at:?} must be an object"));
                };
                for (name, sub) in props {
                    check_schema(sub, &format!("{at}/properties/{name}"))?;
                }
            }
            "items" => check_schema(v, &format!("{at}/items"))?,
            "type" => {
                let ok = |t: &JsonValue| {
                    matches!(
                        t.as_str(),
                        Some("object" | "array" | "string" | "number" | "integer" | "boolean" | "null")
                    )
                };
                let valid = match v {
                    JsonValue::Array(ts) => ts.iter().all(ok),
                    t => ok(t),
                };
                if !valid {
                    return Err(format!("unknown type {v} at {at:?}"));
                }
            }
            "additionalProperties" if !v.is_boolean() => {
                return Err(format!("additionalProperties at {at:?} must be a boolean"));
            }
            _ => {}
        }
    }
    Ok(())
}

fn type_matches(t: &str, v: &JsonValue) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

fn validate(schema: &JsonValue, v: &JsonValue, at: &str, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else { return };
    if let Some(t) = s.get("type") {
        let ok = match t {
            JsonValue::Array(ts) => ts
                .iter()
                .filter_map(JsonValue::as_str)
                .any(|t| type_matches(t, v)),
            t => t.as_str().is_some_and(|t| type_matches(t, v)),
        };
        if !ok {
            errors.push(format!("{at}: not of type {t}"));
            return;
        }
    }
    if let Some(JsonValue::Array(allowed)) = s.get("enum") {
        if !allowed.contains(v) {
            errors.push(format!("{at}: not one of the enum values"));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errors.push(format!("{at}: not {c}"));
        }
    }
    let bound = |k: &str| s.get(k).and_then(JsonValue::as_f64);
    if let Some(x) = v.as_f64() {
        if bound("minimum").is_some_and(|m| x < m) || bound("maximum").is_some_and(|m| x > m) {
            errors.push(format!("{at}: {x} out of range"));
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as f64;
        if bound("minLength").is_some_and(|m| n < m) || bound("maxLength").is_some_and(|m| n > m) {
            errors.push(format!("{at}: length {n} out of range"));
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as f64;
        if bound("minItems").is_some_and(|m| n < m) || bound("maxItems").is_some_and(|m| n > m) {
            errors.push(format!("{at}: {n} items out of range"));
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(item_schema, item, &format!("{at}/{i}"), errors);
            }
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(JsonValue::Array(req)) = s.get("required") {
            for r in req.iter().filter_map(JsonValue::as_str) {
                if !obj.contains_key(r) {
                    errors.push(format!("{at}: missing required {r:?}"));
                }
            }
        }
        let props = s.get("properties").and_then(JsonValue::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate(sub, val, &format!("{at}/{k}"), errors),
                None if s.get("additionalProperties") == Some(&JsonValue::Bool(false)) => {
                    errors.push(format!("{at}: unexpected property {k:?}"));
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    async fn run(spec: JsonValue, expected: JsonValue, actual: JsonValue) -> f64 {
        let (_, s) = ScorerRegistry::new().prepare(&spec, &expected).expect("spec");
        s.score(&expected, &actual).await.expect("score").value
    }

    #[tokio::test]
    async fn builtins_score() {
        assert_eq!(run(json!("exact"), json!("Paris"), json!(" Paris\n")).await, 1.0);
        assert_eq!(run(json!("exact"), json!("Paris"), json!("paris")).await, 0.0);
        assert_eq!(
            run(
                json!({"name":"exact","ignore_case":true}),
                json!("Paris"),
                json!("paris")
            )
            .await,
            1.0
        );
        assert_eq!(run(json!("contains"), json!(["a", "b"]), json!("xa")).await, 0.5);
        assert_eq!(run(json!("regex"), json!("^\\d+$"), json!("123")).await, 1.0);
        assert_eq!(run(json!("regex"), json!("^\\d+$"), json!(123)).await, 1.0);
        assert_eq!(
            run(
                json!("json_fields"),
                json!({"/a/b": 1, "/c": "x"}),
                json!({"a": {"b": 1}, "c": "y"})
            )
            .await,
            0.5
        );
        let schema =
            json!({"type":"object","required":["n"],"properties":{"n":{"type":"integer","minimum":0}}});
        assert_eq!(
            run(json!("json_schema"), schema.clone(), json!({"n": 3})).await,
            1.0
        );
        assert_eq!(run(json!("json_schema"), schema, json!({"n": -1})).await, 0.0);
        assert_eq!(
            run(json!({"name":"numeric","tolerance":0.1}), json!(1.0), json!(1.05)).await,
            1.0
        );
        assert_eq!(
            run(
                json!({"name":"numeric","relative":0.01}),
                json!(100),
                json!("102")
            )
            .await,
            0.0
        );
    }

    #[test]
    fn bad_specs_name_the_field() {
        let r = ScorerRegistry::new();
        let e = |spec: JsonValue, expected: JsonValue| r.prepare(&spec, &expected).expect_err("refused");
        assert_eq!(e(json!("levenshtein"), json!("x")).field, "scorer");
        assert!(e(json!("levenshtein"), json!("x"))
            .message
            .contains("unknown scorer"));
        assert_eq!(e(json!("regex"), json!("(")).field, "expected");
        assert_eq!(e(json!({"name":"numeric","tol":1}), json!(1)).field, "scorer.tol");
        assert_eq!(e(json!("embedding"), json!("x")).field, "scorer");
        assert_eq!(e(json!("json_schema"), json!({"oneOf": []})).field, "expected");
    }
}
