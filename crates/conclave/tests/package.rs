//! What a package ships beside the binary: shell completions, manual pages
//! and the systemd unit (docs/OPERATIONS.md).

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails, ok, profile, run, BIN};

#[test]
fn completions_generate_for_every_shell() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(&dir, "p");
    let bash = ok(&run(&p, &["completions", "bash"], ""));
    assert!(bash.contains("_conclave()") && bash.contains("complete -F _conclave"), "{bash}");
    // Every command and a nested one are offered.
    for word in ["serve", "register", "tail", "chat", "admin", "completions", "man", "members"] {
        assert!(bash.contains(word), "bash completions lack {word}");
    }
    let zsh = ok(&run(&p, &["completions", "zsh"], ""));
    assert!(zsh.starts_with("#compdef conclave"), "{zsh}");
    let fish = ok(&run(&p, &["completions", "fish"], ""));
    assert!(fish.contains("complete -c conclave"), "{fish}");
    for shell in ["elvish", "powershell"] {
        assert!(!ok(&run(&p, &["completions", shell], "")).is_empty(), "{shell}");
    }
    // A shell it does not know: clap's usage error, naming the ones it does.
    let out = run(&p, &["completions", "tcsh"], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid value 'tcsh'") && err.contains("bash"), "{err}");
    // Where bash itself is here, the script loads and completes.
    if Command::new("bash").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let script = dir.path().join("conclave.bash");
        std::fs::write(&script, &bash).unwrap();
        let probe = format!(
            "source {}; COMP_WORDS=(conclave ta); COMP_CWORD=1; _conclave conclave ta conclave; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").arg("-c").arg(probe).output().unwrap();
        let offered = String::from_utf8_lossy(&out.stdout);
        assert!(offered.lines().any(|l| l == "tail"), "bash offered {offered:?} for `conclave ta`");
    }
}

#[test]
fn manual_pages_print_and_write_one_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let p = profile(&dir, "p");
    let page = ok(&run(&p, &["man"], ""));
    assert!(page.contains(".TH conclave 1"), "{page}");
    assert!(page.contains("serve") && page.contains("encrypted group chat"), "{page}");

    let pages = dir.path().join("man/man1");
    let said = ok(&run(&p, &["man", "--dir", pages.to_str().unwrap()], ""));
    for name in [
        "conclave.1",
        "conclave-serve.1",
        "conclave-room.1",
        "conclave-room-add.1",
        "conclave-admin-invite.1",
    ] {
        let path = pages.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; said: {said}", path.display()));
        assert!(text.starts_with(".ie") || text.contains(".TH "), "{name}: {text}");
        assert!(said.contains(name), "{said}");
    }
    let serve = std::fs::read_to_string(pages.join("conclave-serve.1")).unwrap();
    assert!(serve.contains("max\\-connections") || serve.contains("max-connections"), "{serve}");
    // A directory that cannot be made says which and why.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let err = fails(&run(&p, &["man", "--dir", file.join("sub").to_str().unwrap()], ""));
    assert!(err.contains("cannot create the directory") && err.contains("a-file"), "{err}");
}

/// `systemd-analyze verify` on the shipped unit, with ExecStart pointed at
/// this build (verify checks that the binary exists). Skipped, saying so,
/// where systemd's tools are not installed.
#[test]
fn the_systemd_unit_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy/conclave.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for key in ["DynamicUser=yes", "StateDirectory=conclave", "ProtectSystem=strict", "NoNewPrivileges=yes"] {
        assert!(text.lines().any(|l| l == key), "the unit lacks {key}");
    }
    let exec: Vec<&str> = text.lines().filter(|l| l.starts_with("ExecStart=")).collect();
    assert_eq!(exec, ["ExecStart=/usr/local/bin/conclave serve --data /var/lib/conclave"]);
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("systemd-analyze is not installed: only the unit's text was checked");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("conclave.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/conclave", BIN)).unwrap();
    // verify also runs `man` on the unit's Documentation=man:…: the pages
    // as docs/OPERATIONS.md installs them, from this build.
    let man = dir.path().join("man");
    let p = common::profile(&dir, "p");
    ok(&run(&p, &["man", "--dir", man.join("man1").to_str().unwrap()], ""));
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).env("MANPATH", &man).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Without a running systemd (a container) verify still parses the unit
    // and reports its errors; only its complaints about the host are left.
    // Where `man` itself is missing, verify cannot look the page up.
    let have_man = Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_man {
        println!("man is not installed: the unit's Documentation= page was not looked up");
    }
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("conclave.service"))
        .filter(|l| !l.contains("Failed to connect to bus") && !l.contains("System has not been booted"))
        .filter(|l| have_man || !l.contains("Command 'man "))
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify:\n{said}");
}
