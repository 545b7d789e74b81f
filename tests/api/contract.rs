//! The contract as served: `/openapi.json` needs no key and is the committed `openapi.json`.

use serde_json::Value;

use test_support::TestApp;

#[tokio::test]
async fn the_served_contract_is_the_committed_openapi_json() {
    let app = TestApp::spawn().await;
    let response = app.openapi_json().await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await.unwrap();
    let committed = include_str!("../../openapi.json");
    assert!(
        served == committed,
        "the served contract differs from openapi.json"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
