//! Printing tickets, events and ticket lists, as text for people or as the
//! proto3 JSON mapping for programs.
//!
//! JSON goes through `prost-reflect` with the gateway's own descriptor set,
//! so field names (lowerCamelCase), enum names, Timestamps (RFC 3339),
//! Durations ("1.5s"), 64-bit integers (strings) and `google.protobuf.Value`
//! payloads come out exactly as grpcurl prints them, with no hand-written
//! mapping to drift from the proto. One document per line.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context as _;
use asyncgate_client::{payload, pb};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::cli::OutputFormat;

/// Longest text or JSON preview of a payload in text output.
const PREVIEW_CHARS: usize = 4096;

/// Prints in the format chosen on the command line.
pub(crate) struct Printer {
    /// `None` in text mode (no descriptor decoding needed).
    json: Option<JsonMapper>,
}

struct JsonMapper {
    pool: DescriptorPool,
    ticket: MessageDescriptor,
    event: MessageDescriptor,
    list: MessageDescriptor,
}

impl Printer {
    pub(crate) fn new(format: OutputFormat) -> anyhow::Result<Self> {
        let json = match format {
            OutputFormat::Text => None,
            OutputFormat::Json => {
                let pool = DescriptorPool::decode(asyncgate_proto::FILE_DESCRIPTOR_SET)
                    .context("decoding the asyncgate descriptor set")?;
                let get = |name: &str| {
                    pool.get_message_by_name(name)
                        .with_context(|| format!("{name} is missing from the descriptor set"))
                };
                Some(JsonMapper {
                    ticket: get("asyncgate.v1.Ticket")?,
                    event: get("asyncgate.v1.TicketEvent")?,
                    list: get("asyncgate.v1.ListTicketsResponse")?,
                    pool,
                })
            }
        };
        Ok(Printer { json })
    }

    pub(crate) fn ticket(&self, ticket: &pb::Ticket) -> anyhow::Result<()> {
        match &self.json {
            Some(json) => emit(&to_json(&json.ticket, ticket)?),
            None => emit(&ticket_block(ticket)),
        }
    }

    /// Any message: its JSON mapping, or `text()` for people.
    pub(crate) fn message<M: prost::Message + prost::Name>(
        &self,
        message: &M,
        text: impl FnOnce(&M) -> String,
    ) -> anyhow::Result<()> {
        match &self.json {
            Some(json) => {
                let name = M::full_name();
                let descriptor = json
                    .pool
                    .get_message_by_name(&name)
                    .with_context(|| format!("{name} is missing from the descriptor set"))?;
                emit(&to_json(&descriptor, message)?)
            }
            None => emit(text(message).trim_end()),
        }
    }

    /// `SERVING` or `NOT_SERVING`, as grpc.health.v1 names them.
    pub(crate) fn health(&self, serving: bool) -> anyhow::Result<()> {
        let status = if serving { "SERVING" } else { "NOT_SERVING" };
        match &self.json {
            Some(_) => emit(&serde_json::json!({ "status": status }).to_string()),
            None => emit(status),
        }
    }

    /// A ticket of `submit --batch`: its JSON, or its one-line summary.
    pub(crate) fn batch_ticket(&self, ticket: &pb::Ticket) -> anyhow::Result<()> {
        match &self.json {
            Some(json) => emit(&to_json(&json.ticket, ticket)?),
            None => emit(&ticket_line(ticket)),
        }
    }

    /// A line of `submit --batch` that was refused or could not be read.
    pub(crate) fn batch_refusal(
        &self,
        line: u64,
        code: tonic::Code,
        message: &str,
    ) -> anyhow::Result<()> {
        let code = crate::bench::code_name(code);
        match &self.json {
            Some(_) => emit(
                &serde_json::json!({ "line": line, "code": code, "message": message }).to_string(),
            ),
            None => emit(&format!("line {line}: {code}: {message}")),
        }
    }

    pub(crate) fn event(&self, event: &pb::TicketEvent) -> anyhow::Result<()> {
        match &self.json {
            Some(json) => emit(&to_json(&json.event, event)?),
            None => emit(&event_text(event)),
        }
    }

