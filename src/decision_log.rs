//! The decision log: one JSON object a line for every routed request, written by a background
//! thread and rotated by size (`path`, `path.1`, ... `path.N`). Off unless a path is given.
//!
//! Requests never wait for the disk: lines go through a bounded queue, and when it is full the
//! line is dropped and counted (`pointsman_decision_log_dropped_total`). Prompts are not
//! written, only a hash of them, since they may hold personal data.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Lines that may wait for the writer.
const QUEUE_LINES: usize = 4096;

/// A rotating JSON-lines log fed from any thread. Dropping it waits (up to
/// [`DRAIN_TIMEOUT`]) until every queued line is written, so a server that shuts down loses
/// none.
#[derive(Debug)]
pub struct DecisionLog {
    /// `None` once dropped: the writer sees the channel close, drains it and ends.
    lines: Option<mpsc::SyncSender<String>>,
    /// Closed by the writer when it ends (in a mutex only to be `Sync`; read in `drop`).
    done: std::sync::Mutex<mpsc::Receiver<()>>,
    dropped: AtomicU64,
}

/// The longest a dropped log waits for its writer (a stalled disk must not hold up shutdown
/// for ever).
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where and how much to keep.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The live file.
    pub path: PathBuf,
    /// Size at which the live file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest).
    pub keep: usize,
}

fn open_append(path: &Path) -> std::io::Result<(BufWriter<File>, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((BufWriter::new(file), size))
}

fn rotate(options: &LogOptions) -> std::io::Result<()> {
    let numbered = |i: usize| {
        let mut p = options.path.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    if options.keep == 0 {
        return std::fs::remove_file(&options.path);
    }
    let _ = std::fs::remove_file(numbered(options.keep));
    for i in (1..options.keep).rev() {
        let from = numbered(i);
        if from.exists() {
            std::fs::rename(&from, numbered(i + 1))?;
        }
    }
    std::fs::rename(&options.path, numbered(1))
}

impl DecisionLog {
    /// Opens (appends to) the log and starts its writer; fails if the file cannot be opened.
    pub fn open(options: LogOptions) -> std::io::Result<Self> {
        let (mut out, mut size) = open_append(&options.path)?;
        let (lines, rx) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let (done_tx, done) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("pointsman-decision-log".into())
            .spawn(move || {
                let write = |out: &mut BufWriter<File>, size: &mut u64, line: &str| -> std::io::Result<()> {
                    out.write_all(line.as_bytes())?;
                    out.write_all(b"\n")?;
                    *size += line.len() as u64 + 1;
                    if *size >= options.max_bytes {
                        out.flush()?;
                        rotate(&options)?;
                        (*out, *size) = open_append(&options.path)?;
                    }
                    Ok(())
                };
                while let Ok(line) = rx.recv() {
                    let mut result = write(&mut out, &mut size, &line);
                    // write what else is waiting before flushing
                    while result.is_ok() {
                        let Ok(line) = rx.try_recv() else { break };
                        result = write(&mut out, &mut size, &line);
                    }
                    if let Err(e) = result.and_then(|()| out.flush()) {
                        tracing::error!(path = %options.path.display(), error = %e, "decision log write failed");
                    }
                }
                let _ = out.flush();
                drop(done_tx);
            })?;
        Ok(DecisionLog {
            lines: Some(lines),
            done: std::sync::Mutex::new(done),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues one line; drops it (and counts it) when the writer is behind. Whether it was
    /// queued.
    pub fn record(&self, line: &serde_json::Value) -> bool {
        if let Some(lines) = &self.lines
            && lines.try_send(line.to_string()).is_ok()
        {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        drop(self.lines.take());
        let done = self.done.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(DRAIN_TIMEOUT) {
            tracing::error!(
                "the decision log's writer is still writing after {DRAIN_TIMEOUT:?}; lines still queued are lost"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // the writer held up by a pipe nobody reads: the queue fills, and a line is then refused
    #[test]
    fn a_line_the_queue_cannot_take_is_refused_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || File::open(path).unwrap())
        };
        let log = DecisionLog::open(LogOptions {
            path: path.clone(),
            max_bytes: u64::MAX,
            keep: 1,
        })
        .unwrap();
        let mut reader = reader.join().unwrap();
        let line = serde_json::json!({"pad": "x".repeat(200)});
        let queued = (0..QUEUE_LINES * 4)
            .take_while(|_| log.record(&line))
            .count();
        assert!(queued >= QUEUE_LINES, "{queued}");
        assert!(queued < QUEUE_LINES * 4, "the queue never filled");
        assert_eq!(log.dropped(), 1);
        // the reader drains the pipe, so the writer can finish
        let drain =
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()).unwrap());
        drop(log);
        assert!(drain.join().unwrap() >= (queued * 200) as u64);
    }

    #[test]
    fn writes_json_lines_and_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(LogOptions {
            path: path.clone(),
            max_bytes: 200,
            keep: 2,
        })
        .unwrap();
        for i in 0..30 {
            log.record(&serde_json::json!({"i": i, "route": "orders"}));
        }
        // dropping the log waits for its writer to drain the queue
        drop(log);
        let rotated = |i: usize| dir.path().join(format!("decisions.jsonl.{i}"));
        assert!(rotated(2).exists(), "no second rotation happened");
        assert!(!rotated(3).exists(), "keeps only two rotated files");
        let mut seen = Vec::new();
        for p in [rotated(2), rotated(1), path.clone()] {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                text.len() <= 200 + 40,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                seen.push(v["i"].as_u64().unwrap());
            }
        }
        // the newest lines survive, in order
        assert!(seen.windows(2).all(|w| w[0] + 1 == w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&29));
    }

    #[test]
    fn an_unwritable_path_is_an_error() {
        let err = DecisionLog::open(LogOptions {
            path: "/nonexistent/dir/log.jsonl".into(),
            max_bytes: 1000,
            keep: 1,
        });
        assert!(err.is_err());
    }
}
