//! The `agentscale` binary against the real Redis (`AGENTSCALE_REDIS_URL`):
//! queue stats and peek, dead letters (list, replay, purge with and without
//! confirmation, unknown ids), session inspection, exit codes and JSON.

mod common;

use std::time::Duration;

use agentscale_core::{Nack, SessionKey, SessionStore, Task, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_state::redis::{RedisSessionStore, RedisStateConfig};
use agentscale_testkit::unique_name;
use common::{agentscale, service, Run};

const PREFIX: &str = "astest-cli";

struct Fixture {
    url: String,
    name: String,
    queue: RedisQueue,
}

impl Fixture {
    async fn new(url: String) -> Fixture {
        let name = unique_name("cli");
        let cfg = RedisQueueConfig::new(url.clone(), name.clone())
            .with_key_prefix(PREFIX)
            .with_consumer_name("test-worker");
        let queue = RedisQueue::connect(cfg).await.expect("connect");
        Fixture { url, name, queue }
    }

    fn run(&self, args: &[&str], stdin: &str) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--backend", "redis", "--queue", &self.name, "--url", &self.url]);
        all.extend(["--key-prefix", PREFIX]);
        agentscale(&all, stdin)
    }

    fn stats(&self) -> serde_json::Value {
        self.run(&["--json", "queue", "stats"], "").ok().json()
    }

    /// Dead-letters `n` tasks with reasons `reason-0`, `reason-1`, ….
    async fn dead_letter(&self, n: usize) {
        for i in 0..n {
            self.queue
                .enqueue(Task::new("doomed", format!("{{\"i\":{i}}}")))
                .await
                .expect("enqueue");
            let leases = self.queue.lease(1, Duration::from_secs(2)).await.expect("lease");
            assert_eq!(leases.len(), 1);
            self.queue
                .nack(&leases[0], Nack::DeadLetter(format!("reason-{i}")))
                .await
                .expect("dead-letter");
        }
    }

    async fn cleanup(self) {
        self.queue.destroy().await.expect("destroy");
    }
}

macro_rules! redis_or_skip {
    () => {
        match service("AGENTSCALE_REDIS_URL") {
            Some(url) => Fixture::new(url).await,
            None => return,
        }
    };
}

#[tokio::test]
async fn stats_count_every_state() {
    let f = redis_or_skip!();
    for i in 0..5 {
        f.queue
            .enqueue(Task::new("ready", format!("{i}")))
            .await
            .expect("enqueue");
    }
    for i in 0..2 {
        f.queue
            .enqueue(Task::new("later", format!("{i}")).with_delay(Duration::from_secs(3600)))
            .await
            .expect("enqueue delayed");
    }
    let leased = f.queue.lease(2, Duration::from_secs(2)).await.expect("lease");
    assert_eq!(leased.len(), 2);
    let doomed = f.queue.lease(1, Duration::from_secs(2)).await.expect("lease");
    f.queue
        .nack(&doomed[0], Nack::DeadLetter("bad input".into()))
        .await
        .expect("dead-letter");

    let s = f.stats();
    assert_eq!(s["backend"], "redis");
    assert_eq!(s["queue"], f.name.as_str());
    assert_eq!(s["ready"], 2);
    assert_eq!(s["in_flight"], 2);
    assert_eq!(s["delayed"], 2);
    assert_eq!(s["dead"], 1);
    assert_eq!(s["backlog"], 4);
    assert!(s["oldest_ready_age_ms"].is_u64(), "{s}");

    // The same numbers in the table.
    let human = f.run(&["queue", "stats"], "").ok().stdout;
    let row = |name: &str| {
        human
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {name} row in {human}"))
    };
    assert_eq!(row("ready"), "2");
    assert_eq!(row("in flight"), "2");
    assert_eq!(row("delayed"), "2");
    assert_eq!(row("dead"), "1");
    f.cleanup().await;
}

