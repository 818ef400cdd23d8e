//! One shared pub/sub connection that wakes waiters on per-key channels.
//!
//! A waiter registers its interest, then subscribes (the server's
//! acknowledgement means every later `PUBLISH` reaches us), then checks the
//! value it waits for, then sleeps: no wake-up is lost between check and
//! sleep, and nothing polls in a tight loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Error, Result};
use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use tokio::sync::Notify;

use super::redis_error;

type Waiters = Arc<Mutex<HashMap<String, (Arc<Notify>, usize)>>>;

/// The shared subscriber; reconnects lazily after its connection drops.
pub(crate) struct Wakeups {
    client: redis::Client,
    connect_timeout: Duration,
    live: tokio::sync::Mutex<Option<Live>>,
}

#[derive(Clone)]
struct Live {
    sink: PubSubSink,
    waiters: Waiters,
    alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeups").finish_non_exhaustive()
    }
}

/// Interest in one channel; unsubscribes when the last one is dropped.
pub(crate) struct Subscription {
    pub(crate) notify: Arc<Notify>,
    channel: String,
    live: Live,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut w = self.live.waiters.lock();
            match w.get_mut(&self.channel) {
                Some((_, n)) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    w.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if last && self.live.alive.load(Ordering::Acquire) {
            let mut sink = self.live.sink.clone();
            let channel = std::mem::take(&mut self.channel);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = sink.unsubscribe(channel).await;
                });
            }
        }
    }
}

impl Wakeups {
    pub(crate) fn new(client: redis::Client, connect_timeout: Duration) -> Self {
        Wakeups {
            client,
            connect_timeout,
            live: tokio::sync::Mutex::new(None),
        }
    }

    async fn live(&self) -> Result<Live> {
        let mut slot = self.live.lock().await;
        if let Some(l) = slot.as_ref() {
            if l.alive.load(Ordering::Acquire) {
                return Ok(l.clone());
            }
        }
        let pubsub = tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| Error::Unavailable {
                message: "redis pub/sub connect timed out".into(),
                source: None,
            })?
            .map_err(|e| redis_error("pub/sub connect", e))?;
        let (sink, mut stream) = pubsub.split();
        let live = Live {
            sink,
            waiters: Waiters::default(),
            alive: Arc::new(AtomicBool::new(true)),
        };
        let (waiters, alive) = (live.waiters.clone(), live.alive.clone());
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let n = waiters.lock().get(msg.get_channel_name()).map(|(n, _)| n.clone());
                if let Some(n) = n {
                    n.notify_waiters();
                }
            }
            // Connection gone: wake everyone so they re-check and resubscribe.
            alive.store(false, Ordering::Release);
            let all: Vec<_> = waiters.lock().values().map(|(n, _)| n.clone()).collect();
            for n in all {
                n.notify_waiters();
            }
        });
        *slot = Some(live.clone());
        Ok(live)
    }

    /// Subscribes to `channel`. Create `notify.notified()` and `enable` it
    /// before checking the awaited value; a `PUBLISH` after this returns
    /// wakes it.
    pub(crate) async fn subscribe(&self, channel: String) -> Result<Subscription> {
        let live = self.live().await?;
        let (notify, first) = {
            let mut w = live.waiters.lock();
            let e = w
                .entry(channel.clone())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            e.1 += 1;
            (e.0.clone(), e.1 == 1)
        };
        let sub = Subscription {
            notify,
            channel: channel.clone(),
            live: live.clone(),
        };
        // Subscribing again when others already are is harmless and makes
        // sure an unsubscribe from a just-dropped waiter is overridden.
        let _ = first;
        let mut sink = live.sink.clone();
        sink.subscribe(&channel)
            .await
            .map_err(|e| redis_error("subscribe", e))?;
        Ok(sub)
    }

    /// True while the subscription's connection is up.
    pub(crate) fn is_alive(sub: &Subscription) -> bool {
        sub.live.alive.load(Ordering::Acquire)
    }
}

/// Waits for `check` to return `Some`, woken by `channel`, up to `timeout`.
/// A slow safety re-check (every `recheck`) covers a dropped connection.
pub(crate) async fn wait_for<T, F, Fut>(
    wakeups: &Wakeups,
    channel: String,
    timeout: Duration,
    recheck: Duration,
    mut check: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut sub = wakeups.subscribe(channel.clone()).await?;
    loop {
        let notify = sub.notify.clone();
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = check().await? {
            return Ok(Some(v));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let _ = tokio::time::timeout_at((now + recheck).min(deadline), notified).await;
        if !Wakeups::is_alive(&sub) {
            // Give a restarting server a moment before resubscribing.
            let pause = Duration::from_millis(100)
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            tokio::time::sleep(pause).await;
            sub = wakeups.subscribe(channel.clone()).await?;
        }
    }
}