    pub(crate) fn list(&self, response: &pb::ListTicketsResponse) -> anyhow::Result<()> {
        match &self.json {
            Some(json) => emit(&to_json(&json.list, response)?),
            None => {
                let mut text = String::new();
                for ticket in &response.tickets {
                    text.push_str(&ticket_line(ticket));
                    text.push('\n');
                }
                if response.tickets.is_empty() {
                    text.push_str("(no tickets)\n");
                }
                if !response.next_page_token.is_empty() {
                    let _ = writeln!(text, "(more: --page-token {})", response.next_page_token);
                }
                emit(text.trim_end())
            }
        }
    }
}

/// Writes one line (or block) to stdout. Errors (a closed pipe) are returned
/// rather than panicking as `println!` would.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// The proto3 JSON mapping of `message`, compact, on one line.
pub(crate) fn to_json<M: prost::Message>(
    descriptor: &MessageDescriptor,
    message: &M,
) -> anyhow::Result<String> {
    let mut dynamic = DynamicMessage::new(descriptor.clone());
    dynamic
        .transcode_from(message)
        .with_context(|| format!("re-encoding a {}", descriptor.full_name()))?;
    let mut serializer = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .context("printing JSON")?;
    String::from_utf8(serializer.into_inner()).context("printing JSON")
}

/// Rows under headers, each column as wide as its widest cell, two spaces
/// apart; numbers (cells that parse as one) right-aligned.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = width - cell.chars().count();
            if cell.parse::<f64>().is_ok() {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_owned()
    };
    let mut text = line(&mut headers.iter().copied());
    for row in rows {
        text.push('\n');
        text.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    text
}

/// `SUCCEEDED` for `TICKET_STATE_SUCCEEDED`.
pub(crate) fn state_name(state: pb::TicketState) -> &'static str {
    state.as_str_name().trim_start_matches("TICKET_STATE_")
}

fn event_kind_name(kind: pb::TicketEventKind) -> &'static str {
    kind.as_str_name().trim_start_matches("TICKET_EVENT_KIND_")
}

/// One line: `ID  QUEUE  STATE  attempt A/M`.
pub(crate) fn ticket_line(ticket: &pb::Ticket) -> String {
    let mut line = format!(
        "{}  {}  {}  attempt {}/{}",
        ticket.id,
        ticket.queue,
        state_name(ticket.state()),
        ticket.attempt,
        ticket.max_attempts
    );
    if ticket.priority != 0 {
        let _ = write!(line, "  priority {}", ticket.priority);
    }
    line
}

/// The ticket line plus indented details: result, error, progress, why it
/// is waiting.
pub(crate) fn ticket_block(ticket: &pb::Ticket) -> String {
    let mut text = ticket_line(ticket);
    ticket_details(ticket, &mut text);
    text
}

fn ticket_details(ticket: &pb::Ticket, text: &mut String) {
    if let Some(result) = &ticket.result {
        let _ = write!(text, "\n  result: {}", payload_preview(result));
    }
    if let Some(error) = &ticket.error {
        let _ = write!(text, "\n  error: {}", error_text(error));
    }
    let progress = ticket
        .progress
        .as_ref()
        .filter(|p| p.percent > 0 || !p.message.is_empty());
    if let Some(progress) = progress {
        let _ = write!(
            text,
            "\n  progress: {}% {}",
            progress.percent, progress.message
        );
    }
    let waiting = ticket
        .waiting_reason
        .as_ref()
        .filter(|w| !w.description.is_empty());
    if let Some(waiting) = waiting {
        let _ = write!(text, "\n  waiting: {}", waiting.description);
    }
}

/// One line per event (plus the result or error of a terminal one).
pub(crate) fn event_text(event: &pb::TicketEvent) -> String {
    let kind = event.kind();
    let mut text = format!("#{} {}", event.seq, event_kind_name(kind));
    match (kind, &event.ticket) {
        (pb::TicketEventKind::Output, _) => {
            let chunk = event
                .output
                .as_ref()
                .map(payload_preview)
                .unwrap_or_default();
            let _ = write!(text, " {chunk}");
        }
        (pb::TicketEventKind::Progress, Some(ticket)) => {
            let progress = ticket.progress.clone().unwrap_or_default();
            let _ = write!(text, " {}% {}", progress.percent, progress.message);
        }
        (_, Some(ticket)) => {
            let _ = write!(text, " {}", ticket_line(ticket));
            ticket_details(ticket, &mut text);
        }
        (_, None) => {}
    }
    text.trim_end().to_owned()
}

