//! When a schedule fires: a cron expression (five fields, or six with
//! seconds first) read in an IANA time zone, or a fixed interval; within
//! optional start and end times.
//!
//! Daylight-saving changes follow croner (the Open Cron Pattern
//! Specification, as Vixie cron does): a fixed time that a spring-forward
//! gap skips fires once, right after the gap; a fixed time that a fall-back
//! repeats fires once, at its first occurrence; wildcard and step fields
//! fire at each real occurrence. So a daily job neither runs twice nor is
//! missed on the days the clocks change.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The shortest interval accepted: a schedule is not a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How a schedule repeats.
#[derive(Debug, Clone)]
pub enum Every {
    /// A cron expression.
    Cron {
        /// As given.
        expression: String,
        /// Parsed.
        cron: Box<Cron>,
    },
    /// Every so long, counted from the start time (or the Unix epoch, so
    /// that "every 15 minutes" fires on the quarter hours).
    Interval(Duration),
}

/// A validated schedule spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// How it repeats.
    pub every: Every,
    /// The IANA name cron expressions are read in.
    pub zone: String,
    tz: TimeZone,
    /// No fire before this.
    pub start_at: Option<SystemTime>,
    /// No fire after this.
    pub end_at: Option<SystemTime>,
}

/// Why a spec was refused: the field, and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// The spec field at fault (`cron`, `interval`, `time_zone`, `end_at`).
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

const FIVE: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const SIX: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).build()
}

/// Parses a cron expression; an error says which field is wrong.
pub fn parse_cron(expression: &str) -> Result<Cron, SpecError> {
    let trimmed = expression.trim();
    let usage = "use five fields (minute hour day-of-month month day-of-week) or six with seconds first, e.g. \"*/15 * * * *\"";
    if trimmed.is_empty() {
        return Err(refuse("cron", format!("is empty; {usage}")));
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        // A nickname (@daily, @hourly, ...).
        1 if trimmed.starts_with('@') => &[],
        5 => &FIVE,
        6 => &SIX,
        n => {
            return Err(refuse(
                "cron",
                format!("{trimmed:?} has {n} fields; {usage}"),
            ));
        }
    };
    match parser().parse(trimmed) {
        Ok(cron) => Ok(cron),
        Err(error) => {
            // Find the field at fault: parse it alone, every other field `*`.
            let culprit = (0..names.len()).find(|&i| {
                let probe: Vec<&str> = (0..names.len())
                    .map(|j| if i == j { fields[i] } else { "*" })
                    .collect();
                parser().parse(&probe.join(" ")).is_err()
            });
            Err(refuse(
                "cron",
                match culprit {
                    Some(i) => format!(
                        "field {} ({}) {:?} of {trimmed:?} is not valid ({error}); {usage}",
                        i + 1,
                        names[i],
                        fields[i]
                    ),
                    None => format!("{trimmed:?} is not valid ({error}); {usage}"),
                },
            ))
        }
    }
}

/// An IANA time zone by name ("" is UTC).
pub fn parse_zone(name: &str) -> Result<(String, TimeZone), SpecError> {
    if name.is_empty() || name == "UTC" {
        return Ok(("UTC".into(), TimeZone::UTC));
    }
    TimeZone::get(name).map(|tz| (name.to_owned(), tz)).map_err(|_| {
        refuse(
            "time_zone",
            format!("{name:?} is not a known IANA time zone; use a name such as \"Europe/Berlin\" or \"America/New_York\" (empty for UTC)"),
        )
    })
}

impl Spec {
    /// A spec from its parts: one of `cron` or `interval`.
    pub fn new(
        cron: Option<&str>,
        interval: Option<Duration>,
        zone: &str,
        start_at: Option<SystemTime>,
        end_at: Option<SystemTime>,
    ) -> Result<Self, SpecError> {
        let every = match (cron, interval) {
            (Some(_), Some(_)) => {
                return Err(refuse("interval", "set either cron or interval, not both"));
            }
            (None, None) => {
                return Err(refuse(
                    "cron",
                    "a schedule needs a cron expression or an interval",
                ));
            }
            (Some(expression), None) => Every::Cron {
                expression: expression.trim().to_owned(),
                cron: Box::new(parse_cron(expression)?),
            },
            (None, Some(every)) if every < MIN_INTERVAL => {
                return Err(refuse(
                    "interval",
                    format!("{every:?} is shorter than the minimum of {MIN_INTERVAL:?}"),
                ));
            }
            (None, Some(every)) => Every::Interval(every),
        };
        let (zone, tz) = parse_zone(zone)?;
        if let (Some(start), Some(end)) = (start_at, end_at)
            && end <= start
        {
            return Err(refuse(
                "end_at",
                "is not after start_at; a schedule must end after it starts",
            ));
        }
        let spec = Self {
            every,
            zone,
            tz,
            start_at,
            end_at,
        };
        if spec
            .next_after(start_at.unwrap_or_else(SystemTime::now))
            .is_none()
            && end_at.is_none()
        {
            return Err(refuse(
                "cron",
                "never matches a date (such as February 30); check the day and month fields",
            ));
        }
        Ok(spec)
    }

