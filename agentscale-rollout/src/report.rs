//! The evaluation report, its comparison with a baseline, the gate verdict,
//! and the JSON and JUnit XML writers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use agentscale_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The result of one golden case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CaseResult {
    /// The case id.
    pub id: String,
    /// The case's tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The scorer's name.
    pub scorer: String,
    /// `score >= threshold` and the target did not fail.
    pub passed: bool,
    /// `0..=1` (0 when the target failed).
    pub score: f64,
    /// The case's threshold.
    pub threshold: f64,
    /// The case's weight.
    pub weight: f64,
    /// How long the target took, in milliseconds.
    pub latency_ms: f64,
    /// The target's or the scorer's error, when one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The scorer's note (what differed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The report of one run over a golden set. Three numbers are kept apart:
/// each case's pass/fail, the suite's pass rate (passed / total) and the
/// weighted mean score (Σ weight·score / Σ weight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EvalReport {
    /// The golden set's name.
    pub suite: String,
    /// Cases run.
    pub total: usize,
    /// Cases passed.
    pub passed: usize,
    /// `passed / total`.
    pub pass_rate: f64,
    /// `Σ weight·score / Σ weight`.
    pub weighted_score: f64,
    /// Wall time of the run, in milliseconds.
    pub duration_ms: f64,
    /// One entry per case, in golden-set order.
    pub cases: Vec<CaseResult>,
}

impl EvalReport {
    /// Builds the suite numbers from the case results.
    pub fn from_cases(suite: impl Into<String>, cases: Vec<CaseResult>, duration_ms: f64) -> Self {
        let total = cases.len();
        let passed = cases.iter().filter(|c| c.passed).count();
        let weight: f64 = cases.iter().map(|c| c.weight).sum();
        let weighted: f64 = cases.iter().map(|c| c.weight * c.score).sum();
        EvalReport {
            suite: suite.into(),
            total,
            passed,
            pass_rate: if total == 0 {
                0.0
            } else {
                passed as f64 / total as f64
            },
            weighted_score: if weight > 0.0 { weighted / weight } else { 0.0 },
            duration_ms,
            cases,
        }
    }

    /// The report as pretty JSON (the baseline format).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Reads a report written by [`EvalReport::to_json`] (a stored baseline).
    pub fn load_json(path: impl AsRef<Path>) -> Result<EvalReport> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidInput(format!("cannot read baseline {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::InvalidInput(format!("baseline {} is not a report: {e}", path.display())))
    }

    /// Writes the report as JUnit XML: one `<testsuite>`, one `<testcase>`
    /// per golden case, a `<failure>` for each failed case (CI systems show
    /// these per test).
    pub fn write_junit(&self, out: &mut impl Write) -> std::io::Result<()> {
        let failures = self.total - self.passed;
        writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        writeln!(
            out,
            r#"<testsuites name="{}" tests="{}" failures="{failures}" time="{:.3}">"#,
            xml(&self.suite),
            self.total,
            self.duration_ms / 1e3
        )?;
        writeln!(
            out,
            r#"  <testsuite name="{}" tests="{}" failures="{failures}" errors="0" time="{:.3}">"#,
            xml(&self.suite),
            self.total,
            self.duration_ms / 1e3
        )?;
        writeln!(out, "    <properties>")?;
        writeln!(
            out,
            r#"      <property name="pass_rate" value="{:.4}"/>"#,
            self.pass_rate
        )?;
        writeln!(
            out,
            r#"      <property name="weighted_score" value="{:.4}"/>"#,
            self.weighted_score
        )?;
        writeln!(out, "    </properties>")?;
        for c in &self.cases {
            write!(
                out,
                r#"    <testcase classname="{}" name="{}" time="{:.3}""#,
                xml(&self.suite),
                xml(&c.id),
                c.latency_ms / 1e3
            )?;
            if c.passed {
                writeln!(out, "/>")?;
                continue;
            }
            writeln!(out, ">")?;
            let why = c
                .error
                .as_deref()
                .or(c.note.as_deref())
                .unwrap_or("below threshold");
            writeln!(
                out,
                r#"      <failure message="score {:.3} &lt; threshold {:.3}" type="{}">{}</failure>"#,
                c.score,
                c.threshold,
                if c.error.is_some() { "error" } else { "score" },
                xml(why)
            )?;
            writeln!(out, "    </testcase>")?;
        }
        writeln!(out, "  </testsuite>")?;
        writeln!(out, "</testsuites>")
    }

    /// The JUnit XML as a string.
    pub fn to_junit(&self) -> String {
        let mut buf = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_junit(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Compares with a baseline run, case by case. A case regressed when it
    /// passed in the baseline and fails now, or its score dropped by more
    /// than `tolerance`.
    pub fn compare(&self, baseline: &EvalReport, tolerance: f64) -> Comparison {
        let before: BTreeMap<&str, &CaseResult> = baseline.cases.iter().map(|c| (c.id.as_str(), c)).collect();
        let now: BTreeMap<&str, &CaseResult> = self.cases.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut cmp = Comparison {
            pass_rate_delta: self.pass_rate - baseline.pass_rate,
            weighted_score_delta: self.weighted_score - baseline.weighted_score,
            ..Comparison::default()
        };
        for c in &self.cases {
            let Some(b) = before.get(c.id.as_str()) else {
                cmp.new_cases.push(c.id.clone());
                continue;
            };
            let lost_pass = b.passed && !c.passed;
            let dropped = b.score - c.score > tolerance;
            if lost_pass || dropped {
                cmp.regressions.push(Regression {
                    id: c.id.clone(),
                    baseline_score: b.score,
                    score: c.score,
                    baseline_passed: b.passed,
                    passed: c.passed,
                });
            } else if (!b.passed && c.passed) || c.score - b.score > tolerance {
                cmp.improvements.push(c.id.clone());
            }
        }
        cmp.missing_cases = baseline
            .cases
            .iter()
            .filter(|b| !now.contains_key(b.id.as_str()))
            .map(|b| b.id.clone())
            .collect();
        cmp
    }
}

/// One case that got worse than in the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    /// The case id.
    pub id: String,
    /// Its score in the baseline.
    pub baseline_score: f64,
    /// Its score now.
    pub score: f64,
    /// Whether it passed in the baseline.
    pub baseline_passed: bool,
    /// Whether it passes now.
    pub passed: bool,
}

/// A report compared with a baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Comparison {
    /// Cases that got worse, in golden-set order.
    pub regressions: Vec<Regression>,
    /// Cases that got better.
    pub improvements: Vec<String>,
    /// Cases not in the baseline.
    pub new_cases: Vec<String>,
    /// Baseline cases no longer run.
    pub missing_cases: Vec<String>,
    /// Pass rate now minus in the baseline.
    pub pass_rate_delta: f64,
    /// Weighted score now minus in the baseline.
    pub weighted_score_delta: f64,
}

/// What the gate requires of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GateConfig {
    /// Least pass rate (default 1.0: every case passes).
    pub min_pass_rate: f64,
    /// Least weighted mean score (default 0: not checked).
    pub min_weighted_score: f64,
    /// Most regressions against the baseline (default 0).
    pub max_regressions: usize,
    /// Score drop of a case that still counts as equal (default 0).
    pub regression_tolerance: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            min_pass_rate: 1.0,
            min_weighted_score: 0.0,
            max_regressions: 0,
            regression_tolerance: 0.0,
        }
    }
}

