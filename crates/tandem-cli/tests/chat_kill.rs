//! `tandem chat` killed (SIGKILL) while it saves its KV pages to the disk
//! tier, at 100 points spread over the save: each time, the next run over
//! the same directory says, token for token, what a run without a disk
//! tier says, whatever the killed run left there (complete pages, a torn
//! last file, pages of earlier conversations).
//!
//! Each round talks about another subject (`talk`), so every killed save
//! writes pages of its own into a directory that keeps what the rounds
//! before it left.

#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const KILLS: usize = 100;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-chat-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

/// `tandem chat`, greedy, 8 tokens a turn, with the disk tier in `dir`.
fn chat(dir: Option<&Path>, stderr: Stdio) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tandem"));
    c.args(["chat", "--temperature", "0", "-n", "8"])
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr);
    if let Some(d) = dir {
        c.arg("--kv-disk").arg(d);
    }
    c
}

/// Round `k`'s conversation: a long first turn (several pages) that no
/// other round shares from its first token on, and a second turn.
fn talk(k: usize) -> String {
    format!(
        "Conversation {k}: tell me about lists, tuples, sets and dictionaries in \
         Python, how they differ, when to use each, and what subject {k} has to \
         do with them, in as much detail as you can.\nAnd why subject {}?\n",
        k * 7 + 3
    )
}

fn run(dir: Option<&Path>, input: &str) -> Output {
    support::run_with_stdin(&mut chat(dir, Stdio::piped()), input)
}

/// Runs `input` and kills the process `after` the last turn's line (the
/// save begins there). Returns how long after that line the save said it
/// was done (when it was not killed).
fn run_killed(dir: &Path, input: &str, after: Option<Duration>) -> Duration {
    let mut child = chat(Some(dir), Stdio::piped()).spawn().expect("run tandem");
    // A process killed before reading its input may close the pipe.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes());
    let err = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(err).lines();
    let turns = input.lines().count();
    let last = format!("[turn {turns}]");
    for line in lines.by_ref() {
        if line.expect("stderr line").starts_with(&last) {
            break;
        }
    }
    let t = Instant::now();
    if let Some(a) = after {
        std::thread::sleep(a);
        let _ = child.kill();
    }
    let mut saved = t.elapsed();
    for line in lines.map_while(Result::ok) {
        if line.starts_with("KV disk tier: saved") {
            saved = t.elapsed();
        }
    }
    child.wait().expect("wait");
    saved
}

/// `(prompt tokens, tokens found on disk)` of turn 1, from its line.
fn turn_1(err: &str) -> (usize, usize) {
    let Some(l) = err.lines().find(|l| l.starts_with("[turn 1]")) else {
        return (0, 0);
    };
    let after = |key: &str| -> usize {
        l.find(key)
            .and_then(|i| l[i + key.len()..].split(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    (after("prompt "), after("("))
}

#[test]
fn a_chat_killed_while_saving_loses_no_token() {
    let dir = tmp("kv");
    let _ = std::fs::remove_dir_all(&dir);
    // How long a whole save of one round takes here.
    let save = run_killed(&tmp("calibrate"), &talk(KILLS), None);
    // Rounds whose next run found none, some or all of turn 1's full
    // pages on disk.
    let (mut none, mut some, mut all) = (0, 0, 0);
    for k in 0..KILLS {
        let input = talk(k);
        let at = save.mul_f64(1.2 * k as f64 / KILLS as f64);
        run_killed(&dir, &input, Some(at));
        let next = run(Some(&dir), &input);
        let err = String::from_utf8_lossy(&next.stderr).into_owned();
        assert!(next.status.success(), "round {k}: {err}");
        let plain = run(None, &input);
        assert!(plain.status.success());
        assert_eq!(
            String::from_utf8_lossy(&next.stdout),
            String::from_utf8_lossy(&plain.stdout),
            "round {k}, killed {at:?} into a {save:?} save: {err}"
        );
        let (prompt, disk) = turn_1(&err);
        match disk {
            0 => none += 1,
            d if d + 16 > prompt => all += 1,
            _ => some += 1,
        }
    }
    eprintln!(
        "{KILLS} kills over a {save:?} save: every next run said what a run without \
         a disk tier said; it found none of turn 1's pages on disk {none} times, \
         some {some} times, all {all} times"
    );
    assert!(
        some + all > 0,
        "some saves got pages to disk before the kill"
    );
    let _ = std::fs::remove_dir_all(tmp(""));
}
