//! What `--wait` and `--watch` say on stderr while a ticket is not done, so
//! that a wait on a queue nobody serves (a typo such as `uper`) does not
//! look like a hang, and a long task shows how far it got.
//!
//! - [`WaitNotes`]: the ticket id and its waiting reason (as the gateway
//!   words it in `Ticket.waiting_reason`) when the wait starts, and again
//!   whenever the state or the reason changes.
//! - [`ProgressView`]: the worker's progress reports: a bar (percent and
//!   message) when stderr is a terminal; otherwise one plain line per
//!   change, at most one per [`PROGRESS_LINE_INTERVAL`], so a worker that
//!   reports thousands of times a second cannot flood a pipe or a log.
//!
//! Stdout is not touched here: it carries the result (or the events) as
//! before, and scripts read it.

use std::io::IsTerminal as _;
use std::time::Duration;

use asyncgate_client::{is_terminal, pb};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::output::state_name;

/// Shortest time between two plain progress lines.
pub(crate) const PROGRESS_LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Writes one line to stderr. A closed stderr is no reason to fail the
/// command (stdout holds what matters), so write errors are ignored.
fn note(text: &str) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// `ticket ID STATE: why`, or `None` once the ticket is terminal (the
/// result on stdout says the rest).
pub(crate) fn reason_line(ticket: &pb::Ticket) -> Option<String> {
    let state = ticket.state();
    if is_terminal(state) {
        return None;
    }
    let why = ticket
        .waiting_reason
        .as_ref()
        .map(|w| w.description.as_str())
        .filter(|d| !d.is_empty());
    Some(match why {
        Some(why) => format!("ticket {} {}: {why}", ticket.id, state_name(state)),
        None => format!("ticket {} {}", ticket.id, state_name(state)),
    })
}

/// Prints a ticket's waiting reason when first seen and on every change.
#[derive(Debug, Default)]
pub(crate) struct WaitNotes {
    /// The last line printed, to print only changes.
    last: Option<String>,
}

impl WaitNotes {
    /// Notes `ticket`'s state and reason if they differ from the last ones
    /// printed.
    pub(crate) fn observe(&mut self, ticket: &pb::Ticket) {
        let Some(line) = reason_line(ticket) else {
            return;
        };
        if self.last.as_ref() != Some(&line) {
            note(&line);
            self.last = Some(line);
        }
    }
}

/// A progress report as shown: percent and message.
type Shown = (u32, String);

/// Shows a ticket's progress reports on stderr.
pub(crate) struct ProgressView {
    /// The bar, when stderr is a terminal (created at the first report).
    bar: Option<ProgressBar>,
    /// Whether to draw a bar rather than write lines.
    terminal: bool,
    /// The last report shown (bar or line), to show only changes.
    shown: Option<Shown>,
    /// A report held back by the line rate limit, shown when it expires.
    pending: Option<(String, Shown)>,
    /// When the last plain line was written.
    last_line: Option<Instant>,
}

impl ProgressView {
    /// A bar if stderr is a terminal, plain lines otherwise.
    pub(crate) fn for_stderr() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    pub(crate) fn new(terminal: bool) -> Self {
        ProgressView {
            bar: None,
            terminal,
            shown: None,
            pending: None,
            last_line: None,
        }
    }

    /// Takes in an event: a PROGRESS event's report is shown (or held back
    /// by the rate limit); a terminal event clears the bar.
    pub(crate) fn observe(&mut self, event: &pb::TicketEvent) {
        let Some(ticket) = &event.ticket else {
            return;
        };
        if is_terminal(ticket.state()) {
            self.finish();
            return;
        }
        if event.kind() != pb::TicketEventKind::Progress {
            return;
        }
        let progress = ticket.progress.clone().unwrap_or_default();
        let report = (progress.percent.min(100), progress.message);
        if self.shown.as_ref() == Some(&report) {
            self.pending = None;
            return;
        }
        if self.terminal {
            let bar = self.bar.get_or_insert_with(new_bar);
            bar.set_position(u64::from(report.0));
            bar.set_message(report.1.clone());
            self.shown = Some(report);
            return;
        }
        self.pending = Some((ticket.id.clone(), report));
        if self.next_line_at().is_none_or(|at| at <= Instant::now()) {
            self.flush();
        }
    }