impl GateConfig {
    /// Checks the bounds (rates in `0..=1`).
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("min_pass_rate", self.min_pass_rate),
            ("min_weighted_score", self.min_weighted_score),
            ("regression_tolerance", self.regression_tolerance),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::InvalidConfig(format!(
                    "gate {name} must be in 0..=1, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// Decides a run (and its comparison with a baseline, when there is one).
    pub fn verdict(&self, report: &EvalReport, comparison: Option<&Comparison>) -> GateVerdict {
        let mut reasons = Vec::new();
        if report.pass_rate < self.min_pass_rate {
            reasons.push(format!(
                "pass rate {:.4} < {:.4} (failed: {})",
                report.pass_rate,
                self.min_pass_rate,
                report
                    .cases
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| c.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if report.weighted_score < self.min_weighted_score {
            reasons.push(format!(
                "weighted score {:.4} < {:.4}",
                report.weighted_score, self.min_weighted_score
            ));
        }
        if let Some(c) = comparison {
            if c.regressions.len() > self.max_regressions {
                let names: Vec<String> = c
                    .regressions
                    .iter()
                    .map(|r| format!("{} ({:.3} -> {:.3})", r.id, r.baseline_score, r.score))
                    .collect();
                reasons.push(format!(
                    "{} regression(s) > {} allowed: {}",
                    c.regressions.len(),
                    self.max_regressions,
                    names.join(", ")
                ));
            }
        }
        GateVerdict {
            passed: reasons.is_empty(),
            reasons,
        }
    }
}

/// The gate's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// True when every requirement held.
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub reasons: Vec<String>,
}

impl GateVerdict {
    /// The process exit code: 0 when the gate passed, 1 when it failed.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.passed)
    }
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(id: &str, score: f64) -> CaseResult {
        CaseResult {
            id: id.into(),
            tags: vec![],
            scorer: "exact".into(),
            passed: score >= 1.0,
            score,
            threshold: 1.0,
            weight: 1.0,
            latency_ms: 1.0,
            error: None,
            note: (score < 1.0).then(|| "a <b> & \"c\"".into()),
        }
    }

    #[test]
    fn numbers_comparison_and_junit() {
        let base = EvalReport::from_cases("s", vec![case("a", 1.0), case("b", 1.0), case("c", 0.0)], 5.0);
        let now = EvalReport::from_cases(
            "s",
            vec![case("a", 1.0), case("b", 0.0), case("c", 1.0), case("d", 1.0)],
            5.0,
        );
        assert_eq!(now.passed, 3);
        assert!((now.pass_rate - 0.75).abs() < 1e-9);
        let cmp = now.compare(&base, 0.0);
        assert_eq!(
            cmp.regressions.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(cmp.improvements, ["c"]);
        assert_eq!(cmp.new_cases, ["d"]);
        let v = GateConfig::default().verdict(&now, Some(&cmp));
        assert_eq!(v.exit_code(), 1);
        assert!(
            v.reasons.iter().any(|r| r.contains("b (1.000 -> 0.000)")),
            "{v:?}"
        );
        let junit = now.to_junit();
        assert!(junit.contains(r#"<testcase classname="s" name="b""#), "{junit}");
        assert!(junit.contains("a &lt;b&gt; &amp; &quot;c&quot;"), "{junit}");
        let back: EvalReport = serde_json::from_str(&now.to_json()).expect("round trip");
        assert_eq!(back, now);
    }
}
