//! The read path's batched lookups: many pairs answered by one statement must each get their
//! own row, and a reading connection the server closed must not fail a read.

use futures::future::join_all;
use serde_json::Value;
use token_store::lookups::APPLICATION_NAME;

use test_support::{token_body, TestApp};

#[tokio::test]
async fn concurrent_reads_of_many_pairs_each_get_their_own_row() {
    let app = TestApp::spawn().await;
    // 30 users with google, every third also with microsoft: rows that differ by provider.
    let mut stored = Vec::new();
    for i in 0..30 {
        let users = [("google", true), ("microsoft", i % 3 == 0)];
        for (provider, has) in users {
            if has {
                let body = token_body(&format!("{provider}-{i}"));
                let put = app.put_token(&format!("user-{i}"), provider, &body).await;
                assert_eq!(put.status(), 204, "storing user-{i}/{provider}");
                stored.push((format!("user-{i}"), provider, body["accessToken"].clone()));
            }
        }
    }
    let batches_before = app.metric("token_store_lookup_batch_size_count", &[]).await;
    let lookups_before = app.metric("token_store_lookup_batch_size_sum", &[]).await;

    // Every pair three times (duplicates within a batch), plus pairs that have no row.
    let mut wanted: Vec<(String, &str, Option<Value>)> = Vec::new();
    for _ in 0..3 {
        for (user, provider, token) in &stored {
            wanted.push((user.clone(), provider, Some(token.clone())));
        }
        for i in 0..30 {
            if i % 3 != 0 {
                wanted.push((format!("user-{i}"), "microsoft", None));
            }
        }
        wanted.push(("nobody".to_owned(), "google", None));
    }
    let reads = wanted
        .iter()
        .map(|(user, provider, _)| app.get_token(user, provider));
    let responses = join_all(reads).await;
    for ((user, provider, expected), response) in wanted.iter().zip(responses) {
        match expected {
            Some(token) => {
                assert_eq!(response.status(), 200, "{user}/{provider}");
                let body: Value = response.json().await.unwrap();
                assert_eq!(&body["accessToken"], token, "{user}/{provider}");
                assert_eq!(body["provider"], *provider);
            }
            None => assert_eq!(response.status(), 404, "{user}/{provider}"),
        }
    }

    // Every read was a lookup, and concurrent ones shared statements.
    let batches = app.metric("token_store_lookup_batch_size_count", &[]).await - batches_before;
    let lookups = app.metric("token_store_lookup_batch_size_sum", &[]).await - lookups_before;
    assert_eq!(lookups, wanted.len() as f64);
    assert!(
        batches < lookups,
        "{lookups} lookups in {batches} statements: nothing was batched"
    );
}

#[tokio::test]
async fn a_read_survives_the_server_closing_the_reading_connection() {
    // Every read must reach the reading connection: no row cache.
    let app = TestApp::spawn_configured(|config| config.row_cache.enabled = false).await;
    let body = token_body("reconnect");
    app.put_token("alice", "google", &body).await;
    assert_eq!(app.get_token("alice", "google").await.status(), 200);

    let reading_pids = || async {
        sqlx::query_scalar::<_, i32>(
            "select pid from pg_stat_activity \
             where application_name = $1 and datname = current_database()",
        )
        .bind(APPLICATION_NAME)
        .fetch_all(&app.db)
        .await
        .unwrap()
    };
    let before = reading_pids().await;
    assert_eq!(before.len(), 1, "one reading connection: {before:?}");
    let terminated: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(before[0])
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(terminated);

    let response = app.get_token("alice", "google").await;
    assert_eq!(response.status(), 200);
    let read: Value = response.json().await.unwrap();
    assert_eq!(read["accessToken"], body["accessToken"]);
    let after = reading_pids().await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "the read was answered on a new connection");
}
