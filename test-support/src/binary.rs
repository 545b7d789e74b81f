//! Another instance of the service as a real process: the `token-store` binary on the
//! database and KMS key of a [`TestApp`], for what an in-process instance cannot show (being
//! killed with SIGKILL).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::app::{Api, TestApp, FULL_KEY};
use crate::env::kms_endpoint;

/// The binary serving on a free port; SIGKILLed when dropped.
pub struct BinaryInstance {
    child: Child,
    /// The instance's API, called with [`FULL_KEY`] (every permission).
    pub api: Api,
    _dir: tempfile::TempDir,
}

impl BinaryInstance {
    /// Starts `binary` (`env!("CARGO_BIN_EXE_token-store")`) on `app`'s database and key,
    /// with `sections` (TOML: `[refresh]`, `[webhooks]`, a provider's table...) added to
    /// its configuration, and waits until it answers `/healthz`.
    pub async fn start(binary: &Path, app: &TestApp, sections: &str) -> Self {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_path = dir.path().join("token-store.toml");
        std::fs::write(&config_path, config(listen, app, sections)).expect("writing the config");
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the binary");
        let api = Api::new(
            reqwest::Client::new(),
            &format!("http://{listen}"),
            Some(FULL_KEY),
        );
        let mut instance = Self {
            child,
            api,
            _dir: dir,
        };
        let started = Instant::now();
        while instance.api.try_healthz().await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the binary did not start"
            );
            assert!(
                instance.child.try_wait().unwrap().is_none(),
                "the binary exited early"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        instance
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BinaryInstance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(listen: SocketAddr, app: &TestApp, sections: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"

[database]
url = "{database_url}"

[kms]
key_id = "{key_id}"
endpoint_url = "{endpoint}"

{sections}

[[clients]]
name = "e2e"
key_sha256 = "{hash}"
permissions = ["read", "write", "refresh", "revoke", "read_refresh_token", "inspect"]
"#,
        database_url = app.database_url,
        key_id = app.key_id,
        endpoint = kms_endpoint(),
        hash = token_store::auth::key_hash_hex(FULL_KEY),
    )
}
