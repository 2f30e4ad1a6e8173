//! What a package needs from the binary: shell completions and manual pages,
//! generated from the same command tree that parses the command line, so
//! they never drift from it.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;
use crate::output::say;

/// `conclave completions SHELL`: the completion script on standard output.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = crate::cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "conclave", &mut script);
    let mut out = crate::output::stdout();
    out.write_all(&script).context("cannot write the completion script")?;
    out.flush().context("cannot write the completion script")?;
    Ok(())
}

/// `conclave man [--dir DIR]`: conclave(1) on standard output, or one page
/// per command (conclave.1, conclave-room.1, conclave-room-add.1, …) in DIR.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    // The tree as declared, not as `cli::command` builds it: clap_mangen
    // builds it itself (without the help subcommand's pages).
    let command = Cli::command();
    match dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page).context("cannot render the manual page")?;
            let mut out = crate::output::stdout();
            out.write_all(&page).context("cannot write the manual page")?;
            out.flush().context("cannot write the manual page")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the directory {} for the manual pages", dir.display())
            })?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            let mut pages: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with("conclave") && name.ends_with(".1"))
                .collect();
            pages.sort();
            say!("wrote {} manual pages into {}: {}", pages.len(), dir.display(), pages.join(" "))?;
        }
    }
    Ok(())
}