    /// The first fire time strictly after `after`, not before the start and
    /// not past the end; `None` when there is none.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        // Before the start, the start itself may be the first fire.
        let (from, inclusive) = match self.start_at {
            Some(start) if after < start => (start, true),
            _ => (after, false),
        };
        let next = match &self.every {
            Every::Interval(every) => {
                let anchor = self.start_at.unwrap_or(UNIX_EPOCH);
                let since = from.duration_since(anchor).unwrap_or_default();
                let periods = since.as_nanos() / every.as_nanos();
                let exact = since.as_nanos() % every.as_nanos() == 0;
                let k = if inclusive && exact {
                    periods
                } else {
                    periods + 1
                };
                anchor.checked_add(Duration::from_nanos(
                    u64::try_from(k * every.as_nanos()).ok()?,
                ))?
            }
            Every::Cron { cron, .. } => {
                let zoned = Timestamp::try_from(from).ok()?.to_zoned(self.tz.clone());
                let found = cron.find_next_occurrence(&zoned, inclusive).ok()?;
                SystemTime::from(found.timestamp())
            }
        };
        match self.end_at {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// Up to `count` fire times after `after`.
    pub fn upcoming(&self, after: SystemTime, count: usize) -> Vec<SystemTime> {
        let mut times = Vec::with_capacity(count);
        let mut at = after;
        while times.len() < count {
            match self.next_after(at) {
                Some(next) => {
                    times.push(next);
                    at = next;
                }
                None => break,
            }
        }
        times
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        SystemTime::from(text.parse::<Timestamp>().unwrap())
    }

    fn cron(expression: &str, zone: &str) -> Spec {
        Spec::new(Some(expression), None, zone, None, None).unwrap()
    }

    fn texts(times: &[SystemTime]) -> Vec<String> {
        times
            .iter()
            .map(|t| Timestamp::try_from(*t).unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_daily_job_runs_once_on_each_dst_change_day() {
        let spec = cron("30 1 * * *", "America/New_York");
        // Fall back on 2026-11-01: 01:30 happens twice; it fires once.
        let times = spec.upcoming(at("2026-10-31T12:00:00Z"), 3);
        assert_eq!(
            texts(&times),
            [
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z",
                "2026-11-03T06:30:00Z"
            ]
        );
        // Spring forward on 2026-03-08: 02:30 does not exist; it fires at
        // 03:00 that day, once.
        let spec = cron("30 2 * * *", "America/New_York");
        let times = spec.upcoming(at("2026-03-07T12:00:00Z"), 3);
        assert_eq!(
            texts(&times),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z"
            ]
        );
    }

    #[test]
    fn an_hourly_job_follows_real_hours_through_the_fall_back() {
        let spec = cron("0 * * * *", "Europe/Berlin");
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; every real hour fires.
        let times = spec.upcoming(at("2026-10-24T23:30:00Z"), 4);
        assert_eq!(
            texts(&times),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z"
            ]
        );
    }

    #[test]
    fn six_fields_have_seconds_and_intervals_align_to_their_anchor() {
        let spec = cron("*/20 * * * * *", "UTC");
        assert_eq!(
            texts(&spec.upcoming(at("2026-01-01T00:00:05Z"), 2)),
            ["2026-01-01T00:00:20Z", "2026-01-01T00:00:40Z"]
        );
        let every = Spec::new(None, Some(Duration::from_secs(900)), "", None, None).unwrap();
        assert_eq!(
            texts(&every.upcoming(at("2026-01-01T00:07:00Z"), 2)),
            ["2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z"]
        );
        let start = at("2026-01-01T00:01:00Z");
        let end = at("2026-01-01T00:31:00Z");
        let bounded = Spec::new(
            None,
            Some(Duration::from_secs(900)),
            "",
            Some(start),
            Some(end),
        )
        .unwrap();
        assert_eq!(
            texts(&bounded.upcoming(at("2025-12-31T00:00:00Z"), 5)),
            [
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:16:00Z",
                "2026-01-01T00:31:00Z"
            ]
        );
    }

    #[test]
    fn bad_specs_say_which_field_and_what_to_fix() {
        let error = parse_cron("0 25 * * *").unwrap_err();
        assert!(error.reason.contains("field 2 (hour) \"25\""), "{error}");
        let error = parse_cron("* * *").unwrap_err();
        assert!(error.reason.contains("has 3 fields"), "{error}");
        let error = parse_cron("1 2 3 4 5 6 7").unwrap_err();
        assert!(error.reason.contains("has 7 fields"), "{error}");
        let error = parse_cron("*/5 * * * frogday").unwrap_err();
        assert!(error.reason.contains("field 5 (day-of-week)"), "{error}");
        let error = Spec::new(Some("* * * * *"), None, "Mars/Olympus", None, None).unwrap_err();
        assert_eq!(error.field, "time_zone");
        let error = Spec::new(Some("0 0 30 2 *"), None, "UTC", None, None).unwrap_err();
        assert!(error.reason.contains("never matches"), "{error}");
        let now = SystemTime::now();
        let error = Spec::new(Some("* * * * *"), None, "UTC", Some(now), Some(now)).unwrap_err();
        assert_eq!(error.field, "end_at");
        let error =
            Spec::new(None, Some(Duration::from_millis(10)), "UTC", None, None).unwrap_err();
        assert_eq!(error.field, "interval");
        assert!(parse_cron("@daily").is_ok());
    }
}
