//! `conclave serve --config FILE` (issue 17, item 1): precedence, errors
//! that name the file, line and key, `--check-config`, the example file in
//! docs/, and a real server run from a file.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{profile, run, Served, BIN};

/// `conclave serve ARGS` with `env` (and no CONCLAVE_* from outside).
fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("CONCLAVE_") {
            command.env_remove(key);
        }
    }
    command.arg("serve").args(args).envs(env.iter().copied()).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The one line of a refusal (exit code 2).
fn refused(out: &Output) -> String {
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err.trim_end().to_owned()
}

fn line<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{report}"))
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conclave.toml");
    std::fs::write(
        &file,
        "# a comment\nmax_connections = 500\nregistration = \"token\"\nlisten = [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]\n\
         fsync = \"off\"\nrequests_per_second = 77\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = serve(
        &[
            "--config",
            file.to_str().unwrap(),
            "--check-config",
            "--data",
            data.to_str().unwrap(),
            "--max-connections",
            "9",
        ],
        &[("CONCLAVE_REGISTRATION", "closed"), ("CONCLAVE_OUTBOUND_QUEUE", "99")],
    );
    let report = stdout(&out);
    assert_eq!(line(&report, "max_connections"), "max_connections = 9  # a flag");
    assert_eq!(line(&report, "registration"), "registration = \"closed\"  # the environment");
    assert_eq!(line(&report, "outbound_queue"), "outbound_queue = 99  # the environment");
    assert_eq!(line(&report, "requests_per_second"), "requests_per_second = 77  # the config file");
    assert_eq!(line(&report, "fsync"), "fsync = \"off\"  # the config file");
    assert_eq!(
        line(&report, "listen"),
        "listen = [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]  # the config file"
    );
    assert_eq!(line(&report, "handshake_timeout"), "handshake_timeout = 10  # the default");
    assert_eq!(line(&report, "tls_cert"), "# tls_cert is not set");
    assert!(report.contains("the settings are valid"), "{report}");
    assert!(!data.exists(), "--check-config starts nothing and writes nothing");
    // The report is itself a config file that gives the same settings.
    let again = dir.path().join("again.toml");
    let body: String = report.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    std::fs::write(&again, body).unwrap();
    let report2 = stdout(&serve(&["--config", again.to_str().unwrap(), "--check-config"], &[]));
    assert_eq!(line(&report2, "registration"), "registration = \"closed\"  # the config file");
    assert_eq!(line(&report2, "max_connections"), "max_connections = 9  # the config file");
}

#[test]
fn a_bad_file_names_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let check = |path: &str| refused(&serve(&["--config", path, "--check-config"], &[]));

    let typo = write("typo.toml", "registration = \"open\"\n\nmax_conections = 5\n");
    let err = check(&typo);
    assert!(err.contains("typo.toml, line 3") && err.contains("unknown setting \"max_conections\""), "{err}");
    assert!(err.contains("did you mean max_connections?"), "{err}");
    let dashes = write("dashes.toml", "max-connections = 5\n");
    assert!(check(&dashes).contains("did you mean max_connections?"));
    let stranger = write("stranger.toml", "colour = \"blue\"\n");
    assert!(check(&stranger).contains("docs/conclave.toml lists them"));

    let bad_number = write("number.toml", "# limits\nmax_connections = \"lots\"\n");
    let err = check(&bad_number);
    assert!(err.contains("number.toml, line 2: max_connections = \"lots\": invalid value 'lots'"), "{err}");
    let bad_choice = write("choice.toml", "registration = \"maybe\"\n");
    let err = check(&bad_choice);
    assert!(
        err.contains("line 1: registration = \"maybe\"") && err.contains("invalid value 'maybe'"),
        "{err}"
    );
    let bad_address = write("address.toml", "listen = [\"127.0.0.1:7001\", \"nowhere\"]\n");
    assert!(check(&bad_address).contains("line 1: listen = "));
    let a_list = write("list.toml", "max_connections = [1, 2]\n");
    assert!(check(&a_list).contains("takes one value, not a list"));
    let a_table = write("table.toml", "[limits]\nmax_connections = 5\n");
    assert!(check(&a_table).contains("unknown setting \"limits\""));
    let not_toml = write("broken.toml", "registration = \"open\"\nmax_connections = = 5\n");
    let err = check(&not_toml);
    assert!(err.contains("broken.toml, line 2: not valid TOML"), "{err}");
    let half_tls = write("tls.toml", "tls_cert = \"cert.pem\"\n");
    assert!(check(&half_tls).contains("--tls-key"), "the pair is still required");
    let err = check(dir.path().join("missing.toml").to_str().unwrap());
    assert!(err.contains("cannot read the config file") && err.contains("missing.toml"), "{err}");
    // A value the flag's own checks refuse after parsing.
    let zero = write("zero.toml", "max_connections = 0\n");
    let out = serve(&["--config", &zero, "--check-config"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-connections must be at least 1"));
}

#[test]
fn the_example_in_docs_lists_every_setting_with_its_default() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/conclave.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let defaults = stdout(&serve(&["--check-config"], &[]));
    let keys: Vec<&str> = defaults
        .lines()
        .filter(|l| !l.starts_with("# the "))
        .map(|l| l.trim_start_matches("# ").split([' ', '=']).next().unwrap())
        .collect();
    assert!(keys.len() >= 20, "{defaults}");
    for key in &keys {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("# {key} = "))),
            "docs/conclave.toml lacks {key}"
        );
    }
    // Uncommented, it is a valid file that sets each key to its default
    // (the paths are examples: they are not defaults).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.toml");
    let body: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| keys.iter().any(|k| l.starts_with(&format!("{k} = "))))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, &body).unwrap();
    let report = stdout(&serve(&["--config", file.to_str().unwrap(), "--check-config"], &[]));
    for key in &keys {
        let from_file = line(&report, key);
        assert!(from_file.ends_with("# the config file"), "{from_file}");
        if !["data", "tls_cert", "tls_key", "listen"].contains(key) {
            assert_eq!(from_file.replace("the config file", "the default"), line(&defaults, key));
        }
    }
}

#[test]
fn a_server_runs_from_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conclave.toml");
    std::fs::write(&file, "registration = \"closed\"\n").unwrap();
    let server = Served::start(&dir.path().join("data"), &["--config", file.to_str().unwrap()]);
    let p = profile(&dir, "p");
    let out = run(
        &p,
        &["--server", &server.addr, "--accept-new-server", "register", "dave", "--password-stdin"],
        "correct horse\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("registration"), "{err}");
}
