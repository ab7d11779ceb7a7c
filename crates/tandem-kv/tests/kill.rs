//! The disk tier under a killed writer and a full disk.
//!
//! * A child process fills a store and saves it (`KvStore::persist`); it
//!   is killed with SIGKILL at 100 points spread over the save. After each
//!   kill, a new store over the directory must use every page whose file
//!   is complete, byte for byte, and nothing else; computing the pages it
//!   lacks must give the whole conversation back, byte for byte.
//! * A child under a file-size limit (`RLIMIT_FSIZE`, the stand-in for a
//!   full disk) saves a store: writing turns itself off with one warning,
//!   the process goes on and exits normally.
//!
//! The children are this test binary run again with `TANDEM_KV_CHILD`
//! set, running only the `child` test.

#![cfg(unix)]
#![allow(clippy::single_range_in_vec_init)] // one-node geometries

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use tandem_kv::{DiskTier, KvFormat, KvGeometry, KvStore, ModelIdentity, Sequence};

const PT: usize = 16;
const PAGES: usize = 96;
const ID: ModelIdentity = ModelIdentity(0x4b49_4c4c);
const KILLS: usize = 100;

fn geometry() -> KvGeometry {
    KvGeometry {
        values: Default::default(),
        n_layers: 4,
        head_dim: 64,
        page_tokens: PT,
        format: KvFormat::F16,
        node_heads: vec![0..2, 2..4],
        windows: Vec::new(),
    }
}

fn tokens() -> Vec<u32> {
    (0..(PAGES * PT + 1) as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 50_000)
        .collect()
}

fn byte(token: u32, pos: usize, layer: usize, kv: usize, head: usize, i: usize) -> u8 {
    (token as usize * 31 + pos * 7 + layer * 5 + kv * 3 + head * 11 + i * 13) as u8
}

fn store(dir: &Path) -> Arc<KvStore> {
    let disk = DiskTier::open(dir, ID, 1 << 30).expect("open tier");
    KvStore::new_tiered(geometry(), 2 * PAGES + 8, &[None, None], Some(disk)).expect("store")
}

fn append(seq: &mut Sequence, tokens: &[u32]) {
    let from = seq.len();
    let starts: Vec<usize> = geometry().node_heads.iter().map(|r| r.start).collect();
    seq.append_rows(tokens, |k, row| {
        let t = tokens[k.pos - from];
        for (i, b) in row.iter_mut().enumerate() {
            *b = byte(t, k.pos, k.layer, k.kv, starts[k.node] + k.head, i);
        }
    })
    .expect("append");
}

/// Whether every row below `len` holds its bytes.
fn intact(seq: &Sequence) -> bool {
    let g = geometry();
    (0..seq.len()).all(|pos| {
        g.node_heads.iter().enumerate().all(|(node, heads)| {
            (0..g.n_layers).all(|layer| {
                (0..2).all(|kv| {
                    (0..heads.len()).all(|local| {
                        let p = seq.row_ptr(node, layer, kv, local, pos).expect("row");
                        // SAFETY: positions below len are initialised.
                        let row = unsafe { std::slice::from_raw_parts(p, g.row_bytes()) };
                        row.iter().enumerate().all(|(i, &b)| {
                            b == byte(seq.tokens()[pos], pos, layer, kv, heads.start + local, i)
                        })
                    })
                })
            })
        })
    })
}

