//! Process metrics under the standard Prometheus names (those of
//! client_golang's process collector), read from `/proc` at scrape time:
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`.
//!
//! `/proc` is read with the `procfs` crate (without default features it is
//! procfs-core plus rustix, which the tree already has): its parsers of
//! `stat`, `limits` and `/proc/stat`'s boot time are maintained and tested,
//! where ours would be one more hand-written parser. Linux only: elsewhere
//! the collector encodes nothing and the family is simply absent. A read
//! that fails leaves out what it would have produced and is logged at
//! debug: a scrape never fails because of it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes the process family on every scrape.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, _encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        #[cfg(target_os = "linux")]
        linux::encode(_encoder)?;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use procfs::process::{LimitValue, Process};
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::registry::Unit;

    /// What one scrape read; each part is `None` when its read failed.
    #[derive(Debug, Default)]
    pub(super) struct Sample {
        pub(super) cpu_seconds: Option<f64>,
        pub(super) resident_bytes: Option<u64>,
        pub(super) virtual_bytes: Option<u64>,
        pub(super) start_time_seconds: Option<f64>,
        pub(super) open_fds: Option<u64>,
        pub(super) max_fds: Option<u64>,
    }

    fn logged<T>(what: &str, result: procfs::ProcResult<T>) -> Option<T> {
        result
            .inspect_err(|error| tracing::debug!(%error, "process metrics: cannot read {what}"))
            .ok()
    }

    pub(super) fn sample() -> Sample {
        let Some(me) = logged("/proc/self", Process::myself()) else {
            return Sample::default();
        };
        let mut sample = Sample::default();
        let ticks = procfs::ticks_per_second() as f64;
        if let Some(stat) = logged("/proc/self/stat", me.stat()) {
            sample.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            sample.resident_bytes = Some(stat.rss * procfs::page_size());
            sample.virtual_bytes = Some(stat.vsize);
            if let Some(boot) = logged("the boot time", procfs::boot_time_secs()) {
                sample.start_time_seconds = Some(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        sample.open_fds = logged("/proc/self/fd", me.fd_count()).map(|n| n as u64);
        if let Some(limits) = logged("/proc/self/limits", me.limits()) {
            sample.max_fds = Some(match limits.max_open_files.soft_limit {
                LimitValue::Value(max) => max,
                // As client_golang: an unlimited soft limit is the largest
                // value there is.
                LimitValue::Unlimited => u64::MAX,
            });
        }
        sample
    }

    pub(super) fn encode(mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = sample();
        if let Some(seconds) = sample.cpu_seconds {
            ConstCounter::new(seconds).encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                sample.resident_bytes.map(|b| b as f64),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                sample.virtual_bytes.map(|b| b as f64),
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                sample.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                sample.open_fds.map(|n| n as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                sample.max_fds.map(|n| n as f64),
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(value) = value {
                ConstGauge::new(value).encode(encoder.encode_descriptor(
                    name,
                    help,
                    unit.as_ref(),
                    MetricType::Gauge,
                )?)?;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn this_process_reads_sanely() {
            let sample = super::sample();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let started = sample.start_time_seconds.unwrap();
            assert!(
                started <= now + 1.0 && started > now - 86_400.0,
                "{started}"
            );
            assert!(sample.cpu_seconds.unwrap() >= 0.0);
            let resident = sample.resident_bytes.unwrap();
            assert!(resident > 1 << 20, "{resident}");
            assert!(sample.virtual_bytes.unwrap() >= resident);
            let open = sample.open_fds.unwrap();
            assert!(open >= 3 && open <= sample.max_fds.unwrap(), "{sample:?}");
        }
    }
}
