//! `--config FILE`: a TOML file of settings turned into the flags it stands
//! for, placed after the command line so clap reads them with the same
//! parsers. Flags and environment variables that are set win over the file.

use std::collections::HashSet;
use std::ffi::OsString;

use super::args::flag_value;

/// Settings a config file cannot hold.
pub(super) const NOT_IN_FILES: [&str; 4] = ["config", "print-config", "help", "version"];

/// Whether `arg` is a list setting (a flag that may be repeated).
pub(super) fn is_list(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), clap::ArgAction::Append)
}

/// Appends to `merged` the flags that the settings of `file` stand for,
/// except those already given as a flag (in `given`) or an environment
/// variable. Returns the ids of the settings taken from the file.
pub(super) fn merge_file(
    command: &clap::Command,
    file: &str,
    given: &[String],
    merged: &mut Vec<OsString>,
) -> Result<HashSet<String>, clap::Error> {
    let invalid = |message: String| {
        command
            .clone()
            .error(clap::error::ErrorKind::InvalidValue, message)
    };
    let mut from_file = HashSet::new();
    let text =
        std::fs::read_to_string(file).map_err(|e| invalid(format!("--config {file}: {e}")))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| invalid(format!("--config {file}: {e}")))?;
    for (key, value) in table {
        if key == "queues" {
            // `[queues.NAME]` tables stand for `--queue-limits` values.
            let given_flag = given.iter().any(|g| g.starts_with("--queue-limits"))
                || std::env::var_os("ASYNCGATE_QUEUE_LIMITS").is_some();
            let flags = queue_tables(file, value).map_err(invalid)?;
            if !given_flag {
                merged.extend(flags);
                from_file.insert("queue_limits".to_owned());
            }
            continue;
        }
        let name = key.replace('_', "-");
        let Some(arg) = command.get_arguments().find(|a| {
            a.get_long() == Some(name.as_str()) && !NOT_IN_FILES.contains(&name.as_str())
        }) else {
            return Err(invalid(format!(
                "--config {file}: unknown setting {key:?}; the settings are the flags of `asyncgate-server --help`, without the dashes"
            )));
        };
        let env_set = arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some());
        if env_set || flag_value(given, &name).is_some() || given.contains(&format!("--{name}")) {
            continue;
        }
        if let Some(flags) = setting_as_flags(arg, file, &key, &name, value).map_err(invalid)? {
            merged.extend(flags);
            from_file.insert(arg.get_id().to_string());
        }
    }
    Ok(from_file)
}

/// The command-line words that one setting of the file stands for: `--name
/// value`, `--name` alone for `true`, one `--name item` per element of a
/// list; `None` for `false` (the flag left off). Errors name the file and key.
fn setting_as_flags(
    arg: &clap::Arg,
    file: &str,
    key: &str,
    name: &str,
    value: toml::Value,
) -> Result<Option<Vec<OsString>>, String> {
    let flag = || OsString::from(format!("--{name}"));
    let value = match value {
        toml::Value::String(text) if !arg.get_action().takes_values() => {
            toml::Value::Boolean(text == "true")
        }
        value => value,
    };
    // A list setting (a repeatable flag) takes an array: one flag per
    // element, in order.
    let value = match value {
        toml::Value::Array(items) if is_list(arg) => {
            let mut flags = Vec::with_capacity(items.len() * 2);
            for item in items {
                let text = match item {
                    toml::Value::String(text) => text,
                    toml::Value::Integer(n) => n.to_string(),
                    other => {
                        return Err(format!(
                            "--config {file}: {key} takes strings, not {}",
                            other.type_str()
                        ));
                    }
                };
                flags.push(flag());
                flags.push(text.into());
            }
            return Ok(Some(flags));
        }
        value => value,
    };
    let text = match value {
        toml::Value::String(text) => text,
        toml::Value::Boolean(true) => return Ok(Some(vec![flag()])),
        toml::Value::Boolean(false) => return Ok(None),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        other => {
            return Err(format!(
                "--config {file}: {key} must be a string, number or boolean, not {}",
                other.type_str()
            ));
        }
    };
    Ok(Some(vec![flag(), text.into()]))
}

/// The `--queue-limits` flags that a `[queues]` table stands for: one per
/// `[queues.NAME]`, whose keys are the limits (whole numbers).
fn queue_tables(file: &str, value: toml::Value) -> Result<Vec<OsString>, String> {
    let toml::Value::Table(queues) = value else {
        return Err(format!(
            "--config {file}: queues must be tables, e.g. [queues.emails] with max_concurrent = 20"
        ));
    };
    let mut flags = Vec::with_capacity(queues.len() * 2);
    for (queue, limits) in queues {
        let toml::Value::Table(limits) = limits else {
            return Err(format!(
                "--config {file}: queues.{queue} must be a table of limits ({})",
                super::validate::LIMIT_KEYS.join(", ")
            ));
        };
        let mut pairs = Vec::with_capacity(limits.len());
        for (key, value) in limits {
            let toml::Value::Integer(n) = value else {
                return Err(format!(
                    "--config {file}: queues.{queue}.{key} must be a whole number, not {}",
                    value.type_str()
                ));
            };
            pairs.push(format!("{key}={n}"));
        }
        flags.push(OsString::from("--queue-limits"));
        flags.push(OsString::from(format!("{queue}:{}", pairs.join(","))));
    }
    Ok(flags)
}
