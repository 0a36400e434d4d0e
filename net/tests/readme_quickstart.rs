//! README.md cannot drift: the shell blocks marked `<!-- quickstart -->` are run verbatim, in
//! order, in one `bash`, against the binaries of this build (their directory first on `PATH`),
//! with a temporary data directory (`$XDG_DATA_HOME`) and a test-only port (`$SHARDLINE_LISTEN`
//! for `serve`, `$SHARDLINE_ADDR` for the client commands). Each `#> text` line in a block is
//! output the commands before it must print: it must appear in a line of stdout, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
const MARK: &str = "<!-- quickstart -->";

/// The fenced blocks that follow a `<!-- quickstart -->` line.
fn quickstart_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARK {
            continue;
        }
        let fence = lines.next().expect("a fenced block after the mark");
        assert!(
            fence.starts_with("```"),
            "{MARK} must precede a fence: {fence}"
        );
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

fn expected_lines(script: &str) -> Vec<String> {
    script
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("#> "))
        .map(str::to_string)
        .collect()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn readme_quickstart_runs_verbatim() {
    let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(readme_path).unwrap();
    let blocks = quickstart_blocks(&readme);
    assert!(
        blocks.len() >= 5,
        "README lost its quickstart blocks: {}",
        blocks.len()
    );
    let script = blocks.join("\n");
    let expected = expected_lines(&script);
    assert!(expected.len() >= 10, "{expected:?}");

    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("quickstart.sh");
    std::fs::write(&script_path, format!("set -e\n{script}\nwait\n")).unwrap();
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("bash")
            .arg(&script_path)
            .current_dir(dir.path())
            .env("PATH", path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env_remove("SHARDLINE_DATA_DIR")
            .env_remove("SHARDLINE_TOKEN")
            .env("SHARDLINE_LISTEN", &addr)
            .env("SHARDLINE_ADDR", &addr)
            .env("SHARDLINE_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let pgid = child.id() as libc::pid_t;
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever is left of the script's process group (a server after a failure): ours, by id.
    // SAFETY: signalling the process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let (stdout, stderr) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    let status =
        status.unwrap_or_else(|| panic!("timed out\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(
        status.success(),
        "the quickstart failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let mut lines = stdout.lines();
    for want in &expected {
        assert!(
            lines.any(|l| l.contains(want.as_str())),
            "README promises '{want}' (in this order); stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

#[test]
fn blocks_and_expectations_are_found() {
    let text = "x\n<!-- quickstart -->\n```sh\necho hi\n#> hi\n```\n```sh\nnot me\n```\n";
    let blocks = quickstart_blocks(text);
    assert_eq!(blocks, vec!["echo hi\n#> hi".to_string()]);
    assert_eq!(expected_lines(&blocks[0]), vec!["hi".to_string()]);
}
