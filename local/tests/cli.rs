//! The `local` binary's command line: help is an answer, not an error.

use std::process::Command;

fn local(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_local"))
        .args(args)
        .output()
        .expect("run the local binary")
}

#[test]
fn help_prints_every_command_and_exits_0() {
    for flag in ["--help", "-h", "help"] {
        let out = local(&[flag]);
        assert!(out.status.success(), "{flag}: {:?}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        for command in [
            "serve",
            "migrate",
            "database-url",
            "new-database",
            "openapi",
        ] {
            assert!(
                text.contains(command),
                "{flag} does not mention {command}: {text}"
            );
        }
    }
}

#[test]
fn an_unknown_command_fails_and_shows_the_usage() {
    let out = local(&["bogus"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("unknown command `bogus`"), "{text}");
    assert!(text.contains("usage: local"), "{text}");
}