#[tokio::test]
async fn peek_shows_ready_tasks_without_leasing_them() {
    let f = redis_or_skip!();
    let mut ids = Vec::new();
    for i in 0..4 {
        let t = Task::new("peekable", format!("payload-{i}"));
        ids.push(t.id.to_string());
        f.queue.enqueue(t).await.expect("enqueue");
    }
    // The first one is leased: no longer ready.
    let leased = f.queue.lease(1, Duration::from_secs(2)).await.expect("lease");
    assert_eq!(leased[0].task().id.to_string(), ids[0]);

    let all = f
        .run(&["--json", "queue", "peek", "--limit", "10"], "")
        .ok()
        .json();
    let seen: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["task"]["id"].as_str().expect("task id"))
        .collect();
    assert_eq!(seen, ids[1..].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(all[0]["task"]["payload"], "payload-1");
    let one = f
        .run(&["--json", "queue", "peek", "--limit", "1"], "")
        .ok()
        .json();
    assert_eq!(one.as_array().map(Vec::len), Some(1));

    let table = f.run(&["queue", "peek"], "").ok().stdout;
    assert!(table.starts_with("ENTRY"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    // Peeking leased nothing.
    let s = f.stats();
    assert_eq!((s["ready"].as_u64(), s["in_flight"].as_u64()), (Some(3), Some(1)));
    f.cleanup().await;
}

#[tokio::test]
async fn dead_letters_list_and_replay() {
    let f = redis_or_skip!();
    f.dead_letter(3).await;
    let list = f.run(&["--json", "dlq", "list"], "").ok().json();
    let list = list.as_array().expect("array").clone();
    assert_eq!(list.len(), 3);
    let reasons: Vec<&str> = list
        .iter()
        .map(|d| d["reason"].as_str().expect("reason"))
        .collect();
    assert_eq!(reasons, ["reason-0", "reason-1", "reason-2"]);
    assert_eq!(list[0]["task"]["kind"], "doomed");
    let table = f.run(&["dlq", "list"], "").ok().stdout;
    assert!(table.contains("reason-1") && table.starts_with("ID"), "{table}");

    let id = list[1]["id"].as_str().expect("id").to_string();
    let replayed = f.run(&["--json", "dlq", "replay", &id], "").ok().json();
    assert_eq!(replayed["replayed"], id.as_str());
    let s = f.stats();
    assert_eq!((s["dead"].as_u64(), s["ready"].as_u64()), (Some(2), Some(1)));
    let back = f.queue.lease(1, Duration::from_secs(2)).await.expect("lease");
    assert_eq!(
        back[0].task().id.to_string(),
        list[1]["task"]["id"].as_str().expect("task id")
    );
    assert_eq!(back[0].attempt(), 1, "attempts reset");

    // Replaying it again, or an id that never existed: exit 2, nothing changed.
    for unknown in [id.as_str(), "1-0", "not-an-id"] {
        let r = f.run(&["dlq", "replay", unknown], "");
        assert_eq!(r.code, 2, "{unknown}: {r:?}");
        assert!(r.stderr.contains("nothing changed"), "{r:?}");
    }
    let r = f.run(&["--json", "dlq", "replay", "1-0"], "");
    assert_eq!(r.code, 2);
    let err: serde_json::Value = serde_json::from_str(r.stderr.trim()).expect("JSON error");
    assert_eq!(err["kind"], "usage");
    assert_eq!(f.stats()["dead"], 2);
    f.cleanup().await;
}

#[tokio::test]
async fn purge_needs_confirmation() {
    let f = redis_or_skip!();
    f.dead_letter(2).await;
    // No --yes and nothing typed, or the wrong name typed: exit 2, nothing deleted.
    for typed in ["", "y\n", "yes\n", "another-queue\n"] {
        let r = f.run(&["dlq", "purge"], typed);
        assert_eq!(r.code, 2, "typed {typed:?}: {r:?}");
        assert!(r.stderr.contains("not confirmed"), "{r:?}");
        assert_eq!(f.stats()["dead"], 2, "typed {typed:?}");
    }
    // The queue name typed: purged.
    let typed = format!("{}\n", f.name);
    let r = f.run(&["--json", "dlq", "purge"], &typed).ok().json();
    assert_eq!(r["purged"], 2);
    assert_eq!(f.stats()["dead"], 0);
    // --yes purges without asking.
    f.dead_letter(1).await;
    let r = f.run(&["dlq", "purge", "--yes"], "").ok();
    assert!(r.stdout.contains("purged 1 dead letters"), "{r:?}");
    let list = f.run(&["--json", "dlq", "list"], "").ok().json();
    assert_eq!(list, serde_json::json!([]));
    f.cleanup().await;
}

#[tokio::test]
async fn session_inspect_reads_the_session_store() {
    let Some(url) = service("AGENTSCALE_REDIS_URL") else {
        return;
    };
    let prefix = unique_name("astest-cli-session");
    let store =
        RedisSessionStore::connect(RedisStateConfig::new(url.as_str()).with_key_prefix(prefix.as_str()))
            .await
            .expect("store");
    let key = SessionKey::new("acme", "s-42").expect("key");
    let v = store.put(&key, 0, "{\"step\":3}".into()).await.expect("put");
    for turn in ["hello", "world"] {
        store.append(&key, turn.into()).await.expect("append");
    }
    let run = |id: &str| {
        agentscale(
            &[
                "--json",
                "session",
                "inspect",
                id,
                "--url",
                &url,
                "--key-prefix",
                &prefix,
            ],
            "",
        )
    };
    let s = run("acme/s-42").ok().json();
    assert_eq!(s["version"], v);
    assert_eq!(s["data"], "{\"step\":3}");
    assert_eq!(s["history"], serde_json::json!(["hello", "world"]));
    let missing = run("acme/nope");
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("no session acme/nope"), "{missing:?}");
    let bad = run("no-slash");
    assert_eq!(bad.code, 2, "{bad:?}");
    store.delete(&key).await.expect("delete");
}

#[tokio::test]
async fn an_unknown_queue_is_refused_and_not_created() {
    let Some(url) = service("AGENTSCALE_REDIS_URL") else {
        return;
    };
    let name = unique_name("cli-typo");
    for args in [
        &["queue", "stats"][..],
        &["dlq", "list"][..],
        &["dlq", "purge", "--yes"][..],
    ] {
        let mut all = args.to_vec();
        all.extend([
            "--backend",
            "redis",
            "--queue",
            &name,
            "--url",
            &url,
            "--key-prefix",
            PREFIX,
        ]);
        let r = agentscale(&all, "");
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("has no keys under prefix"), "{r:?}");
    }
    // Nothing was created for the typo.
    let keys = agentscale_queue::redis::RedisQueueKeys::new(PREFIX, &name);
    let client = redis::Client::open(url.as_str()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let n: i64 = redis::cmd("EXISTS")
        .arg(&keys.streams[..])
        .arg(&keys.delayed)
        .arg(&keys.dead)
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert_eq!(n, 0);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_runtime_error() {
    let r = agentscale(
        &[
            "queue",
            "stats",
            "--backend",
            "redis",
            "--queue",
            "q",
            "--url",
            "redis://127.0.0.1:1",
            "--timeout",
            "2s",
        ],
        "",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.starts_with("error:"), "{r:?}");
}

#[test]
fn usage_errors_exit_2() {
    // Unknown subcommand, missing --queue, unknown backend.
    for args in [
        vec!["queue", "frobnicate"],
        vec!["queue", "stats", "--backend", "redis"],
        vec!["queue", "stats", "--backend", "mongo", "--queue", "q"],
    ] {
        let r = agentscale(&args, "");
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
    }
}
