//! Tracing set-up. Spans and events name users and providers, never secrets.
//!
//! The `json` format is `json-subscriber`'s layer (the JSON format of `tracing-subscriber`,
//! written faster: a span's fields are serialised once, not parsed back for every event;
//! docs/benchmarks.md has the figures), set up once here in [`json_lines`], which
//! production ([`init`]) and the tests' log capture both use: one object per line with
//! `timestamp`, `level`, the event's fields at the top level (`message` among them),
//! `target`, and the current span's fields and `name` under `span`.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber: `RUST_LOG` or `info`, in the chosen format, to stdout.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = match format {
        LogFormat::Json => json_lines(filter, std::io::stdout).try_init(),
        LogFormat::Pretty => tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().with_target(true))
            .try_init(),
    };
    // A subscriber set earlier (tests) stays.
    let _ = result;
}

/// The JSON lines subscriber: the events `filter` lets through, one JSON object a line, to
/// `writer`. Events' fields are flattened to the top level; the current span is under
/// `span` (its fields and `name`), without the list of enclosing spans.
pub fn json_lines<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = json_subscriber::fmt::layer()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer);
    tracing_subscriber::registry().with(filter).with(layer)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines_of(body: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let subscriber = json_lines(EnvFilter::new("trace"), buffer.clone());
        tracing::subscriber::with_default(subscriber, body);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn events_are_json_lines_with_their_fields_and_their_span() {
        let lines = lines_of(|| {
            let span = tracing::info_span!(
                "request",
                route = "/v1/x",
                request_id = "r-1",
                late = tracing::field::Empty
            );
            let _entered = span.enter();
            span.record("late", 7_u64);
            tracing::info!(
                target: "token_store::audit",
                text = "quote \" backslash \\ newline \n tab \t bell \u{7} é",
                count = -3_i64,
                ratio = 0.5,
                infinite = f64::INFINITY,
                ok = true,
                debugged = ?Some("x"),
                "audit {}", 1
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "audit 1");
        assert_eq!(line["target"], "token_store::audit");
        assert_eq!(
            line["text"],
            "quote \" backslash \\ newline \n tab \t bell \u{7} é"
        );
        assert_eq!(line["count"], -3);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["infinite"], Value::Null);
        assert_eq!(line["ok"], true);
        assert_eq!(line["debugged"], "Some(\"x\")");
        assert_eq!(line["span"]["name"], "request");
        assert_eq!(line["span"]["route"], "/v1/x");
        assert_eq!(line["span"]["request_id"], "r-1");
        assert_eq!(line["span"]["late"], 7);
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "{timestamp}"
        );
    }

    #[test]
    fn an_event_outside_any_span_has_no_span() {
        let lines = lines_of(|| tracing::warn!("plain"));
        assert_eq!(lines[0]["message"], "plain");
        assert_eq!(lines[0]["level"], "WARN");
        assert!(lines[0].get("span").is_none());
    }
}
