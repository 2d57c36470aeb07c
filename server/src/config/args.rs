//! `parse_args`: the command line read with the config file merged in, and
//! the effective settings that `--print-config` shows. Separate from the
//! flag declarations (`flags.rs`) and from validation (`validate.rs`).

use std::collections::HashSet;

use super::file::{NOT_IN_FILES, is_list, merge_file};
use super::{Cli, format_size, hide_password, parse_size};

/// The command line as parsed, with `--config FILE` merged in, and the
/// effective settings as TOML for `--print-config`.
pub struct Parsed {
    /// The settings.
    pub cli: Cli,
    /// What `--print-config` prints.
    pub effective: String,
}

/// Reads `args` (the first is the program name) with the config file merged
/// in: flags beat environment variables, which beat the file, which beats
/// the defaults. Errors name what to fix.
pub fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Parsed, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command();
    let given: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let file = flag_value(&given, "config").or_else(|| std::env::var("ASYNCGATE_CONFIG").ok());
    let mut merged = args.clone();
    let from_file = match &file {
        Some(file) => merge_file(&command, file, &given, &mut merged)?,
        None => HashSet::new(),
    };
    let matches = command.clone().try_get_matches_from(merged)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let effective = effective_settings(&command, &matches, &from_file);
    Ok(Parsed { cli, effective })
}

/// The value given on the command line (`given`) to `--name`, as
/// `--name=VALUE` or `--name VALUE`.
pub(super) fn flag_value(given: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    given.iter().enumerate().find_map(|(i, arg)| {
        arg.strip_prefix(&format!("{long}="))
            .map(str::to_owned)
            .or_else(|| (*arg == long).then(|| given.get(i + 1).cloned()).flatten())
    })
}

/// The settings in effect as TOML, each with where it came from (flag,
/// environment, config file, default), passwords hidden.
fn effective_settings(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    from_file: &HashSet<String>,
) -> String {
    let mut effective = String::from("# asyncgate-server effective settings\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILES.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = if from_file.contains(id) {
            "config file"
        } else {
            match matches.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => "flag",
                Some(clap::parser::ValueSource::EnvVariable) => "environment",
                Some(clap::parser::ValueSource::DefaultValue) => "default",
                _ => "unset",
            }
        };
        match shown_value(arg, matches) {
            Some(value) => effective.push_str(&format!("{long} = {value}  # {source}\n")),
            None => effective.push_str(&format!("# {long} is not set\n")),
        }
    }
    effective
}

/// One setting's value as a TOML value (a boolean, a string, or an array of
/// strings for a list), or `None` when it is not set.
fn shown_value(arg: &clap::Arg, matches: &clap::ArgMatches) -> Option<String> {
    let id = arg.get_id().as_str();
    if id.contains("secret") && matches.get_raw(id).is_some() {
        return Some("\"<redacted>\"".into());
    }
    let value = match matches.get_raw(id) {
        _ if !arg.get_action().takes_values() => matches.get_flag(id).to_string(),
        Some(values) if is_list(arg) => {
            let items: Vec<String> = values
                .map(|v| format!("{:?}", hide_password(&v.to_string_lossy())))
                .collect();
            format!("[{}]", items.join(", "))
        }
        Some(mut values) => {
            let text = values
                .next()
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Sizes in one canonical form ("4MiB", or bytes), whichever
            // way they were written; it reads back exactly.
            let text = match parse_size(&text) {
                Ok(bytes) if arg.get_value_names() == Some(&["SIZE".into()]) => format_size(bytes),
                _ => text,
            };
            format!("{:?}", hide_password(&text))
        }
        None => return None,
    };
    Some(value)
}
