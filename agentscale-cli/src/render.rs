//! Tables for people, JSON for scripts.

use std::fmt::Write;
use std::time::Duration;

use agentscale_core::queue::{DeadLetter, Depth};
use serde_json::{json, Value};

use crate::backend::Peeked;
use crate::{Output, QueueArgs};

/// Longest reason or payload preview in a table cell.
const CELL: usize = 60;

/// Left-aligned columns separated by two spaces; cells are cut at [`CELL`].
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cut: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clip(c, CELL)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &cut {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(s, "{c:<w$}  ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for r in &cut {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

/// Two columns: name and value.
pub(crate) fn pairs(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<w$}  {v}");
    }
    out
}

fn clip(s: &str, max: usize) -> String {
    let one_line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `1.5s`, `3m 20s`, `2h 5m`.
pub(crate) fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    }
}

/// A payload as text when it is UTF-8, otherwise as hex.
pub(crate) fn preview(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => format!("0x{}", hex(&bytes[..bytes.len().min(64)])),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn ms_time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let now = agentscale_core::task::now_ms();
    format!("{} ago", age(Duration::from_millis(now.saturating_sub(ms))))
}

pub(crate) fn stats(q: &QueueArgs, d: &Depth) -> Output {
    let oldest = d.oldest_ready_age.map_or_else(|| "-".to_string(), age);
    // Kafka leases live in the worker processes; from outside they count as ready.
    let kafka = q.backend == crate::BackendKind::Kafka;
    let human = pairs(&[
        ("queue", format!("{} ({})", q.queue, q.backend.as_str())),
        ("ready", d.ready.to_string()),
        (
            "in flight",
            if kafka {
                "- (only the workers know; counted as ready)".to_string()
            } else {
                d.in_flight.to_string()
            },
        ),
        ("delayed", d.delayed.to_string()),
        ("dead", d.dead.to_string()),
        ("backlog", d.backlog().to_string()),
        ("oldest ready", oldest),
    ]);
    let json = json!({
        "backend": q.backend.as_str(),
        "queue": q.queue,
        "ready": d.ready,
        "in_flight": if kafka { None } else { Some(d.in_flight) },
        "delayed": d.delayed,
        "dead": d.dead,
        "backlog": d.backlog(),
        "oldest_ready_age_ms": d.oldest_ready_age.map(|a| a.as_millis() as u64),
    });
    Output { human, json }
}

pub(crate) fn peek(q: &QueueArgs, entries: &[Peeked]) -> Output {
    if entries.is_empty() {
        return Output {
            human: format!("no ready tasks in queue {}", q.queue),
            json: json!([]),
        };
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| match &e.task {
            Some(t) => vec![
                e.entry_id.clone(),
                format!("{:?}", e.priority).to_lowercase(),
                t.id.to_string(),
                t.kind.clone(),
                t.attempt.to_string(),
                ms_time(t.enqueued_at_ms),
                preview(&t.payload),
            ],
            None => vec![
                e.entry_id.clone(),
                format!("{:?}", e.priority).to_lowercase(),
                "-".into(),
                "(not a task envelope)".into(),
                "-".into(),
                "-".into(),
                format!("{} bytes", e.raw_len),
            ],
        })
        .collect();
    let human = table(
        &[
            "ENTRY", "PRIORITY", "TASK", "KIND", "ATTEMPT", "ENQUEUED", "PAYLOAD",
        ],
        &rows,
    );
    let json = Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({
                    "entry_id": e.entry_id,
                    "priority": format!("{:?}", e.priority).to_lowercase(),
                    "task": e.task.as_ref().map(task_json),
                    "raw_bytes": if e.task.is_none() { Some(e.raw_len) } else { None },
                })
            })
            .collect(),
    );
    Output { human, json }
}

fn task_json(t: &agentscale_core::Task) -> Value {
    json!({
        "id": t.id.to_string(),
        "kind": t.kind,
        "attempt": t.attempt,
        "max_attempts": t.max_attempts,
        "enqueued_at_ms": t.enqueued_at_ms,
        "tenant": t.tenant,
        "session_id": t.session_id,
        "payload_bytes": t.payload.len(),
        "payload": std::str::from_utf8(&t.payload).ok(),
    })
}

pub(crate) fn dead_letters(q: &QueueArgs, dead: &[DeadLetter]) -> Output {
    if dead.is_empty() {
        return Output {
            human: format!("no dead letters in queue {}", q.queue),
            json: json!([]),
        };
    }
    let rows: Vec<Vec<String>> = dead
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.task
                    .as_ref()
                    .map_or_else(|| "(raw)".to_string(), |t| t.kind.clone()),
                d.attempts.to_string(),
                ms_time(d.dead_at_ms),
                d.reason.clone(),
            ]
        })
        .collect();
    let human = table(&["ID", "KIND", "ATTEMPTS", "DEAD", "REASON"], &rows);
    let json = Value::Array(
        dead.iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "reason": d.reason,
                    "attempts": d.attempts,
                    "dead_at_ms": d.dead_at_ms,
                    "task": d.task.as_ref().map(task_json),
                    "raw_bytes": d.raw.as_ref().map(Vec::len),
                })
            })
            .collect(),
    );
    Output { human, json }
}
