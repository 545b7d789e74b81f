//! The unwrap cache, counted from the service's own metrics.

use futures::future::join_all;

use test_support::{token_body, TestApp};
use token_store::crypto::KmsOperation;

#[tokio::test]
async fn a_stored_row_reads_back_without_any_decrypt() {
    let app = TestApp::spawn().await;
    app.put_token("alice", "google", &token_body("warm")).await;
    for _ in 0..10 {
        assert_eq!(app.get_token("alice", "google").await.status(), 200);
    }
    assert_eq!(app.kms_calls(KmsOperation::GenerateDataKey).await, 1.0);
    assert_eq!(app.kms_calls(KmsOperation::Decrypt).await, 0.0);
}

#[tokio::test]
async fn many_reads_of_one_row_cause_one_decrypt() {
    let writer = TestApp::spawn().await;
    writer
        .put_token("alice", "google", &token_body("seq"))
        .await;
    // A second instance starts with an empty cache.
    let reader = writer.sibling().await;
    for _ in 0..25 {
        assert_eq!(reader.get_token("alice", "google").await.status(), 200);
    }
    assert_eq!(reader.kms_calls(KmsOperation::Decrypt).await, 1.0);
    assert_eq!(
        reader
            .metric("token_store_unwrap_cache_hits_total", &[])
            .await,
        24.0
    );
    assert_eq!(
        reader
            .metric("token_store_unwrap_cache_misses_total", &[])
            .await,
        1.0
    );
}

#[tokio::test]
async fn many_concurrent_cold_reads_of_one_row_cause_one_decrypt() {
    let writer = TestApp::spawn().await;
    writer
        .put_token("alice", "google", &token_body("cold"))
        .await;
    let reader = writer.sibling().await;

    let reads = (0..50).map(|_| reader.get_token("alice", "google"));
    let responses = join_all(reads).await;
    assert!(responses.iter().all(|r| r.status() == 200));

    assert_eq!(reader.kms_calls(KmsOperation::Decrypt).await, 1.0);
}

#[tokio::test]
async fn distinct_rows_each_cost_one_decrypt() {
    let writer = TestApp::spawn().await;
    for user in ["a", "b", "c"] {
        writer.put_token(user, "google", &token_body(user)).await;
    }
    let reader = writer.sibling().await;
    for _ in 0..3 {
        for user in ["a", "b", "c"] {
            assert_eq!(reader.get_token(user, "google").await.status(), 200);
        }
    }
    assert_eq!(reader.kms_calls(KmsOperation::Decrypt).await, 3.0);
}

#[tokio::test]
async fn the_cache_is_bounded_by_its_maximum_entries() {
    let writer = TestApp::spawn().await;
    for i in 0..12 {
        writer
            .put_token(&format!("u{i}"), "google", &token_body("bounded"))
            .await;
    }
    let reader = writer
        .sibling_with(|config| config.kms.cache_max_entries = 5)
        .await;
    for i in 0..12 {
        assert_eq!(
            reader.get_token(&format!("u{i}"), "google").await.status(),
            200
        );
    }
    let entries = reader.metric("token_store_unwrap_cache_entries", &[]).await;
    assert!((1.0..=5.0).contains(&entries), "{entries}");
    assert_eq!(reader.kms_calls(KmsOperation::Decrypt).await, 12.0);
}
