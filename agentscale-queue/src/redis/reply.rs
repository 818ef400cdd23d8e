//! Parsing of Redis replies into stream entries.

use agentscale_core::queue::Lease;
use agentscale_core::{Error, Result};
use redis::Value;

/// One stream entry handed out by the lease script or a blocking read.
pub(super) struct RawEntry {
    pub(super) prio: usize,
    pub(super) id: String,
    pub(super) deliveries: u64,
    pub(super) raw: bool,
    pub(super) payload: Vec<u8>,
}

pub(super) fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d as i64),
        _ => None,
    }
}

pub(super) fn value_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn value_string(v: Value) -> Option<String> {
    value_bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub(super) fn bad_reply(what: &str) -> Error {
    Error::Backend {
        message: format!("redis {what}: unexpected reply shape"),
        source: None,
    }
}

/// A parsed lease receipt: `<prio>:<entry id>` on a queue of one shard,
/// `<shard>:<prio>:<entry id>` on a sharded one (stream ids hold no `:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Receipt<'a> {
    pub(super) shard: usize,
    pub(super) prio: usize,
    pub(super) id: &'a str,
}

pub(super) fn parse_receipt(lease: &Lease) -> Result<Receipt<'_>> {
    let r = lease.receipt();
    let bad = || Error::InvalidInput(format!("lease receipt {r:?} was not issued by a redis queue"));
    let (head, id) = r.rsplit_once(':').ok_or_else(bad)?;
    let (shard, p) = match head.split_once(':') {
        Some((s, p)) => (s.parse::<usize>().map_err(|_| bad())?, p),
        None => (0, head),
    };
    let prio: usize = p.parse().map_err(|_| bad())?;
    if prio > 2 || id.is_empty() {
        return Err(bad());
    }
    Ok(Receipt { shard, prio, id })
}

/// Parsed stream entry fields as (name, value) pairs.
pub(super) fn entry_fields(v: Value) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Value::Array(items) = v {
        let mut it = items.into_iter();
        while let (Some(k), Some(val)) = (it.next(), it.next()) {
            if let (Some(k), Some(val)) = (value_string(k), value_bytes(val)) {
                out.push((k, val));
            }
        }
    } else if let Value::Map(pairs) = v {
        for (k, val) in pairs {
            if let (Some(k), Some(val)) = (value_string(k), value_bytes(val)) {
                out.push((k, val));
            }
        }
    }
    out
}
