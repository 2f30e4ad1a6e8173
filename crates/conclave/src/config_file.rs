//! `conclave serve --config FILE`: a TOML file of settings beneath the flags
//! and the environment.
//!
//! Every flag of `conclave serve` is a key, its long name with `_` for `-`
//! (`--max-connections` is `max_connections`); docs/conclave.toml lists them
//! all. Precedence: a flag, then its environment variable, then the file,
//! then the default. The file's settings are checked one by one with the same
//! parsers as the flags, so a bad value is refused exactly as the flag would
//! be, with the file, the line and the key named.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches};

/// Flags of `serve` that are not settings of the server.
const NOT_SETTINGS: [&str; 4] = ["config", "check_config", "help", "version"];

/// Why the config file cannot be used: what is wrong, and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// One setting as `--check-config` shows it.
struct Shown {
    values: Vec<String>,
    from: &'static str,
    list: bool,
}

/// The command line with the config file of `serve --config FILE` (if any)
/// laid beneath it, parsed: the matches to use, and the keys the file set.
pub fn layer(argv: &[OsString], matches: ArgMatches) -> Result<(ArgMatches, Vec<String>), ConfigError> {
    let Some(("serve", serve)) = matches.subcommand() else { return Ok((matches, Vec::new())) };
    let Some(path) = serve.get_one::<std::path::PathBuf>("config").cloned() else {
        return Ok((matches, Vec::new()));
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ConfigError(format!("cannot read the config file {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        ConfigError(format!("{}, line {line}: not valid TOML: {}", path.display(), e.message().trim_end()))
    })?;
    let command = crate::cli::command();
    let Some(serve_command) = command.find_subcommand("serve") else {
        return Err(ConfigError("no serve command to configure".into()));
    };
    let settings: BTreeMap<String, clap::Arg> = serve_command
        .get_arguments()
        .filter(|a| {
            a.get_long().is_some() && !NOT_SETTINGS.contains(&a.get_id().as_str()) && !a.is_global_set()
        })
        .map(|a| (a.get_id().as_str().to_owned(), a.clone()))
        .collect();
    let mut extra: Vec<OsString> = Vec::new();
    let mut from_file = Vec::new();
    for (key, value) in &table {
        let line = key_line(&text, key);
        let at = format!("{}, line {line}", path.display());
        let Some(arg) = settings.get(key) else {
            let near = settings.keys().min_by_key(|k| edit_distance(k, &key.replace('-', "_")));
            let hint = match near {
                Some(k) if edit_distance(k, &key.replace('-', "_")) <= 2 => format!("did you mean {k}?"),
                _ => "the settings are the flags of `conclave serve --help` with _ for - \
                      (docs/conclave.toml lists them)"
                    .to_owned(),
            };
            return Err(ConfigError(format!("{at}: unknown setting {key:?}; {hint}")));
        };
        let long = arg.get_long().unwrap_or(key);
        let flag_args = to_flag_args(long, arg, value)
            .map_err(|why| ConfigError(format!("{at}: {key} = {value}: {why}")))?;
        // The value checked alone, with the flag's own parser.
        let mut probe: Vec<OsString> = vec!["conclave".into(), "serve".into()];
        probe.extend(flag_args.iter().cloned());
        if let Err(e) = crate::cli::command().try_get_matches_from(&probe) {
            if e.kind() != clap::error::ErrorKind::MissingRequiredArgument {
                return Err(ConfigError(format!("{at}: {key} = {value}: {}", clap_reason(&e))));
            }
        }
        if matches!(serve.value_source(key), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue; // a flag or the environment says otherwise
        }
        extra.extend(flag_args);
        from_file.push(key.clone());
    }
    let mut full = argv.to_vec();
    full.extend(extra);
    let matches = crate::cli::command()
        .try_get_matches_from(&full)
        .map_err(|e| ConfigError(format!("{} with the command line: {}", path.display(), clap_reason(&e))))?;
    Ok((matches, from_file))
}

/// `--check-config`'s report: every setting as a config file line, with
/// where its value came from.
pub fn effective(matches: &ArgMatches, from_file: &[String]) -> String {
    let Some(("serve", serve)) = matches.subcommand() else { return String::new() };
    let command = crate::cli::command();
    let mut out = String::from("# the settings conclave serve would run with, and where each came from\n");
    let Some(serve_command) = command.find_subcommand("serve") else { return out };
    for arg in serve_command.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.get_long().is_none() || NOT_SETTINGS.contains(&id) || arg.is_global_set() {
            continue;
        }
        let values: Vec<String> = serve
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let from = if from_file.iter().any(|k| k == id) {
            "the config file"
        } else {
            match serve.value_source(id) {
                Some(ValueSource::CommandLine) => "a flag",
                Some(ValueSource::EnvVariable) => "the environment",
                Some(ValueSource::DefaultValue) => "the default",
                _ => "not set",
            }
        };
        let shown = Shown { values, from, list: matches!(arg.get_action(), ArgAction::Append) };
        let _ = writeln!(out, "{}", show(id, &shown, arg));
    }
    out
}

fn show(key: &str, shown: &Shown, arg: &clap::Arg) -> String {
    let quote = |v: &str| {
        let bare = v.parse::<i64>().is_ok() || matches!(arg.get_action(), ArgAction::SetTrue);
        if bare {
            v.to_owned()
        } else {
            toml::Value::String(v.to_owned()).to_string()
        }
    };
    if shown.values.is_empty() {
        return format!("# {key} is not set");
    }
    let value = if shown.list {
        format!("[{}]", shown.values.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", "))
    } else {
        quote(&shown.values[0])
    };
    format!("{key} = {value}  # {}", shown.from)
}

/// The flag arguments that set `value` for `arg`.
fn to_flag_args(long: &str, arg: &clap::Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(_) => Err("a date is not a setting's value".to_owned()),
        toml::Value::Array(_) => Err("this setting takes one value, not a list".to_owned()),
        toml::Value::Table(_) => Err("a table is not a setting's value".to_owned()),
    };
    let flag = format!("--{long}");
    match arg.get_action() {
        ArgAction::SetTrue => match value {
            toml::Value::Boolean(true) => Ok(vec![flag.into()]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err("this setting is true or false".to_owned()),
        },
        ArgAction::Append => {
            let items = match value {
                toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
                one => vec![scalar(one)?],
            };
            Ok(items.into_iter().map(|v| OsString::from(format!("{flag}={v}"))).collect())
        }
        _ => Ok(vec![format!("{flag}={}", scalar(value)?).into()]),
    }
}

/// clap's message for `e`, on one line, without its "error: ", its usage
/// and its pointer to --help.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let joined = said.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + usize::from(ca != *cb));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The line (from 1) of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The line on which top-level `key` is set (1 if it cannot be found: the
/// file parsed, so it is there, perhaps quoted or dotted).
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| l.strip_prefix(&format!("'{key}'")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}
