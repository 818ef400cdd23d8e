//! In-process [`SessionStore`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentscale_core::{Error, Result, SessionKey, SessionState, SessionStore};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Default TTL of a session: 24 hours after its last write.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default cap on a session's history entries.
pub const DEFAULT_HISTORY_CAP: usize = 1_000;

/// Expired entries are swept from the map once every this many writes.
const SWEEP_EVERY: u64 = 4_096;

/// Session state held in this process: versioned compare-and-set, TTL on every
/// write, capped append-only history and tombstoned deletes, exactly as the
/// [`SessionStore`] contract says.
///
/// State lives only as long as the process; use it for tests, demos and
/// single-process deployments. Several workers in different processes need a
/// shared store (`agentscale_state::redis::RedisSessionStore`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> agentscale_core::Result<()> {
/// use agentscale_core::{SessionKey, SessionStore};
/// use agentscale_state::local::LocalSessionStore;
///
/// let store = LocalSessionStore::builder().build()?;
/// let key = SessionKey::new("acme", "chat-1")?;
/// let v1 = store.put(&key, 0, "{\"step\":1}".into()).await?; // create
/// assert_eq!(v1, 1);
/// assert!(store.put(&key, 0, "{}".into()).await.is_err()); // stale writer: Conflict
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LocalSessionStore {
    sessions: Mutex<HashMap<SessionKey, Entry>>,
    ttl: Duration,
    history_cap: usize,
    refresh_on_read: bool,
    writes: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    version: u64,
    data: Option<Bytes>,
    history: VecDeque<Bytes>,
    tombstone: bool,
    expires_at: Instant,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at > now
    }
}

/// Builder for [`LocalSessionStore`].
#[derive(Debug, Clone)]
pub struct LocalSessionStoreBuilder {
    ttl: Duration,
    history_cap: usize,
    refresh_on_read: bool,
}

impl Default for LocalSessionStoreBuilder {
    fn default() -> Self {
        LocalSessionStoreBuilder {
            ttl: DEFAULT_SESSION_TTL,
            history_cap: DEFAULT_HISTORY_CAP,
            refresh_on_read: false,
        }
    }
}

impl LocalSessionStoreBuilder {
    /// How long a session (and a tombstone) lives after its last write
    /// (default [`DEFAULT_SESSION_TTL`]). Must be greater than zero.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Most history entries kept per session; older ones drop off (default
    /// [`DEFAULT_HISTORY_CAP`]). Must be greater than zero.
    pub fn history_cap(mut self, cap: usize) -> Self {
        self.history_cap = cap;
        self
    }

    /// Whether reads (`get`, `history`) also restart the TTL (default false).
    pub fn refresh_on_read(mut self, refresh: bool) -> Self {
        self.refresh_on_read = refresh;
        self
    }

    /// Validates and builds: a zero TTL or a zero history cap is
    /// [`Error::InvalidConfig`].
    pub fn build(self) -> Result<LocalSessionStore> {
        if self.ttl.is_zero() {
            return Err(Error::InvalidConfig(
                "session ttl must be greater than zero".into(),
            ));
        }
        if self.history_cap == 0 {
            return Err(Error::InvalidConfig(
                "session history_cap must be greater than zero".into(),
            ));
        }
        Ok(LocalSessionStore {
            sessions: Mutex::new(HashMap::new()),
            ttl: self.ttl,
            history_cap: self.history_cap,
            refresh_on_read: self.refresh_on_read,
            writes: AtomicU64::new(0),
        })
    }
}

impl LocalSessionStore {
    /// A builder with the defaults (24 h TTL, 1000 history entries, no refresh on read).
    pub fn builder() -> LocalSessionStoreBuilder {
        LocalSessionStoreBuilder::default()
    }

    /// The TTL applied on every write.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The history cap.
    pub fn history_cap(&self) -> usize {
        self.history_cap
    }

    /// Number of entries held, including tombstones and not yet swept expired ones.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether no entries are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn note_write(&self, map: &mut HashMap<SessionKey, Entry>, now: Instant) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            map.retain(|_, e| e.live(now));
        }
    }
}