fn error_text(error: &pb::TicketError) -> String {
    let code = tonic::Code::from_i32(error.code);
    let retry = if error.retryable { " (retryable)" } else { "" };
    format!("{code:?}: {}{retry}", error.message)
}

/// JSON as compact JSON; UTF-8 binary as its text; other bytes as a size
/// and a hex prefix. Long previews are cut.
pub(crate) fn payload_preview(p: &pb::Payload) -> String {
    if let Some(value) = payload::to_json(p) {
        return truncate(value.to_string(), PREVIEW_CHARS);
    }
    let Some(data) = payload::as_binary(p) else {
        return "(empty)".to_owned();
    };
    let content_type = if p.content_type.is_empty() {
        "binary"
    } else {
        p.content_type.as_str()
    };
    match std::str::from_utf8(data) {
        Ok(text) if !data.is_empty() => truncate(text.to_owned(), PREVIEW_CHARS),
        _ => {
            let hex: String = data.iter().take(16).map(|b| format!("{b:02x}")).collect();
            let more = if data.len() > 16 { "…" } else { "" };
            format!("<{} bytes {content_type}> {hex}{more}", data.len())
        }
    }
}

fn truncate(mut text: String, max_chars: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max_chars) {
        let total = text.len();
        text.truncate(cut);
        let _ = write!(text, "… ({total} bytes)");
    }
    text
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn ticket() -> pb::Ticket {
        pb::Ticket {
            id: "0193".into(),
            queue: "upper".into(),
            state: pb::TicketState::Succeeded as i32,
            attempt: 1,
            max_attempts: 3,
            seq: 5,
            result: Some(payload::json(serde_json::json!("HELLO"))),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            attempt_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn json_uses_the_proto3_mapping() -> anyhow::Result<()> {
        let printer = Printer::new(OutputFormat::Json)?;
        let Some(mapper) = &printer.json else {
            anyhow::bail!("json mode without a mapper");
        };
        let text = to_json(&mapper.ticket, &ticket())?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(value["state"], "TICKET_STATE_SUCCEEDED");
        assert_eq!(value["maxAttempts"], 3);
        assert_eq!(value["seq"], "5");
        assert_eq!(value["result"]["json"], "HELLO");
        assert_eq!(value["createdAt"], "2023-11-14T22:13:20Z");
        assert_eq!(value["attemptTimeout"], "1.500s");
        assert!(!text.contains('\n'));

        let event = pb::TicketEvent {
            seq: 6,
            kind: pb::TicketEventKind::Output as i32,
            ticket: None,
            output: Some(payload::binary(Bytes::from_static(b"hi"), "text/plain")),
            ..Default::default()
        };
        let value: serde_json::Value = serde_json::from_str(&to_json(&mapper.event, &event)?)?;
        assert_eq!(value["kind"], "TICKET_EVENT_KIND_OUTPUT");
        assert_eq!(value["output"]["binary"], "aGk=");
        assert_eq!(value["output"]["contentType"], "text/plain");
        Ok(())
    }

    #[test]
    fn text_lines() {
        let t = ticket();
        assert_eq!(ticket_line(&t), "0193  upper  SUCCEEDED  attempt 1/3");
        assert_eq!(
            ticket_block(&t),
            "0193  upper  SUCCEEDED  attempt 1/3\n  result: \"HELLO\""
        );

        let mut failed = ticket();
        failed.state = pb::TicketState::Failed as i32;
        failed.result = None;
        failed.error = Some(pb::TicketError {
            code: tonic::Code::Unknown as i32,
            message: "boom".into(),
            retryable: true,
        });
        assert!(ticket_block(&failed).ends_with("error: Unknown: boom (retryable)"));

        let event = pb::TicketEvent {
            seq: 7,
            kind: pb::TicketEventKind::Output as i32,
            ticket: None,
            output: Some(payload::text("partial")),
            ..Default::default()
        };
        assert_eq!(event_text(&event), "#7 OUTPUT partial");
    }

    #[test]
    fn previews() {
        assert_eq!(
            payload_preview(&payload::binary(Bytes::from_static(&[0, 255]), "")),
            "<2 bytes binary> 00ff"
        );
        assert_eq!(payload_preview(&pb::Payload::default()), "(empty)");
        let long = truncate("é".repeat(10), 4);
        assert_eq!(long, "éééé… (20 bytes)");
    }
}
