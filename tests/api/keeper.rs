//! The keeper: grants refreshed ahead of expiry and for keep-alive, once across replicas,
//! and never a dead one.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use token_store::config::{Config, KeeperConfig};

use test_support::{token_body, FakeProvider, Mode, TestApp};

/// The keeper on, looking every 100 ms, refreshing grants that expire within `ahead`.
fn keeper_on(config: &mut Config, provider: &FakeProvider, ahead: Duration) {
    config
        .providers
        .insert("google".into(), provider.settings());
    config.keeper = KeeperConfig {
        enabled: true,
        refresh_ahead: ahead,
        jitter: Duration::from_secs(1),
        interval: Duration::from_millis(100),
        batch_size: 25,
        concurrency_per_provider: 4,
        rate_per_provider: 1000,
        claim: Duration::from_secs(10),
        count_interval: Duration::from_millis(200),
    };
}

async fn refreshes(app: &TestApp, trigger: &str, outcome: &str) -> f64 {
    app.metric(
        "token_store_refreshes_total",
        &[("trigger", trigger), ("outcome", outcome)],
    )
    .await
}

#[tokio::test]
async fn three_replicas_refresh_each_of_300_grants_ahead_of_expiry_exactly_once() {
    let provider = FakeProvider::start().await;
    // The keeper refreshes 12 to 13 s ahead, callers only within 2 s: ten seconds of slack
    // for a loaded machine.
    let ahead = Duration::from_secs(12);
    let first = TestApp::spawn_configured(|config| {
        keeper_on(config, &provider, ahead);
        // Callers' own refresh buffer is shorter than the keeper's window: a caller is
        // served from the store while the keeper refreshes ahead of them.
        config.refresh.buffer = Duration::from_secs(2);
    })
    .await;
    let second = first.sibling().await;
    let third = first.sibling().await;
    let apps = [&first, &second, &third];

    // 300 grants expiring at random times 14 to 26 s from now.
    let now = chrono::Utc::now().timestamp_millis();
    let bodies: Vec<(String, Value)> = (0..300)
        .map(|n| {
            let mut body = token_body(&format!("ahead-{n}"));
            body["expiresAt"] = json!(now + rand::thread_rng().gen_range(14_000..26_000));
            (format!("ahead-{n}"), body)
        })
        .collect();
    futures::stream::iter(&bodies)
        .for_each_concurrent(16, |(user, body)| async move {
            let stored = apps[user.len() % 3].put_token(user, "google", body).await;
            assert_eq!(stored.status(), 204);
        })
        .await;

    // Callers meanwhile, on every replica: all served from the store.
    let callers = async {
        let mut served = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            for (n, app) in apps.iter().enumerate() {
                let user = format!("ahead-{}", rand::thread_rng().gen_range(0..300));
                let answer = app.access_token(&user, "google").await;
                assert_eq!(answer.status(), 200, "replica {n}, {user}");
                served += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    };
    let waited = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while provider.token_calls() < 300 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (served, ()) = tokio::join!(callers, waited);
    // Another keeper cycle or two: nothing is refreshed twice.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut calls: HashMap<String, usize> = HashMap::new();
    for token in provider.refresh_tokens_seen() {
        *calls.entry(token).or_default() += 1;
    }
    assert_eq!(calls.len(), 300, "every grant was refreshed");
    for (_, body) in &bodies {
        let token = body["refreshToken"].as_str().unwrap();
        assert_eq!(calls.get(token), Some(&1), "refreshed exactly once");
    }
    let mut ahead_refreshes = 0.0;
    for app in apps {
        assert_eq!(refreshes(app, "on_demand", "refreshed").await, 0.0);
        ahead_refreshes += refreshes(app, "ahead", "refreshed").await;
    }
    assert_eq!(ahead_refreshes, 300.0);
    assert!(served > 30, "callers were served meanwhile ({served})");
    for (user, _) in bodies.iter().take(20) {
        let health: Value = first.list_user_grants(user).await.json().await.unwrap();
        let grant = &health["grants"][0];
        assert_eq!(grant["state"], "active");
        assert!(grant["lastRefreshedAt"].is_i64(), "{grant}");
        assert!(
            grant["nextRefreshAt"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis(),
            "{grant}"
        );
    }
}

#[tokio::test]
async fn an_idle_grant_is_refreshed_to_keep_it_alive_and_a_dead_one_is_never_sent() {
    let provider = FakeProvider::start().await;
    provider.set_mode_for("dead-grant", Mode::InvalidGrant);
    let app = TestApp::spawn_configured(|config| {
        keeper_on(config, &provider, Duration::from_secs(60));
        config.keeper.jitter = Duration::ZERO;
        let google = config.providers.get_mut("google").unwrap();
        google.keep_alive_after = Duration::from_secs(2);
    })
    .await;
    // Valid for an hour: only keep-alive makes it due, two seconds after it was stored.
    let idle = token_body("idle-grant");
    app.put_token("idle", "google", &idle).await;
    let dead = token_body("dead-grant");
    app.put_token("dead", "google", &dead).await;
    // The dead grant dies at once (a forced refresh meets invalid_grant)...
    assert_eq!(app.force_refresh("dead", "google").await.status(), 409);
    // ...and is then made due by hand: the keeper must still leave it alone.
    sqlx::query("update integration_tokens set next_refresh_at = now() - interval '1 minute' where user_id = 'dead'")
        .execute(&app.db)
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refreshes(&app, "keep_alive", "refreshed").await < 1.0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(refreshes(&app, "keep_alive", "refreshed").await, 1.0);
    let seen = provider.refresh_tokens_seen();
    let idle_token = idle["refreshToken"].as_str().unwrap();
    let dead_token = dead["refreshToken"].as_str().unwrap();
    assert_eq!(seen.iter().filter(|t| *t == idle_token).count(), 1);
    assert_eq!(
        seen.iter().filter(|t| *t == dead_token).count(),
        1,
        "only the forced refresh that killed it"
    );
    let health: Value = app.list_user_grants("dead").await.json().await.unwrap();
    assert_eq!(health["grants"][0]["state"], "reauthorization_required");
    assert_eq!(health["grants"][0]["reason"], "invalid_grant");
    assert_eq!(
        app.metric(
            "token_store_grants",
            &[("state", "reauthorization_required")]
        )
        .await,
        1.0,
        "grants are counted by state"
    );
}

#[tokio::test]
async fn the_keeper_leaves_half_the_lock_pool_to_callers() {
    let provider = FakeProvider::start().await;
    // Keeper refreshes hold their lock connection for a second each.
    provider.set_mode_for(
        "due-grant",
        Mode::Slow(Duration::from_secs(1), &Mode::Success),
    );
    let app = TestApp::spawn_configured(|config| {
        keeper_on(config, &provider, Duration::from_secs(600));
        config.keeper.concurrency_per_provider = 8;
        config.database.lock_pool_connections = 4;
    })
    .await;
    for n in 0..8 {
        app.put_token(
            &format!("due-{n}"),
            "google",
            &token_body(&format!("due-grant-{n}")),
        )
        .await;
    }
    // Every one of them due (an access token expiring within the keeper's window).
    sqlx::query("update integration_tokens set next_refresh_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    let lock_sessions = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity where datname = current_database() \
             and application_name = 'token-store-locks' and state = 'idle in transaction'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let mut most = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while provider.token_calls() < 8 && tokio::time::Instant::now() < deadline {
        most = most.max(lock_sessions().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(provider.token_calls(), 8, "every due grant was refreshed");
    assert_eq!(
        most, 2,
        "the keeper held at most half of the 4 lock connections"
    );
}
