//! The README's command examples, run: every `$ sniroute …` line in a ```console block is run
//! with the real binary from the repository root, and what it prints (stdout, then stderr) must
//! be the lines the README shows under it, exactly. A README that drifts from the binary fails
//! here. (The Quickstart's curl commands need the demo on its fixed ports: `.ci/quickstart`
//! runs those, and the Quickstart and "Running it" commands themselves, as written.)

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use support::{BIN, HANG_GUARD};

/// One `$ command` line and the output lines shown under it.
#[derive(Debug)]
struct Example {
    line: usize,
    command: String,
    expected: Vec<String>,
}

fn examples(readme: &str) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    let mut in_console = false;
    for (index, line) in readme.lines().enumerate() {
        if line == "```console" {
            in_console = true;
        } else if line.starts_with("```") {
            in_console = false;
        } else if in_console {
            match line.strip_prefix("$ ") {
                Some(command) => examples.push(Example {
                    line: index + 1,
                    command: command.to_owned(),
                    expected: Vec::new(),
                }),
                None => {
                    if let Some(example) = examples.last_mut() {
                        example.expected.push(line.to_owned());
                    }
                }
            }
        }
    }
    examples
}

/// Runs `command` (`sniroute ARGS [| head -N]`) from the repository root; its output lines.
fn run(command: &str) -> Vec<String> {
    let (command, head) = match command.split_once(" | head -") {
        Some((command, count)) => (command, Some(count.parse::<usize>().unwrap())),
        None => (command, None),
    };
    let mut words = command.split_whitespace();
    assert_eq!(words.next(), Some("sniroute"));
    let mut child = Command::new(BIN);
    child
        .args(words)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    // A hang guard: an example that unexpectedly ran the proxy would never exit.
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(child.output()));
    let output = receiver
        .recv_timeout(HANG_GUARD)
        .expect("hung: the example did not exit")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = text.lines().map(str::to_owned);
    match head {
        Some(count) => lines.take(count).collect(),
        None => lines.collect(),
    }
}

#[test]
fn every_sniroute_command_in_the_readme_prints_what_the_readme_shows() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let examples: Vec<Example> = examples(&readme)
        .into_iter()
        .filter(|example| example.command.starts_with("sniroute"))
        .collect();
    assert!(
        examples.len() >= 5,
        "the README's sniroute examples went missing"
    );
    // The README shows what happens when the example config's address is taken: take it (or
    // find it taken; either way the bind fails the same).
    let _taken = std::net::TcpListener::bind("127.0.0.1:8443");
    for example in examples {
        assert_eq!(
            run(&example.command),
            example.expected,
            "README.md:{}: `{}`",
            example.line,
            example.command
        );
    }
}

/// Every way a connection can end is documented: each outcome label appears in the README.
#[test]
fn every_outcome_is_in_the_readme() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for outcome in sniroute::outcome::Outcome::ALL {
        assert!(
            readme.contains(&format!("`{outcome}`")),
            "outcome `{outcome}` is not in the README"
        );
    }
}
