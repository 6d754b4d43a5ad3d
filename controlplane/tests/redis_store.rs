//! `RedisStore` against real `redis-server` processes, one per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use s3gate_controlplane::config::{AddressingStyleConfig, Effect, Secret};
use s3gate_controlplane::credential::CredentialSpec;
use s3gate_controlplane::crypto::MasterKey;
use s3gate_controlplane::redis_store::{RedisStore, DEFAULT_PREFIX};
use s3gate_controlplane::session::{
    SessionInfo, SessionLimits, SessionLookup, SessionRecord, SessionTarget,
};
use s3gate_controlplane::state::{
    BackendRecord, BucketRecord, Change, KeyRecord, RuleRecord, State, Touched,
};
use s3gate_controlplane::store::{Notification, Store, StoreError};
use tokio::sync::broadcast;

fn master() -> MasterKey {
    MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap()
}

async fn store(redis: &RedisServer, master: &MasterKey) -> RedisStore {
    RedisStore::connect(&redis.url(), master.clone(), DEFAULT_PREFIX)
        .await
        .unwrap()
}

fn key(ak: &str) -> KeyRecord {
    KeyRecord {
        access_key: ak.into(),
        secret: Secret::new(format!("KEYSECRET-{ak}")),
        principal: "alice".into(),
        groups: vec!["admins".into()],
        created: 1_700_000_000,
    }
}

fn backend(name: &str) -> BackendRecord {
    BackendRecord {
        name: name.into(),
        endpoint: "http://127.0.0.1:9000".into(),
        region: "us-east-1".into(),
        addressing_style: AddressingStyleConfig::Path,
        credentials: CredentialSpec::StaticHmac {
            access_key: "BACKENDAK".into(),
            secret_key: Secret::new(format!("BACKENDSECRET-{name}")),
            session_token: Some(Secret::new(format!("SESSIONTOKEN-{name}"))),
        },
        ca_bundle: None,
        insecure_skip_verify: false,
        key_segment_guard: true,
        egress: Default::default(),
        limits: Default::default(),
    }
}

fn bucket(name: &str, backend: &str) -> BucketRecord {
    BucketRecord {
        name: name.into(),
        backend: backend.into(),
        backend_bucket: format!("{name}-upstream"),
        cors: Vec::new(),
        credentials: None,
    }
}

fn seed_state() -> State {
    let mut s = State::default();
    for change in [
        Change::PutKey(key("AKSEED1")),
        Change::PutKey(key("AKSEED2")),
        Change::PutRule(RuleRecord {
            id: "r001".into(),
            effect: Effect::Allow,
            principals: vec!["alice".into()],
            actions: vec!["s3:*".into()],
            resources: vec!["data".into(), "data/*".into()],
        }),
        Change::PutRule(RuleRecord {
            id: "r002".into(),
            effect: Effect::Deny,
            principals: vec!["*".into()],
            actions: vec!["s3:DeleteObject".into()],
            resources: vec!["data/locked/*".into()],
        }),
        Change::PutBackend(backend("b1")),
        Change::PutBucket(bucket("data", "b1")),
    ] {
        s.apply(&change).unwrap();
    }
    s
}