/// What a child does, by `TANDEM_KV_CHILD`: `save:DIR` fills a store and
/// saves it, saying "saving" before and "saved" after; `full:DIR` does
/// the same under a file-size limit smaller than a page file.
#[test]
fn child() {
    let Ok(what) = std::env::var("TANDEM_KV_CHILD") else {
        return;
    };
    let (mode, dir) = what.split_once(':').expect("mode:dir");
    if mode == "full" {
        let limit = libc::rlimit {
            rlim_cur: DiskTier::file_bytes(&geometry()) / 2,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: plain system call on a valid struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    }
    let store = store(Path::new(dir));
    let mut seq = store.new_sequence();
    append(&mut seq, &tokens());
    println!("saving");
    let written = store.persist();
    let disk = store.disk().expect("tier");
    println!(
        "saved {written} errors {} disabled {}",
        disk.stats().write_errors,
        disk.write_disabled()
    );
    // The conversation goes on after a failed save.
    append(&mut seq, &[1, 2, 3]);
    assert!(intact(&seq));
    println!("done");
}

fn spawn(mode: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("TANDEM_KV_CHILD", format!("{mode}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

/// Reads the child's stdout up to a line holding `what`; returns the line from there.
fn wait_for(lines: &mut impl Iterator<Item = std::io::Result<String>>, what: &str) -> String {
    for line in lines {
        let line = line.expect("child stdout");
        // The harness may print "test child ... " before it.
        if let Some(i) = line.find(what) {
            return line[i..].to_string();
        }
    }
    panic!("the child ended before '{what}'");
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tandem-kv-kill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Complete page files in the tier's directory.
fn page_files(dir: &Path) -> usize {
    let sub = dir.join(format!("{:032x}", ID.0));
    std::fs::read_dir(sub).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "page"))
            .count()
    })
}

#[test]
fn a_save_killed_at_any_point_loses_no_complete_page() {
    if std::env::var("TANDEM_KV_CHILD").is_ok() {
        return;
    }
    let dir = tmpdir("save");
    // How long an undisturbed save takes, to spread the kill points.
    let mut child = spawn("save", &dir);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    wait_for(&mut lines, "saving");
    let t0 = Instant::now();
    let saved = wait_for(&mut lines, "saved");
    let save_time = t0.elapsed();
    assert!(child.wait().expect("wait").success());
    assert!(saved.starts_with(&format!("saved {PAGES} ")), "{saved}");

    let all = tokens();
    let mut restored_total = 0;
    let mut partial_runs = 0;
    for k in 0..KILLS {
        let _ = std::fs::remove_dir_all(&dir);
        // Kill points over [0, 1.1 × save time], with a few past the end.
        let at = save_time.mul_f64(1.1 * k as f64 / KILLS as f64);
        let mut child = spawn("save", &dir);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        wait_for(&mut lines, "saving");
        std::thread::sleep(at);
        child.kill().expect("SIGKILL");
        let _ = child.wait();

        let files = page_files(&dir);
        let store = store(&dir);
        let mut seq = store.sequence_with_prefix(&all);
        let read = store.disk().expect("tier").stats().read as usize;
        // Pages are saved in prefix order, whole or not at all: every
        // complete file is used, each page exactly as written.
        assert_eq!(
            read, files,
            "kill {k} at {at:?}: a complete page was not used"
        );
        assert_eq!(store.disk().expect("tier").stats().rejected, 0);
        assert_eq!(
            seq.len(),
            files * PT,
            "kill {k}: the saved pages are a prefix"
        );
        assert!(intact(&seq), "kill {k}: a restored page differs");
        restored_total += files;
        partial_runs += usize::from(files > 0 && files < PAGES);
        // Computing the rest gives the conversation back, byte for byte.
        let from = seq.len();
        append(&mut seq, &all[from..]);
        assert_eq!(seq.tokens(), &all[..]);
        assert!(intact(&seq), "kill {k}: the completed conversation differs");
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{KILLS} kills over a {save_time:?} save: {restored_total} pages restored, \
         {partial_runs} kills in the middle of the save"
    );
    assert!(partial_runs > 0, "no kill landed inside the save");
}

#[test]
fn a_full_disk_turns_writing_off_with_one_warning() {
    if std::env::var("TANDEM_KV_CHILD").is_ok() {
        return;
    }
    let dir = tmpdir("full");
    let child = spawn("full", &dir);
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("saved 0 errors 1 disabled true"),
        "{stdout}"
    );
    assert!(stdout.contains("done"), "{stdout}");
    let warnings = stderr.matches("warning: KV disk tier").count();
    assert_eq!(warnings, 1, "{stderr}");
    assert_eq!(page_files(&dir), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
