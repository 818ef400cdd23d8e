//! Golden sets: the cases an agent version must pass, one JSON object per
//! line (JSONL).
//!
//! ```text
//! {"id": "capital-fr", "input": {"q": "capital of France?"}, "expected": "Paris", "scorer": "exact", "tags": ["geo"]}
//! {"id": "sum", "input": {"q": "2+2.5"}, "expected": 4.5, "scorer": {"name": "numeric", "tolerance": 0.01}, "weight": 2}
//! {"id": "tone", "input": {"q": "say hi"}, "expected": "hello there", "scorer": "embedding", "threshold": 0.7}
//! ```
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `id` | yes | unique name of the case (reports and regressions use it) |
//! | `input` | yes | the task payload (any JSON) |
//! | `expected` | yes | what the scorer compares with |
//! | `scorer` | no (`"exact"`) | a scorer name or `{"name": …, parameters…}` ([`crate::scorers`]) |
//! | `weight` | no (1) | weight in the suite's weighted mean score, > 0 |
//! | `threshold` | no (the scorer's default) | score the case needs to pass, `0..=1` |
//! | `tags` | no | strings, copied into the report |
//!
//! Blank lines are skipped. Anything else — a line that is not a JSON
//! object, a missing or mistyped field, an unknown field, an unknown scorer,
//! a duplicate id — is refused before anything runs with a [`GoldenError`]
//! that names the line number and the field.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use agentscale_core::Error;
use serde_json::Value as JsonValue;

use crate::scorers::{Scorer, ScorerRegistry};

/// Longest accepted line (1 MiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most cases in one golden set.
pub const MAX_CASES: usize = 100_000;

const FIELDS: [&str; 7] = ["id", "input", "expected", "scorer", "weight", "threshold", "tags"];

/// One case of a golden set.
#[derive(Clone)]
pub struct GoldenCase {
    /// Unique name.
    pub id: String,
    /// The task payload.
    pub input: JsonValue,
    /// What the scorer compares the output with.
    pub expected: JsonValue,
    /// The scorer's name.
    pub scorer_name: String,
    /// Weight in the weighted mean score.
    pub weight: f64,
    /// Score needed to pass.
    pub threshold: f64,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// 1-based line number in the file.
    pub line: usize,
    pub(crate) scorer: Arc<dyn Scorer>,
}

impl fmt::Debug for GoldenCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoldenCase")
            .field("id", &self.id)
            .field("scorer", &self.scorer_name)
            .field("weight", &self.weight)
            .field("threshold", &self.threshold)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl GoldenCase {
    /// The scorer of this case.
    pub fn scorer(&self) -> &Arc<dyn Scorer> {
        &self.scorer
    }
}

/// A loaded, checked golden set.
#[derive(Debug, Clone)]
pub struct GoldenSet {
    name: String,
    cases: Vec<GoldenCase>,
}

/// A golden set that could not be loaded: where (line, field) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenError {
    /// 1-based line number; 0 when the problem is the file as a whole.
    pub line: usize,
    /// The field at fault (`scorer`, `weight`, `scorer.tolerance`, …), when
    /// one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for GoldenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, &self.field) {
            (0, _) => write!(f, "golden set: {}", self.message),
            (l, Some(field)) => write!(f, "golden set line {l}, field `{field}`: {}", self.message),
            (l, None) => write!(f, "golden set line {l}: {}", self.message),
        }
    }
}

impl std::error::Error for GoldenError {}

impl From<GoldenError> for Error {
    fn from(e: GoldenError) -> Error {
        Error::InvalidInput(e.to_string())
    }
}

fn err(line: usize, field: Option<&str>, message: impl Into<String>) -> GoldenError {
    GoldenError {
        line,
        field: field.map(str::to_owned),
        message: message.into(),
    }
}

impl GoldenSet {
    /// Reads and checks a JSONL file; the set is named after the file stem.
    pub fn load(path: impl AsRef<Path>, scorers: &ScorerRegistry) -> Result<GoldenSet, GoldenError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(0, None, format!("cannot read {}: {e}", path.display())))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "golden".into());
        GoldenSet::parse(name, &text, scorers)
    }

    /// Parses and checks JSONL text.
    pub fn parse(
        name: impl Into<String>,
        text: &str,
        scorers: &ScorerRegistry,
    ) -> Result<GoldenSet, GoldenError> {
        let mut cases = Vec::new();
        let mut ids = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            if raw.len() > MAX_LINE_BYTES {
                return Err(err(line, None, format!("longer than {MAX_LINE_BYTES} bytes")));
            }
            if cases.len() == MAX_CASES {
                return Err(err(line, None, format!("more than {MAX_CASES} cases")));
            }
            let case = parse_case(line, raw, scorers)?;
            if !ids.insert(case.id.clone()) {
                return Err(err(line, Some("id"), format!("duplicate id {:?}", case.id)));
            }
            cases.push(case);
        }
        if cases.is_empty() {
            return Err(err(0, None, "no cases"));
        }
        Ok(GoldenSet {
            name: name.into(),
            cases,
        })
    }

    /// The set's name (reports use it as the suite name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cases, in file order.
    pub fn cases(&self) -> &[GoldenCase] {
        &self.cases
    }
}