    /// When a held-back report is due (`None`: nothing is held back).
    pub(crate) fn next_line_at(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(
            self.last_line
                .map_or_else(Instant::now, |at| at + PROGRESS_LINE_INTERVAL),
        )
    }

    /// Writes the held-back report, if any, as a line.
    pub(crate) fn flush(&mut self) {
        let Some((id, (percent, message))) = self.pending.take() else {
            return;
        };
        if message.is_empty() {
            note(&format!("ticket {id} progress {percent}%"));
        } else {
            note(&format!("ticket {id} progress {percent}%: {message}"));
        }
        self.last_line = Some(Instant::now());
        self.shown = Some((percent, message));
    }

    /// Runs `print` (a write to stdout) without the bar in the way: on a
    /// terminal, the bar is cleared first and drawn again after.
    pub(crate) fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// Removes the bar; a report still held back is dropped (the ticket's
    /// end says more).
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.pending = None;
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        self.finish();
    }
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
    // The template is a constant: a bad one is a bug caught by the tests.
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos:>3}% {wide_msg}") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(state: pb::TicketState, why: &str) -> pb::Ticket {
        pb::Ticket {
            id: "0193".into(),
            state: state as i32,
            waiting_reason: Some(pb::WaitingReason {
                description: why.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn progress(percent: u32, message: &str) -> pb::TicketEvent {
        let mut ticket = ticket(pb::TicketState::Running, "");
        ticket.progress = Some(pb::Progress {
            percent,
            message: message.into(),
        });
        pb::TicketEvent {
            seq: 3,
            kind: pb::TicketEventKind::Progress as i32,
            ticket: Some(ticket),
            output: None,
            ..Default::default()
        }
    }

    #[test]
    fn reason_lines_name_the_ticket_state_and_why() {
        assert_eq!(
            reason_line(&ticket(pb::TicketState::Pending, "no worker")).as_deref(),
            Some("ticket 0193 PENDING: no worker")
        );
        assert_eq!(
            reason_line(&ticket(pb::TicketState::Running, "")).as_deref(),
            Some("ticket 0193 RUNNING")
        );
        assert_eq!(reason_line(&ticket(pb::TicketState::Succeeded, "")), None);
        let mut notes = WaitNotes::default();
        notes.observe(&ticket(pb::TicketState::Pending, "no worker"));
        assert_eq!(
            notes.last.as_deref(),
            Some("ticket 0193 PENDING: no worker")
        );
    }

    #[test]
    fn the_bar_follows_every_report_and_goes_at_the_end() {
        // indicatif draws nothing when stderr is not a terminal (as here),
        // but the bar's state is the same.
        let mut view = ProgressView::new(true);
        view.observe(&progress(10, "a"));
        view.observe(&progress(20, "b"));
        assert!(view.next_line_at().is_none(), "a bar is never held back");
        let bar = view.bar.clone().expect("a bar");
        assert_eq!(bar.position(), 20);
        assert_eq!(bar.message(), "b");
        let mut done = progress(100, "");
        if let Some(ticket) = done.ticket.as_mut() {
            ticket.state = pb::TicketState::Succeeded as i32;
        }
        view.observe(&done);
        assert!(view.bar.is_none(), "the terminal event clears the bar");
    }

    #[tokio::test(start_paused = true)]
    async fn plain_progress_lines_are_rate_limited() {
        let mut view = ProgressView::new(false);
        view.observe(&progress(10, "a"));
        assert_eq!(
            view.shown,
            Some((10, "a".into())),
            "the first shows at once"
        );
        view.observe(&progress(20, "b"));
        view.observe(&progress(30, "c"));
        assert_eq!(view.shown, Some((10, "a".into())), "held back");
        let due = view.next_line_at().expect("a report is held back");
        assert_eq!(due - Instant::now(), PROGRESS_LINE_INTERVAL);
        tokio::time::advance(PROGRESS_LINE_INTERVAL).await;
        view.flush();
        assert_eq!(view.shown, Some((30, "c".into())), "the latest wins");
        assert!(view.next_line_at().is_none());
        // The same report again is not a change.
        view.observe(&progress(30, "c"));
        assert!(view.next_line_at().is_none());
    }
}
