//! The benchmark command itself keeps working: the `bench` binary in `--smoke` mode (tiny
//! numbers, no timing asserted) runs every section and its storm refreshes exactly once.
//!
//! The benchmark starts the `token-store` binary next to its own, which a workspace build
//! (`cargo nextest run --workspace`, the README's test command) has just built.

use std::process::Command;

use serde_json::Value;
use test_support::{database_server_url, kms_endpoint, TestDatabase};

#[test]
fn the_benchmark_runs_in_smoke_mode_and_reports_every_section() {
    let (results, stdout, _dir) = run_bench("bench_smoke", &[]);

    for section in [
        "machine",
        "parameters",
        "seed",
        "lookup_plan",
        "reads",
        "kms",
        "storm",
        "memory",
        "targets",
    ] {
        assert!(results.get(section).is_some(), "no {section} in {results}");
    }
    let reads = results["reads"].as_array().unwrap();
    assert_eq!(reads.len(), 3, "one entry per concurrency: {reads:?}");
    for r in reads {
        for service in ["service_row_cache_on", "service_row_cache_off"] {
            assert!(r[service]["requests"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(r[service]["errors"], 0, "{r}");
        }
        assert!(r["pgbench"]["tps"].as_f64().unwrap() > 0.0, "{r}");
        // Every user was read on the instance with the row cache before: its reads hit.
        let statements = &r["statements"];
        assert!(statements["row_cache_hits"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            statements["service_selects_per_read"].as_f64().is_some(),
            "{r}"
        );
        assert!(statements["database_per_read"].as_f64().is_some(), "{r}");
    }
    let chart = std::path::PathBuf::from(results["chart"].as_str().unwrap());
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("row cache on"),
        "{svg}"
    );
    assert_eq!(results["kms"]["cold"]["errors"], 0);
    assert_eq!(results["kms"]["warm"]["decrypts"], 0.0);
    assert_eq!(
        results["kms"]["refresh"]["succeeded"],
        results["kms"]["refresh"]["tokens"]
    );
    let storm = &results["storm"];
    assert_eq!(storm["provider_calls"], 1, "{storm}");
    assert_eq!(storm["succeeded"], storm["requests"], "{storm}");
    assert!(storm["cpu"]["service_us_per_request"].as_f64().is_some());
    let memory = &results["memory"];
    assert!(memory["rss_after_kib"].as_u64().unwrap() > 0);
    assert!(memory["grants_rss_after_kib"].as_u64().unwrap() > 0);
    assert!(memory["bytes_per_grant"].as_f64().is_some());
    // The cold and warm passes cached every user's row.
    assert!(
        memory["rows_cached"].as_f64().unwrap() >= results["parameters"]["users"].as_f64().unwrap(),
        "{memory}"
    );
    assert!(!results["targets"].as_array().unwrap().is_empty());
    assert!(stdout.contains("| target | value |"));
}

#[test]
fn the_keeper_benchmark_runs_and_refreshes_every_due_grant() {
    let (cost, _, _) = run_bench(
        "bench_keeper_smoke",
        &[
            "--keeper",
            "--keeper-grants",
            "200",
            "--keeper-due",
            "20",
            "--keeper-idle-seconds",
            "1",
            "--provider-delay-ms",
            "20",
        ],
    );
    assert_eq!(cost["grants"], 200, "{cost}");
    assert_eq!(cost["due"], 20, "{cost}");
    assert!(
        cost["refresh_all_seconds"].as_f64().unwrap() > 0.0,
        "{cost}"
    );
    assert!(cost["claim_ms"].as_f64().unwrap() >= 0.0, "{cost}");
}

/// Runs `bench --smoke` with `args` on a database of its own (dropped however the test
/// ends) and returns the JSON it wrote, its standard output and the directory of its files
/// (removed when dropped).
fn run_bench(purpose: &str, args: &[&str]) -> (Value, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    // The benchmark creates the database itself; the guard drops it however the test ends.
    let database = TestDatabase::reserve(purpose);
    let service = std::path::Path::new(env!("CARGO_BIN_EXE_bench")).with_file_name("token-store");
    assert!(
        service.exists(),
        "{} is missing: build the workspace (cargo nextest run --workspace)",
        service.display()
    );
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--smoke")
        .args(args)
        .args([
            "--database",
            database.name(),
            "--database-server",
            &database_server_url(),
            "--kms-endpoint",
            &kms_endpoint(),
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "bench {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let results = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    (
        results,
        String::from_utf8_lossy(&run.stdout).into_owned(),
        dir,
    )
}