fn parse_case(line: usize, raw: &str, scorers: &ScorerRegistry) -> Result<GoldenCase, GoldenError> {
    let value: JsonValue = serde_json::from_str(raw)
        .map_err(|e| err(line, None, format!("not valid JSON (column {}): {e}", e.column())))?;
    let JsonValue::Object(mut o) = value else {
        return Err(err(line, None, "not a JSON object"));
    };
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(err(
            line,
            Some(k),
            format!("unknown field (known: {})", FIELDS.join(", ")),
        ));
    }
    let id = match o.remove("id") {
        Some(JsonValue::String(s)) if !s.trim().is_empty() && s.len() <= 256 => s,
        Some(_) => {
            return Err(err(
                line,
                Some("id"),
                "must be a non-empty string of at most 256 bytes",
            ))
        }
        None => return Err(err(line, Some("id"), "missing")),
    };
    let input = o
        .remove("input")
        .ok_or_else(|| err(line, Some("input"), "missing"))?;
    let expected = o
        .remove("expected")
        .ok_or_else(|| err(line, Some("expected"), "missing"))?;
    let spec = o
        .remove("scorer")
        .unwrap_or_else(|| JsonValue::String("exact".into()));
    let (scorer_name, scorer) = scorers
        .prepare(&spec, &expected)
        .map_err(|e| err(line, Some(&e.field), e.message))?;
    let weight = match o.remove("weight") {
        None => 1.0,
        Some(v) => match v.as_f64() {
            Some(w) if w > 0.0 && w.is_finite() => w,
            _ => {
                return Err(err(
                    line,
                    Some("weight"),
                    format!("must be a number > 0, got {v}"),
                ))
            }
        },
    };
    let threshold = match o.remove("threshold") {
        None => scorer.default_threshold(),
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => t,
            _ => {
                return Err(err(
                    line,
                    Some("threshold"),
                    format!("must be a number in 0..=1, got {v}"),
                ))
            }
        },
    };
    let tags = match o.remove("tags") {
        None => Vec::new(),
        Some(JsonValue::Array(a)) => a
            .into_iter()
            .map(|t| match t {
                JsonValue::String(s) => Ok(s),
                other => Err(err(line, Some("tags"), format!("must be strings, got {other}"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err(line, Some("tags"), "must be an array of strings")),
    };
    Ok(GoldenCase {
        id,
        input,
        expected,
        scorer_name,
        weight,
        threshold,
        tags,
        line,
        scorer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GoldenSet, GoldenError> {
        GoldenSet::parse("t", text, &ScorerRegistry::new())
    }

    #[test]
    fn loads_cases_with_defaults() {
        let set = parse(
            "{\"id\":\"a\",\"input\":1,\"expected\":2}\n\n{\"id\":\"b\",\"input\":{},\"expected\":\"x\",\"scorer\":\"contains\",\"weight\":3,\"tags\":[\"t\"]}\n",
        )
        .expect("loads");
        assert_eq!(set.cases().len(), 2);
        assert_eq!(set.cases()[0].scorer_name, "exact");
        assert_eq!(set.cases()[0].threshold, 1.0);
        assert_eq!(set.cases()[1].weight, 3.0);
        assert_eq!(set.cases()[1].line, 3);
    }

    #[test]
    fn errors_name_line_and_field() {
        let ok = "{\"id\":\"a\",\"input\":1,\"expected\":2}\n";
        let cases: [(&str, usize, Option<&str>); 9] = [
            ("{\"id\":\"b\",\"input\":1", 2, None),
            ("[1,2]", 2, None),
            ("{\"id\":\"b\",\"expected\":1}", 2, Some("input")),
            (
                "{\"id\":\"b\",\"input\":1,\"expected\":1,\"weight\":0}",
                2,
                Some("weight"),
            ),
            (
                "{\"id\":\"b\",\"input\":1,\"expected\":1,\"threshold\":2}",
                2,
                Some("threshold"),
            ),
            (
                "{\"id\":\"b\",\"input\":1,\"expected\":1,\"scorer\":\"bleu\"}",
                2,
                Some("scorer"),
            ),
            (
                "{\"id\":\"b\",\"input\":1,\"expected\":1,\"colour\":1}",
                2,
                Some("colour"),
            ),
            ("{\"id\":\"a\",\"input\":1,\"expected\":1}", 2, Some("id")),
            (
                "{\"id\":\"b\",\"input\":1,\"expected\":1,\"tags\":[1]}",
                2,
                Some("tags"),
            ),
        ];
        for (bad, line, field) in cases {
            let e = parse(&format!("{ok}{bad}\n")).expect_err("refused");
            assert_eq!((e.line, e.field.as_deref()), (line, field), "{bad}: {e}");
            if let Some(f) = field {
                assert!(
                    e.to_string().contains(&format!("line {line}, field `{f}`")),
                    "{e}"
                );
            }
        }
        assert_eq!(parse("\n").err().map(|e| e.line), Some(0));
    }
}
