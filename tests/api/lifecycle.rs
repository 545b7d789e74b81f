//! A grant's life as callers and operators see it: its health, the events of each change
//! delivered as signed webhooks (none lost), and the refresh tokens a new consent replaces
//! revoked at the provider.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use token_store::config::Config;

use test_support::{
    assert_problem, expired_body, token_body, BinaryInstance, FakeProvider, Mode, ReceiverMode,
    TestApp, WebhookReceiver, READ_KEY,
};

/// Webhooks to `receiver`, tried every 100 ms with short backoffs.
fn webhooks_to(config: &mut Config, receiver: &WebhookReceiver) {
    config
        .webhooks
        .endpoints
        .insert("app".into(), receiver.endpoint());
    config.webhooks.interval = Duration::from_millis(100);
    config.webhooks.backoff_base = Duration::from_millis(100);
    config.webhooks.backoff_max = Duration::from_millis(400);
    config.webhooks.timeout = Duration::from_secs(1);
    config.webhooks.claim = Duration::from_secs(2);
    config.webhooks.max_attempts = 100;
}

#[tokio::test]
async fn a_users_grants_and_every_grant_are_listed_with_their_health_and_no_token() {
    let provider = FakeProvider::start().await;
    provider.set_mode_for("flaky", Mode::ServerError);
    provider.set_mode_for("gone", Mode::InvalidGrant);
    let app = TestApp::spawn_configured(|config| {
        config
            .providers
            .insert("google".into(), provider.settings());
        config
            .providers
            .insert("microsoft".into(), provider.settings());
    })
    .await;
    let fine = token_body("fine");
    app.put_token("health-user", "google", &fine).await;
    app.put_token("health-user", "microsoft", &expired_body("flaky"))
        .await;
    app.put_token("other-user", "google", &expired_body("gone"))
        .await;
    assert_eq!(
        app.access_token("health-user", "microsoft").await.status(),
        503
    );
    assert_eq!(app.access_token("other-user", "google").await.status(), 409);

    let listed = app.list_user_grants("health-user").await;
    assert_eq!(listed.status(), 200);
    let text = listed.text().await.unwrap();
    assert!(!text.contains(fine["accessToken"].as_str().unwrap()));
    assert!(!text.contains(fine["refreshToken"].as_str().unwrap()));
    let listed: Value = serde_json::from_str(&text).unwrap();
    let grants = listed["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0]["provider"], "google");
    assert_eq!(grants[0]["state"], "active");
    assert_eq!(grants[0]["scopes"], fine["scopes"]);
    assert_eq!(grants[1]["provider"], "microsoft");
    assert_eq!(grants[1]["state"], "degraded");
    assert_eq!(grants[1]["consecutiveFailures"], 1);
    assert_eq!(grants[1]["lastErrorCode"], "http_500");
    assert!(grants[1]["nextRetryAt"].is_i64());
    let dead: Value = app
        .list_user_grants("other-user")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dead["grants"][0]["state"], "reauthorization_required");
    assert_eq!(dead["grants"][0]["reason"], "invalid_grant");
    let nobody: Value = app.list_user_grants("nobody").await.json().await.unwrap();
    assert_eq!(nobody["grants"], serde_json::json!([]));

    // Operators page through every grant, filtered.
    let page: Value = app.list_grants("limit=2").await.json().await.unwrap();
    assert_eq!(page["grants"].as_array().unwrap().len(), 2);
    let cursor = page["nextCursor"].as_str().unwrap().replace('/', "%2F");
    let rest: Value = app
        .list_grants(&format!("limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["grants"].as_array().unwrap().len(), 1);
    assert_eq!(rest["grants"][0]["userId"], "other-user");
    assert_eq!(rest["nextCursor"], Value::Null);
    let degraded: Value = app
        .list_grants("state=degraded")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(degraded["grants"].as_array().unwrap().len(), 1);
    assert_eq!(degraded["grants"][0]["provider"], "microsoft");
    let google: Value = app
        .list_grants("provider=google")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(google["grants"].as_array().unwrap().len(), 2);

    // Bad input is refused; a reader may list a user's grants but not every grant.
    for query in [
        "limit=0",
        "limit=1001",
        "state=sleepy",
        "cursor=%01",
        "provider=Bad",
        "page=2",
        "cursor=",
    ] {
        let refused = app.list_grants(query).await;
        assert_eq!(refused.status(), 422, "{query}");
        assert_problem(refused, 422, "invalid_request").await;
    }
    let reader = app.with_key(READ_KEY);
    assert_eq!(reader.list_user_grants("health-user").await.status(), 200);
    assert_problem(reader.list_grants("").await, 403, "forbidden").await;
    assert_problem(reader.webhook_deliveries("").await, 403, "forbidden").await;
}

#[tokio::test]
async fn a_new_consent_revokes_the_refresh_token_it_replaced() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with_provider(&provider).await;
    let first = token_body("consent-1");
    let second = token_body("consent-2");
    app.put_token("consenting", "google", &first).await;
    app.put_token("consenting", "google", &second).await;
    // The same refresh token stored again is not revoked.
    let mut again = token_body("consent-3");
    again["refreshToken"] = second["refreshToken"].clone();
    app.put_token("consenting", "google", &again).await;

    let old = first["refreshToken"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !provider.revoked().contains(&old) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(provider.revoked(), vec![old]);
    assert_eq!(
        app.metric(
            "token_store_superseded_revocations_total",
            &[("provider", "google"), ("outcome", "revoked")]
        )
        .await,
        1.0
    );
    // The new grant is untouched.
    let stored: Value = app
        .get_token("consenting", "google")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["refreshToken"], second["refreshToken"]);

    // A provider configured not to.
    let keeping = FakeProvider::start().await;
    let app = TestApp::spawn_configured(|config| {
        let mut settings = keeping.settings();
        settings.revoke_superseded = false;
        config.providers.insert("google".into(), settings);
    })
    .await;
    app.put_token("keeper", "google", &token_body("keep-1"))
        .await;
    app.put_token("keeper", "google", &token_body("keep-2"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(keeping.revoked().is_empty());
}

#[tokio::test]
async fn every_event_reaches_a_receiver_that_was_down_in_order_per_grant_and_signed() {
    let provider = FakeProvider::start().await;
    let receiver = WebhookReceiver::start().await;
    receiver.set_mode(ReceiverMode::Down);
    let app = TestApp::spawn_configured(|config| {
        config
            .providers
            .insert("google".into(), provider.settings());
        config.refresh.cooldown_base = Duration::from_millis(1);
        config.refresh.cooldown_max = Duration::from_millis(1);
        webhooks_to(config, &receiver);
    })
    .await;

    // Two grants, their changes interleaved.
    provider.set_mode(Mode::ServerError);
    app.put_token("events-a", "google", &expired_body("a-1"))
        .await;
    app.put_token("events-b", "google", &expired_body("b-1"))
        .await;
    assert_eq!(app.access_token("events-a", "google").await.status(), 503); // degraded
    provider.set_mode(Mode::Success);
    tokio::time::sleep(Duration::from_millis(20)).await; // the cool-down ends
    assert_eq!(app.access_token("events-a", "google").await.status(), 200); // recovered
    provider.set_mode(Mode::InvalidGrant);
    assert_eq!(app.access_token("events-b", "google").await.status(), 409); // dead
    provider.set_mode(Mode::Success);
    app.put_token("events-b", "google", &token_body("b-2"))
        .await; // connected, recovered
    assert_eq!(app.delete_token("events-a", "google").await.status(), 204); // revoked

    let expected: HashMap<&str, Vec<&str>> = HashMap::from([
        (
            "events-a",
            vec![
                "grant.connected",
                "grant.degraded",
                "grant.recovered",
                "grant.revoked",
            ],
        ),
        (
            "events-b",
            vec![
                "grant.connected",
                "grant.reauthorization_required",
                "grant.connected",
                "grant.recovered",
            ],
        ),
    ]);
    // Down for a while: attempts fail, nothing is lost.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(receiver.requests() >= 2, "the service kept trying");
    assert!(receiver.received().is_empty());
    receiver.set_mode(ReceiverMode::Up);
    let all_arrived = receiver
        .wait_until(Duration::from_secs(20), |received| {
            let ids: std::collections::HashSet<&str> =
                received.iter().map(|r| r.id.as_str()).collect();
            ids.len() == 8
        })
        .await;
    assert!(
        all_arrived,
        "every event arrived: {:?}",
        receiver.received()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.refused_signatures(), 0);

    let received = receiver.received();
    // Duplicates only ever repeat the same webhook-id with the same body.
    let mut by_id: HashMap<&str, &Value> = HashMap::new();
    for r in &received {
        if let Some(earlier) = by_id.insert(&r.id, &r.body) {
            assert_eq!(earlier, &r.body, "a duplicate with another body");
        }
    }
    for (user, types) in &expected {
        let mut seen: Vec<&str> = Vec::new();
        let mut ids: Vec<&str> = Vec::new();
        for r in received
            .iter()
            .filter(|r| r.body["data"]["userId"] == *user)
        {
            if !ids.contains(&r.id.as_str()) {
                ids.push(&r.id);
                seen.push(r.body["type"].as_str().unwrap());
            }
        }
        assert_eq!(&seen, types, "{user}: in order");
    }
    let revoked = received
        .iter()
        .find(|r| r.body["type"] == "grant.revoked")
        .unwrap();
    assert_eq!(revoked.body["data"]["providerConfirmed"], true);
    let dead = received
        .iter()
        .find(|r| r.body["type"] == "grant.reauthorization_required")
        .unwrap();
    assert_eq!(dead.body["data"]["reason"], "invalid_grant");
    let text =
        serde_json::to_string(&received.iter().map(|r| &r.body).collect::<Vec<_>>()).unwrap();
    assert!(!text.contains("ya29."), "no access token in an event");
    assert!(!text.contains("1//"), "no refresh token in an event");

    let delivered: Value = app
        .webhook_deliveries("state=delivered")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(delivered["deliveries"].as_array().unwrap().len(), 8);
    assert!(
        app.metric(
            "token_store_webhook_deliveries_total",
            &[("endpoint", "app"), ("outcome", "retry")]
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_is_marked_failed_and_still_listed() {
    let receiver = WebhookReceiver::start().await;
    receiver.set_mode(ReceiverMode::Down);
    let app = TestApp::spawn_configured(|config| {
        webhooks_to(config, &receiver);
        config.webhooks.max_attempts = 3;
    })
    .await;
    app.put_token("unlucky", "google", &token_body("unlucky"))
        .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let page: Value = app
            .webhook_deliveries("state=failed")
            .await
            .json()
            .await
            .unwrap();
        if !page["deliveries"].as_array().unwrap().is_empty()
            || tokio::time::Instant::now() > deadline
        {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deliveries = failed["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{failed}");
    assert_eq!(deliveries[0]["type"], "grant.connected");
    assert_eq!(deliveries[0]["userId"], "unlucky");
    assert_eq!(deliveries[0]["attempts"], 3);
    assert_eq!(deliveries[0]["lastError"], "http_503");
    assert_eq!(receiver.requests(), 3);
    assert_eq!(
        app.metric(
            "token_store_webhook_deliveries_total",
            &[("endpoint", "app"), ("outcome", "failed")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_delivery_whose_replica_is_killed_mid_send_is_delivered_by_another() {
    let receiver = WebhookReceiver::start().await;
    receiver.set_mode(ReceiverMode::Hang);
    // The database and key, with an instance that sends nothing (no endpoints) yet.
    let quiet = TestApp::spawn().await;

    // The replica to kill: the real binary, sending webhooks.
    let mut doomed = BinaryInstance::start(
        Path::new(env!("CARGO_BIN_EXE_token-store")),
        &quiet,
        &format!(
            "[keeper]\nenabled = false\n\n\
             [webhooks]\ninterval_ms = 100\ntimeout_ms = 1000\nclaim_ms = 2000\n\n\
             [webhooks.endpoints.app]\nurl = \"{}\"\nsecret = \"{}\"\n",
            receiver.url, receiver.secret
        ),
    )
    .await;
    let api = doomed.api.clone();
    assert_eq!(
        api.put_token("killed-mid-send", "google", &token_body("kill"))
            .await
            .status(),
        204
    );

    // The binary is sending the event (the receiver holds the request): SIGKILL it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while receiver.requests() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill();
    receiver.set_mode(ReceiverMode::Up);

    // Another replica takes the delivery once the dead one's claim expires.
    let survivor = quiet
        .sibling_with(|config| webhooks_to(config, &receiver))
        .await;
    let arrived = receiver
        .wait_until(Duration::from_secs(15), |received| !received.is_empty())
        .await;
    assert!(arrived, "the event was delivered by the surviving replica");
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body["type"], "grant.connected");
    assert_eq!(received[0].body["data"]["userId"], "killed-mid-send");
    let page: Value = survivor
        .webhook_deliveries("state=delivered")
        .await
        .json()
        .await
        .unwrap();
    let delivery = &page["deliveries"][0];
    assert_eq!(delivery["eventId"].as_str(), Some(received[0].id.as_str()));
    assert_eq!(
        delivery["attempts"], 2,
        "the killed attempt and the one that worked"
    );
}

#[tokio::test]
async fn an_expired_grant_without_a_refresh_token_needs_consent_in_its_health_and_its_filter() {
    let app = TestApp::spawn().await;
    let mut body = expired_body("no-refresh");
    body.as_object_mut().unwrap().remove("refreshToken");
    app.put_token("stranded", "google", &body).await;
    app.put_token("fine", "google", &token_body("fine")).await;

    let health: Value = app.list_user_grants("stranded").await.json().await.unwrap();
    assert_eq!(health["grants"][0]["state"], "reauthorization_required");
    assert_eq!(health["grants"][0]["reason"], "missing_refresh_token");
    let users = |page: Value| -> Vec<String> {
        page["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["userId"].as_str().unwrap().to_owned())
            .collect()
    };
    let dead = app.list_grants("state=reauthorization_required").await;
    assert_eq!(users(dead.json().await.unwrap()), vec!["stranded"]);
    let active = app.list_grants("state=active").await;
    assert_eq!(users(active.json().await.unwrap()), vec!["fine"]);
}
