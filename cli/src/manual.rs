//! Man pages for `ipvsca` and `ipvsca-run`, rendered from their clap definitions with
//! clap_mangen, so that a page says exactly what `--help` says: one page for the command and
//! one for each visible subcommand (`ipvsca-stats(1)`, `ipvsca-map-add(1)`, ...). The packages
//! (`deploy/build-deb.sh`, `deploy/build-rpm.sh`) write them with the hidden `ipvsca
//! generate-man DIR` and `ipvsca-run --generate-man DIR`; a shipped flag rather than a build
//! script, because the definitions live in the binaries and need their crates' types.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Writes `NAME.1` for `cmd` and `NAME-SUB.1` for each of its visible subcommands, nested,
/// into `dir` (created if absent); the paths written, the command's own page last.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built once from the top, as clap_mangen::generate_to does, so that subcommands carry
    // their full names ("ipvsca map add") and no `help` pseudo-subcommand appears.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_tree(cmd, dir, &mut written)?;
    Ok(written)
}

fn write_tree(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_tree(sub, dir, written)?;
    }
    let page = clap_mangen::Man::new(cmd).source(concat!("ipvsca ", env!("CARGO_PKG_VERSION"))).manual("ipvsca manual");
    let path = page.generate_to(dir).with_context(|| format!("writing a man page into {}", dir.display()))?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_gets_a_page_named_after_its_path() {
        let cmd = clap::Command::new("tool")
            .about("The tool.")
            .subcommand(clap::Command::new("shown").about("Shown.").subcommand(clap::Command::new("deep")))
            .subcommand(clap::Command::new("hidden").hide(true));
        let dir = std::env::temp_dir().join(format!("ipvsca-manual-{}", std::process::id()));
        let written = write_pages(cmd, &dir).unwrap();
        let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["tool-shown-deep.1", "tool-shown.1", "tool.1"]);
        let top = std::fs::read_to_string(dir.join("tool.1")).unwrap();
        assert!(top.contains("tool\\-shown(1)") && !top.contains("hidden"), "{top}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