#[async_trait]
impl SessionStore for LocalSessionStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<SessionState>> {
        let now = Instant::now();
        let mut map = self.sessions.lock();
        let Some(entry) = map.get_mut(key) else {
            return Ok(None);
        };
        if !entry.live(now) || entry.tombstone {
            return Ok(None);
        }
        let Some(data) = entry.data.clone() else {
            return Ok(None);
        };
        if self.refresh_on_read {
            entry.expires_at = now + self.ttl;
        }
        Ok(Some(SessionState {
            version: entry.version,
            data,
        }))
    }

    async fn put(&self, key: &SessionKey, expected_version: u64, data: Bytes) -> Result<u64> {
        let now = Instant::now();
        let mut map = self.sessions.lock();
        self.note_write(&mut map, now);
        let entry = writable_entry(&mut map, key, now)?;
        if entry.version != expected_version {
            return Err(Error::Conflict(format!(
                "{key:?} is at version {}, the writer expected {expected_version}",
                entry.version
            )));
        }
        entry.version += 1;
        entry.data = Some(data);
        entry.expires_at = now + self.ttl;
        Ok(entry.version)
    }

    async fn append(&self, key: &SessionKey, item: Bytes) -> Result<u64> {
        let now = Instant::now();
        let mut map = self.sessions.lock();
        self.note_write(&mut map, now);
        let entry = writable_entry(&mut map, key, now)?;
        entry.history.push_back(item);
        while entry.history.len() > self.history_cap {
            entry.history.pop_front();
        }
        entry.expires_at = now + self.ttl;
        Ok(entry.history.len() as u64)
    }

    async fn history(&self, key: &SessionKey, limit: usize) -> Result<Vec<Bytes>> {
        let now = Instant::now();
        let mut map = self.sessions.lock();
        let Some(entry) = map.get_mut(key) else {
            return Ok(Vec::new());
        };
        if !entry.live(now) || entry.tombstone {
            return Ok(Vec::new());
        }
        if self.refresh_on_read {
            entry.expires_at = now + self.ttl;
        }
        let skip = entry.history.len().saturating_sub(limit);
        Ok(entry.history.iter().skip(skip).cloned().collect())
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let now = Instant::now();
        let mut map = self.sessions.lock();
        self.note_write(&mut map, now);
        if map.get(key).is_some_and(|old| old.live(now) && old.tombstone) {
            // Already deleted: the tombstone keeps its original expiry.
            return Ok(false);
        }
        let tombstone = Entry {
            version: 0,
            data: None,
            history: VecDeque::new(),
            tombstone: true,
            expires_at: now + self.ttl,
        };
        let existed = match map.insert(key.clone(), tombstone) {
            Some(old) => old.live(now) && !old.tombstone && (old.data.is_some() || !old.history.is_empty()),
            None => false,
        };
        Ok(existed)
    }
}

/// The live entry of `key` for a write: created (or reset, once expired) at
/// version 0; a tombstone refuses the write with [`Error::Conflict`].
fn writable_entry<'m>(
    map: &'m mut HashMap<SessionKey, Entry>,
    key: &SessionKey,
    now: Instant,
) -> Result<&'m mut Entry> {
    let fresh = || Entry {
        version: 0,
        data: None,
        history: VecDeque::new(),
        tombstone: false,
        expires_at: now,
    };
    let entry = map.entry(key.clone()).or_insert_with(fresh);
    if !entry.live(now) {
        *entry = fresh();
    }
    if entry.tombstone {
        return Err(Error::Conflict(format!(
            "{key:?} was deleted; a deleted session cannot be written"
        )));
    }
    Ok(entry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn invalid_config_is_refused() {
        assert!(matches!(
            LocalSessionStore::builder().ttl(Duration::ZERO).build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            LocalSessionStore::builder().history_cap(0).build(),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_on_read_extends_ttl() {
        let store = LocalSessionStore::builder()
            .ttl(Duration::from_secs(10))
            .refresh_on_read(true)
            .build()
            .unwrap();
        let key = SessionKey::new("t", "s").unwrap();
        store.put(&key, 0, Bytes::from_static(b"a")).await.unwrap();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(6)).await;
            assert!(store.get(&key).await.unwrap().is_some());
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(store.get(&key).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_tombstone_allows_recreation() {
        let store = LocalSessionStore::builder()
            .ttl(Duration::from_secs(10))
            .build()
            .unwrap();
        let key = SessionKey::new("t", "s").unwrap();
        assert_eq!(store.put(&key, 0, Bytes::from_static(b"a")).await.unwrap(), 1);
        assert!(store.delete(&key).await.unwrap());
        assert!(matches!(
            store.put(&key, 1, Bytes::from_static(b"b")).await,
            Err(Error::Conflict(_))
        ));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(store.put(&key, 0, Bytes::from_static(b"c")).await.unwrap(), 1);
    }
}
