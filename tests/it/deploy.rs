//! The deployment files are checked by the tools that will read them.

use std::path::Path;
use std::process::Command;

/// `systemd-analyze` on a copy of the unit whose binary path is the one just built.
fn analyze(args: &[&str]) -> (bool, String) {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/apisync.service"),
    )
    .unwrap()
    .replace("/usr/bin/apisync", env!("CARGO_BIN_EXE_apisync"));
    let dir = std::env::temp_dir().join(format!("apisync-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("apisync.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .args(args)
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_systemd_unit_passes_verify() {
    let (ok, text) = analyze(&["verify"]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn the_systemd_unit_exposure_is_at_most_two() {
    let (ok, text) = analyze(&["security", "--offline=true"]);
    assert!(ok, "{text}");
    let score: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for apisync.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}