/// The next notification that `pred` accepts, within `within`.
async fn wait_for(
    rx: &mut broadcast::Receiver<Notification>,
    within: Duration,
    pred: impl Fn(&Notification) -> bool,
) -> Notification {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(n)) if pred(&n) => return n,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("notification channel closed: {e}"),
            Err(_) => panic!("no matching notification within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_then_load_round_trips() {
    let redis = RedisServer::start();
    let m = master();
    let store = store(&redis, &m).await;
    assert_eq!(store.kind(), "redis");
    store.health().await.unwrap();

    let empty = store.load().await.unwrap();
    assert_eq!(empty, State::default());

    let seed = seed_state();
    assert!(store.seed(&seed).await.unwrap());
    let loaded = store.load().await.unwrap();
    let mut expected = seed.clone();
    expected.version = 1;
    assert_eq!(loaded, expected);

    // A second seed, even a different one, changes nothing.
    let mut other = State::default();
    other.apply(&Change::PutKey(key("AKOTHER"))).unwrap();
    assert!(!store.seed(&other).await.unwrap());
    assert!(!store.seed(&seed).await.unwrap());
    assert_eq!(store.load().await.unwrap(), expected);

    // Another store on the same Redis sees the same state.
    let again = self::store(&redis, &m).await;
    assert_eq!(again.load().await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_seen_by_every_replica_and_its_subscribers() {
    let redis = RedisServer::start();
    let m = master();
    let a = store(&redis, &m).await;
    let b = store(&redis, &m).await;
    assert!(a.seed(&seed_state()).await.unwrap());
    let mut b_events = b.subscribe();
    let mut a_events = a.subscribe();

    let started = Instant::now();
    let v = a.apply(Change::PutKey(key("AKNEW"))).await.unwrap();
    assert_eq!(v, 2);
    // (The seed's own `Touched::All` may still be on its way.)
    let n = wait_for(&mut b_events, Duration::from_secs(1), |n| n.version == 2).await;
    assert_eq!(
        n,
        Notification {
            version: 2,
            touched: Touched::Key("AKNEW".into())
        }
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // The writing replica hears of its own change too.
    let n = wait_for(&mut a_events, Duration::from_secs(1), |n| n.version == 2).await;
    assert_eq!(n.touched, Touched::Key("AKNEW".into()));

    let state = b.load().await.unwrap();
    assert_eq!(state.version, 2);
    assert_eq!(state.keys["AKNEW"], key("AKNEW"));

    // Deletes and the other record kinds, written through B.
    let v = b.apply(Change::DeleteKey("AKSEED1".into())).await.unwrap();
    assert_eq!(v, 3);
    let n = wait_for(&mut a_events, Duration::from_secs(1), |n| n.version == 3).await;
    assert_eq!(n.touched, Touched::Key("AKSEED1".into()));
    b.apply(Change::DeleteRule("r002".into())).await.unwrap();
    b.apply(Change::PutBackend(backend("b2"))).await.unwrap();
    b.apply(Change::PutBucket(bucket("logs", "b2")))
        .await
        .unwrap();
    let v = b.apply(Change::DeleteBucket("data".into())).await.unwrap();
    assert_eq!(v, 7);
    let n = wait_for(&mut a_events, Duration::from_secs(1), |n| n.version == 7).await;
    assert_eq!(n.touched, Touched::Bucket("data".into()));

    let state = a.load().await.unwrap();
    assert_eq!(state.version, 7);
    assert!(!state.keys.contains_key("AKSEED1"));
    assert_eq!(state.rules.keys().collect::<Vec<_>>(), ["r001"]);
    assert_eq!(state.backends["b2"], backend("b2"));
    assert_eq!(state.buckets.keys().collect::<Vec<_>>(), ["logs"]);

    // A missing record is a change error, not a version bump.
    let err = a.apply(Change::DeleteKey("nope".into())).await.unwrap_err();
    assert!(matches!(err, StoreError::Change(_)), "{err}");
    assert_eq!(a.load().await.unwrap().version, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_not_stored_in_plaintext() {
    let redis = RedisServer::start();
    let store = store(&redis, &master()).await;
    store.seed(&seed_state()).await.unwrap();
    store.apply(Change::PutKey(key("AKLATER"))).await.unwrap();
    store
        .apply(Change::PutBackend(backend("b9")))
        .await
        .unwrap();

    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let all_keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dump = String::new();
    for k in &all_keys {
        let kind: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        match kind.as_str() {
            "hash" => {
                let h: Vec<(String, String)> = redis::cmd("HGETALL")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                for (f, v) in h {
                    dump.push_str(&format!("{k} {f} {v}\n"));
                }
            }
            "string" => {
                let v: String = redis::cmd("GET")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                dump.push_str(&format!("{k} {v}\n"));
            }
            other => panic!("unexpected key {k} of type {other}"),
        }
    }
    // The records are there (as JSON) ...
    assert!(
        dump.contains("AKSEED1") && dump.contains("AKLATER") && dump.contains("b9"),
        "{dump}"
    );
    assert!(dump.contains("BACKENDAK"), "{dump}");
    // ... but no secret is, in any form.
    for secret in ["KEYSECRET", "BACKENDSECRET", "SESSIONTOKEN"] {
        assert!(
            !dump.contains(secret),
            "{secret} stored in plaintext:\n{dump}"
        );
    }
    let mut sorted = all_keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "s3gate:backends",
            "s3gate:buckets",
            "s3gate:keys",
            "s3gate:rules",
            "s3gate:version"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_master_key_is_corrupt() {
    let redis = RedisServer::start();
    let right = store(&redis, &master()).await;
    right.seed(&seed_state()).await.unwrap();

    let wrong = store(&redis, &master()).await;
    let err = wrong.load().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(!err.to_string().contains("KEYSECRET"), "{err}");
    // Writes go through a load too, so they refuse rather than mix keys.
    let err = wrong.apply(Change::PutKey(key("AKX"))).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert_eq!(right.load().await.unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_through_two_replicas_all_land() {
    let redis = RedisServer::start();
    let m = master();
    let a = Arc::new(store(&redis, &m).await);
    let b = Arc::new(store(&redis, &m).await);
    a.seed(&seed_state()).await.unwrap();
    let before = a.load().await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            // Keys and buckets mixed, so validation reads a moving state.
            if i % 3 == 0 {
                s.apply(Change::PutBucket(bucket(&format!("bucket{i}"), "b1")))
                    .await
            } else {
                s.apply(Change::PutKey(key(&format!("AKC{i:02}")))).await
            }
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap());
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (before.version + 1..=before.version + 20).collect();
    assert_eq!(versions, expected, "every write got its own version");

    let after = b.load().await.unwrap();
    assert_eq!(after.version, before.version + 20);
    for i in 0..20 {
        if i % 3 == 0 {
            assert!(after.buckets.contains_key(&format!("bucket{i}")));
        } else {
            assert_eq!(
                after.keys[&format!("AKC{i:02}")],
                key(&format!("AKC{i:02}"))
            );
        }
    }
    assert_eq!(after.keys.len(), before.keys.len() + 13);
    assert_eq!(after.buckets.len(), before.buckets.len() + 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referential_integrity_is_enforced() {
    let redis = RedisServer::start();
    let m = master();
    let a = store(&redis, &m).await;
    let b = store(&redis, &m).await;
    a.seed(&seed_state()).await.unwrap();

    let err = a
        .apply(Change::PutBucket(bucket("orphan", "nope")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Change(_)), "{err}");
    // A backend in use cannot go, even when the bucket came through another
    // replica.
    b.apply(Change::PutBackend(backend("b2"))).await.unwrap();
    b.apply(Change::PutBucket(bucket("uses-b2", "b2")))
        .await
        .unwrap();
    let err = a
        .apply(Change::DeleteBackend("b2".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Change(_)), "{err}");
    let err = a
        .apply(Change::PutKey(KeyRecord {
            secret: Secret::new(""),
            ..key("AKEMPTY")
        }))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Change(_)), "{err}");

    let state = b.load().await.unwrap();
    assert_eq!(state.version, 3, "failed changes do not bump the version");
    assert!(!state.buckets.contains_key("orphan"));
    assert!(state.backends.contains_key("b2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_are_separate_states() {
    let redis = RedisServer::start();
    let m = master();
    let one = RedisStore::connect(&redis.url(), m.clone(), "one")
        .await
        .unwrap();
    let two = RedisStore::connect(&redis.url(), m.clone(), "two")
        .await
        .unwrap();
    let mut two_events = two.subscribe();
    assert!(one.seed(&seed_state()).await.unwrap());
    assert!(two.seed(&State::default()).await.unwrap());
    one.apply(Change::PutKey(key("AKONE"))).await.unwrap();
    let state = two.load().await.unwrap();
    assert_eq!(state.version, 1);
    assert!(state.keys.is_empty());
    // Two's own seed notification, and nothing of one's.
    let n = wait_for(&mut two_events, Duration::from_secs(1), |_| true).await;
    assert_eq!(n.touched, Touched::All);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(two_events.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_unavailable_quickly_and_recovery_reloads_all() {
    let mut redis = RedisServer::start();
    let m = master();
    let store = store(&redis, &m).await;
    let mut events = store.subscribe();
    store.seed(&seed_state()).await.unwrap();
    store.load().await.unwrap();
    // The seed's own announcement, so it is not taken for the one below.
    wait_for(&mut events, Duration::from_secs(1), |n| {
        n.touched == Touched::All
    })
    .await;

    redis.kill();
    let started = Instant::now();
    let err = store.load().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = store
        .apply(Change::PutKey(key("AKDOWN")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = store.health().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = store.seed(&seed_state()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // Back on the same port (empty: the test server does not persist).
    redis.restart();
    let v = store
        .apply(Change::PutBackend(backend("b1")))
        .await
        .unwrap();
    assert_eq!(v, 1);
    store.health().await.unwrap();
    assert_eq!(store.load().await.unwrap().backends.len(), 1);
    // The subscriber reconnects (backoff ≤ 2 s) and tells replicas to
    // reload everything they may have missed.
    let n = wait_for(&mut events, Duration::from_secs(10), |n| {
        n.touched == Touched::All
    })
    .await;
    assert!(n.version <= 1);
    // And it hears changes again.
    let v = store.apply(Change::PutKey(key("AKBACK"))).await.unwrap();
    wait_for(&mut events, Duration::from_secs(1), |n| {
        n.version == v && n.touched == Touched::Key("AKBACK".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_can_start_before_redis() {
    let mut redis = RedisServer::with_free_port();
    let m = master();
    let started = Instant::now();
    let store = store(&redis, &m).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut events = store.subscribe();
    assert!(matches!(
        store.load().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.health().await,
        Err(StoreError::Unavailable(_))
    ));

    redis.restart();
    // Its first subscription came late, so it announces a reload.
    let n = wait_for(&mut events, Duration::from_secs(10), |n| {
        n.touched == Touched::All
    })
    .await;
    assert_eq!(n.version, 0);
    assert!(store.seed(&seed_state()).await.unwrap());
    assert_eq!(store.load().await.unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_gives_unavailable_not_a_hang() {
    let redis = RedisServer::start();
    let store = store(&redis, &master()).await;
    store.seed(&seed_state()).await.unwrap();
    redis.pause();
    let started = Instant::now();
    let err = store.load().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = store
        .apply(Change::PutKey(key("AKHUNG")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = store.health().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "took {:?}",
        started.elapsed()
    );
    redis.resume();
    store.apply(Change::PutKey(key("AKHUNG"))).await.unwrap();
    assert!(store.load().await.unwrap().keys.contains_key("AKHUNG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_corrupt() {
    let redis = RedisServer::start();
    let store = store(&redis, &master()).await;
    store.seed(&seed_state()).await.unwrap();
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("s3gate:rules")
        .arg("r009")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.load().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let _: () = redis::cmd("HDEL")
        .arg("s3gate:rules")
        .arg("r009")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("s3gate:version")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.load().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let _: () = redis::cmd("SET")
        .arg("s3gate:version")
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    store.load().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg("s3gate:keys")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("s3gate:keys")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.load().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let err = store
        .apply(Change::DeleteRule("r001".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_costs_no_error() {
    let mut redis = RedisServer::start();
    let store = store(&redis, &master()).await;
    let mut events = store.subscribe();
    store.seed(&seed_state()).await.unwrap();
    store.load().await.unwrap();
    wait_for(&mut events, Duration::from_secs(1), |n| n.version == 1).await;

    // Nothing touches the store while Redis restarts, so its connections
    // are stale when it is next used.
    redis.kill();
    redis.restart();
    wait_for(&mut events, Duration::from_secs(10), |n| {
        n.touched == Touched::All
    })
    .await;
    store.health().await.unwrap();
    let v = store
        .apply(Change::PutBackend(backend("b7")))
        .await
        .unwrap();
    assert_eq!(v, 1, "the test server does not persist");
    // Published over a connection remade on the spot.
    wait_for(&mut events, Duration::from_secs(1), |n| {
        n.version == 1 && n.touched == Touched::Backend("b7".into())
    })
    .await;
    redis.kill();
    redis.restart();
    assert_eq!(store.load().await.unwrap().version, 0);
}

// === temporary sessions ===

fn session(ak: &str, principal: &str, expires_in: i64) -> SessionRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    SessionRecord {
        info: SessionInfo {
            access_key: ak.into(),
            principal: principal.into(),
            groups: vec!["analysts".into()],
            claims: vec![("email".into(), format!("{principal}@example.com"))],
            role_arn: "arn:aws:iam::000000000000:role/analysts".into(),
            session_name: "s1".into(),
            subject: principal.into(),
            provider: "http://idp".into(),
            created: now,
            expires: now + expires_in,
        },
        secret: Secret::new(format!("SESSIONSECRET-{ak}")),
        token_sha256: s3gate_s3::sts::token_sha256(&format!("SESSIONTOKEN-{ak}")),
    }
}

async fn live(store: &RedisStore, ak: &str) -> Option<SessionRecord> {
    match store.session(ak).await.unwrap() {
        SessionLookup::Live(s) => Some(*s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_shared_sealed_and_expire() {
    let redis = RedisServer::start();
    let m = master();
    let one = store(&redis, &m).await;
    let two = store(&redis, &m).await;
    let a = "ASIAAAAAAAAAAAAAAAA2";
    let b = "ASIAAAAAAAAAAAAAAAA3";
    let short = "ASIAAAAAAAAAAAAAAAA4";
    one.put_session(&session(a, "alice", 3600), SessionLimits::default())
        .await
        .unwrap();
    one.put_session(&session(b, "alice", 7200), SessionLimits::default())
        .await
        .unwrap();
    one.put_session(&session(short, "bob", 1), SessionLimits::default())
        .await
        .unwrap();

    // Another replica reads what this one wrote, secret and all.
    let got = live(&two, a).await.expect("live at the other replica");
    let mut want = session(a, "alice", 3600);
    want.info.created = got.info.created;
    want.info.expires = got.info.expires;
    assert_eq!(got, want);
    assert_eq!(got.secret.expose(), &format!("SESSIONSECRET-{a}"));
    assert_eq!(
        two.session("ASIAAAAAAAAAAAAAAAA5").await.unwrap(),
        SessionLookup::Unknown
    );

    // Nothing secret in Redis; the record expires with the session.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*session*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dump = String::new();
    for k in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let v: Vec<String> = match kind.as_str() {
            "string" => vec![redis::cmd("GET")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap()],
            "zset" => redis::cmd("ZRANGE")
                .arg(k)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap(),
            other => panic!("unexpected {k} of type {other}"),
        };
        dump.push_str(&format!("{k} {v:?}\n"));
    }
    assert!(
        dump.contains(a) && dump.contains("alice@example.com"),
        "{dump}"
    );
    assert!(
        !dump.contains("SESSIONSECRET") && !dump.contains("SESSIONTOKEN"),
        "{dump}"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("s3gate:session:{a}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((3_590_000..=3_600_000).contains(&pttl), "{pttl}");
    let index_ttl: i64 = redis::cmd("PTTL")
        .arg("s3gate:sessions-of:alice")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (7_190_000..=7_200_000).contains(&index_ttl),
        "the longest session: {index_ttl}"
    );

    // A sealed secret moved to another record does not open.
    let json_a: String = redis::cmd("GET")
        .arg(format!("s3gate:session:{a}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let json_b: String = redis::cmd("GET")
        .arg(format!("s3gate:session:{b}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut moved: serde_json::Value = serde_json::from_str(&json_b).unwrap();
    moved["secret"] = serde_json::from_str::<serde_json::Value>(&json_a).unwrap()["secret"].clone();
    let _: () = redis::cmd("SET")
        .arg(format!("s3gate:session:{b}"))
        .arg(moved.to_string())
        .arg("KEEPTTL")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(two.session(b).await, Err(StoreError::Corrupt(_))));
    one.put_session(&session(b, "alice", 7200), SessionLimits::default())
        .await
        .unwrap();

    // Listing: live sessions only, never a secret.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let all: Vec<String> = two
        .sessions(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.access_key)
        .collect();
    assert_eq!(all, [a, b]);
    assert_eq!(two.sessions(Some("bob")).await.unwrap(), []);
    // Expired: gone from Redis, but known as expired (not unknown).
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("s3gate:session:{short}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    assert_eq!(
        two.session(short).await.unwrap(),
        SessionLookup::Expired {
            token_sha256: Some(s3gate_s3::sts::token_sha256(&format!(
                "SESSIONTOKEN-{short}"
            )))
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_every_replica() {
    let redis = RedisServer::start();
    let m = master();
    let one = store(&redis, &m).await;
    let two = store(&redis, &m).await;
    let mut heard = two.subscribe();
    let keys = [
        "ASIAAAAAAAAAAAAAAAA2",
        "ASIAAAAAAAAAAAAAAAA3",
        "ASIAAAAAAAAAAAAAAAA4",
    ];
    one.put_session(&session(keys[0], "alice", 600), SessionLimits::default())
        .await
        .unwrap();
    one.put_session(&session(keys[1], "alice", 600), SessionLimits::default())
        .await
        .unwrap();
    one.put_session(&session(keys[2], "carol", 600), SessionLimits::default())
        .await
        .unwrap();

    let revoked = two
        .revoke_sessions(&SessionTarget::AccessKey(keys[0].into()))
        .await
        .unwrap();
    assert_eq!(revoked, [keys[0]]);
    wait_for(&mut heard, Duration::from_secs(2), |n| {
        n.touched == Touched::Sessions(vec![keys[0].into()])
    })
    .await;
    assert_eq!(one.session(keys[0]).await.unwrap(), SessionLookup::Unknown);
    assert!(two
        .revoke_sessions(&SessionTarget::AccessKey(keys[0].into()))
        .await
        .unwrap()
        .is_empty());

    let revoked = one
        .revoke_sessions(&SessionTarget::Principal("alice".into()))
        .await
        .unwrap();
    assert_eq!(revoked, [keys[1]]);
    wait_for(&mut heard, Duration::from_secs(2), |n| {
        n.touched == Touched::Sessions(vec![keys[1].into()])
    })
    .await;
    assert!(live(&two, keys[1]).await.is_none());
    assert!(live(&two, keys[2]).await.is_some(), "carol's stays");
    assert!(one
        .revoke_sessions(&SessionTarget::Principal("nobody".into()))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bounded_in_all_and_per_principal() {
    let redis = RedisServer::start();
    let m = master();
    let one = store(&redis, &m).await;
    let two = store(&redis, &m).await;
    let mut heard = two.subscribe();
    let limits = SessionLimits {
        total: 4,
        per_principal: 2,
    };
    let key = |i: usize| format!("ASIAAAAAAAAAAAAAAAB{i}");
    // alice: the third session ends the one that expires first, never the
    // new one (which here expires soonest).
    assert_eq!(
        one.put_session(&session(&key(1), "alice", 600), limits)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        one.put_session(&session(&key(2), "alice", 900), limits)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    let ended = two
        .put_session(&session(&key(3), "alice", 300), limits)
        .await
        .unwrap();
    assert_eq!(ended, [key(1)]);
    wait_for(&mut heard, Duration::from_secs(2), |n| {
        n.touched == Touched::Sessions(vec![key(1)])
    })
    .await;
    assert_eq!(one.session(&key(1)).await.unwrap(), SessionLookup::Unknown);
    assert!(live(&one, &key(2)).await.is_some() && live(&one, &key(3)).await.is_some());
    // In all: 4 live sessions, then refused.
    one.put_session(&session(&key(4), "bob", 600), limits)
        .await
        .unwrap();
    one.put_session(&session(&key(5), "carol", 600), limits)
        .await
        .unwrap();
    match one
        .put_session(&session(&key(6), "dave", 600), limits)
        .await
    {
        Err(StoreError::Full(why)) => assert!(why.contains("4 sessions"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(one.session(&key(6)).await.unwrap(), SessionLookup::Unknown);
    // A revocation makes room again.
    one.revoke_sessions(&SessionTarget::Principal("carol".into()))
        .await
        .unwrap();
    one.put_session(&session(&key(6), "dave", 600), limits)
        .await
        .unwrap();
}

/// IBM IAM and AWS AssumeRole backends: every secret sealed per field (the
/// dump holds none), and each read back as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanged_kinds_are_sealed_and_round_trip() {
    let redis = RedisServer::start();
    let m = master();
    let store = store(&redis, &m).await;
    store.seed(&State::default()).await.unwrap();
    let ibm = BackendRecord {
        credentials: CredentialSpec::IbmIam {
            api_key: Secret::new("IBMAPIKEY-VALUE".to_owned()),
            iam_endpoint: "https://iam.example/identity/token".into(),
            service_instance_id: Some("crn:v1:instance".into()),
            ca_bundle: None,
        },
        ..backend("ibm")
    };
    let aws = BackendRecord {
        credentials: CredentialSpec::AwsAssumeRole {
            role_arn: "arn:aws:iam::123456789012:role/s3gate".into(),
            access_key: "AKIAROLE".into(),
            secret_key: Secret::new("ROLESECRET-VALUE".to_owned()),
            session_token: Some(Secret::new("ROLETOKEN-VALUE".to_owned())),
            sts_endpoint: "https://sts.eu-west-1.amazonaws.com".into(),
            duration: Duration::from_secs(7200),
            session_name: "gw".into(),
            external_id: Some("ext-1".into()),
            sts_region: None,
            ca_bundle: None,
        },
        ..backend("aws")
    };
    store.apply(Change::PutBackend(ibm.clone())).await.unwrap();
    store.apply(Change::PutBackend(aws.clone())).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.backends["ibm"].credentials, ibm.credentials);
    assert_eq!(loaded.backends["aws"].credentials, aws.credentials);

    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let dump: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("s3gate:backends")
        .query_async(&mut conn)
        .await
        .unwrap();
    let dump = format!("{dump:?}");
    assert!(
        dump.contains("AKIAROLE") && dump.contains("crn:v1:instance"),
        "{dump}"
    );
    for secret in ["IBMAPIKEY", "ROLESECRET", "ROLETOKEN"] {
        assert!(
            !dump.contains(secret),
            "{secret} stored in plaintext: {dump}"
        );
    }
    // Another master key cannot open them.
    let wrong = RedisStore::connect(&redis.url(), master(), DEFAULT_PREFIX)
        .await
        .unwrap();
    assert!(matches!(
        wrong.load().await.unwrap_err(),
        StoreError::Corrupt(_)
    ));
}

/// The exchange lock is one holder's at a time and released only by it;
/// the shared result is sealed, expires with the credential, and does not
/// open under another backend's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_lock_and_shared_result() {
    let redis = RedisServer::start();
    let m = master();
    let a = store(&redis, &m).await;
    let b = store(&redis, &m).await;
    assert!(a.shares_exchanges());
    let ttl = Duration::from_secs(10);
    assert!(a.lock_exchange("ibm", "replica-a", ttl).await.unwrap());
    assert!(!b.lock_exchange("ibm", "replica-b", ttl).await.unwrap());
    // Another backend's lock is separate.
    assert!(b.lock_exchange("aws", "replica-b", ttl).await.unwrap());
    // Only the holder releases it.
    b.unlock_exchange("ibm", "replica-b").await.unwrap();
    assert!(!b.lock_exchange("ibm", "replica-b", ttl).await.unwrap());
    a.unlock_exchange("ibm", "replica-a").await.unwrap();
    assert!(b.lock_exchange("ibm", "replica-b", ttl).await.unwrap());
    // The lock expires on its own (a replica that died holding it).
    assert!(a
        .lock_exchange("short", "replica-a", Duration::from_millis(200))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.lock_exchange("short", "replica-b", ttl).await.unwrap());

    assert!(a.exchanged("ibm").await.unwrap().is_none());
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 2;
    let value = Secret::new("{\"token\":\"IAMTOKEN-VALUE\"}".to_owned());
    a.put_exchanged("ibm", &value, expires).await.unwrap();
    assert_eq!(b.exchanged("ibm").await.unwrap().unwrap(), value);
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: String = redis::cmd("GET")
        .arg("s3gate:exchanged:ibm")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!raw.contains("IAMTOKEN"), "{raw}");
    // Moved to another backend's key, it does not open.
    let _: () = redis::cmd("SET")
        .arg("s3gate:exchanged:other")
        .arg(&raw)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        b.exchanged("other").await.unwrap_err(),
        StoreError::Corrupt(_)
    ));
    // Gone with its expiry.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(a.exchanged("ibm").await.unwrap().is_none());
}
