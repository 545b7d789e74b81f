//! Tracing set-up. Spans and events name users and providers, never secrets.
//!
//! The JSON format is written here rather than by `tracing_subscriber`'s `json()`: that one
//! keeps each span's fields as a JSON object and parses it back for every event, and
//! re-parses it for every `record`, a large share of a read's CPU at full rate. Here a span's
//! fields are rendered once, as a ready `"key":value` fragment, and copied into each event.
//! The shape is the same: one object per line, the event's fields flattened, and the
//! current span under `span` with its `name`.

use std::fmt::{self, Write};

use chrono::Utc;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as subscriber_fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber: `RUST_LOG` or `info`, in the chosen format, to stdout.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = subscriber_fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder
            .event_format(JsonLines)
            .fmt_fields(JsonFields)
            .try_init(),
        LogFormat::Pretty => builder.with_target(true).try_init(),
    };
    // A subscriber set earlier (tests) stays.
    let _ = result;
}

/// Events as JSON lines: `timestamp`, `level`, the event's fields, `target`, and the
/// current span (its fields and `name`) under `span`.
pub struct JsonLines;

/// Span fields as a JSON fragment, `"key":value,...`, for [`JsonLines`].
pub struct JsonFields;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            r#"{{"timestamp":"{}","level":"{}""#,
            Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            meta.level()
        )?;
        let mut fields = FieldWriter::new(&mut writer, false);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(r#","target":"#)?;
        write_string(&mut writer, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(r#","span":{"#)?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                if !fields.is_empty() {
                    writer.write_str(fields)?;
                    writer.write_char(',')?;
                }
            }
            writer.write_str(r#""name":"#)?;
            write_string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = FieldWriter::new(&mut writer, true);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = FieldWriter::new(&mut writer, first);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes each field as `,"name":value` (the first without its comma when `first`).
struct FieldWriter<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> FieldWriter<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>, first: bool) -> Self {
        Self {
            writer,
            first,
            result: Ok(()),
        }
    }

    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.write_field(field, value);
        }
    }

    fn write_field(
        &mut self,
        field: &Field,
        value: impl FnOnce(&mut Writer<'w>) -> fmt::Result,
    ) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(',')?;
        }
        write_string(self.writer, field.name())?;
        self.writer.write_char(':')?;
        value(self.writer)
    }
}

impl Visit for FieldWriter<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| write_string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.field(field, |w| write!(w, "{value}"));
        } else {
            self.field(field, |w| w.write_str("null"));
        }
    }
}

fn write_string(writer: &mut impl Write, value: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(writer).write_str(value)?;
    writer.write_char('"')
}

/// Escapes what it is given for the inside of a JSON string.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let escape = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if c < ' ' => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{:04x}", c as u32)?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

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
        let subscriber = subscriber_fmt()
            .event_format(JsonLines)
            .fmt_fields(JsonFields)
            .with_writer(buffer.clone())
            .finish();
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
