//! Service output: written to the destination the service file names (envd-init's stdout or
//! stderr, or a file rotated at a size with at most [`ROTATED_FILES_KEPT`] old files kept), and
//! kept as a bounded in-memory tail that the API serves (`envd logs`, `envd-init ctl logs`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use crate::config::{Output, ROTATED_FILES_KEPT};

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of output.
#[derive(Debug, Clone)]
pub struct Line {
    /// Its stream.
    pub stream: Stream,
    /// The bytes, without the newline.
    pub text: Vec<u8>,
    /// Unix milliseconds.
    pub at: i64,
}

/// Lines kept in memory per service.
pub const TAIL_LINES: usize = 1000;
/// Bytes kept in memory per service.
pub const TAIL_BYTES: usize = 256 * 1024;
/// A longer line is cut into pieces of this size.
const MAX_LINE: usize = 16 * 1024;

/// A service's in-memory tail and its live feed.
pub struct LogBuffer {
    lines: Mutex<(VecDeque<Line>, usize)>,
    feed: broadcast::Sender<Line>,
}

impl Default for LogBuffer {
    fn default() -> Self {
        LogBuffer {
            lines: Mutex::new((VecDeque::new(), 0)),
            feed: broadcast::channel(256).0,
        }
    }
}

impl LogBuffer {
    /// Adds a line, dropping the oldest past the bounds.
    pub fn push(&self, line: Line) {
        if let Ok(mut guard) = self.lines.lock() {
            let (lines, bytes) = &mut *guard;
            *bytes += line.text.len();
            lines.push_back(line.clone());
            while lines.len() > TAIL_LINES || *bytes > TAIL_BYTES {
                match lines.pop_front() {
                    Some(old) => *bytes -= old.text.len(),
                    None => break,
                }
            }
        }
        let _ = self.feed.send(line);
    }

    /// The last `n` lines (all kept when `n` is 0) and a receiver for the lines after them.
    pub fn tail(&self, n: usize) -> (Vec<Line>, broadcast::Receiver<Line>) {
        let guard = self.lines.lock();
        let rx = self.feed.subscribe();
        let lines = match guard {
            Ok(g) => {
                let skip = if n == 0 {
                    0
                } else {
                    g.0.len().saturating_sub(n)
                };
                g.0.iter().skip(skip).cloned().collect()
            }
            Err(_) => Vec::new(),
        };
        (lines, rx)
    }
}

/// Where a stream's bytes are written, with rotation for files.
pub enum Sink {
    /// envd-init's stdout.
    Stdout,
    /// envd-init's stderr.
    Stderr,
    /// A log file.
    File(RotatingFile),
}

impl Sink {
    /// Opens the destination (creating the file's directory).
    pub fn open(output: &Output) -> std::io::Result<Sink> {
        Ok(match output {
            Output::Stdout => Sink::Stdout,
            Output::Stderr => Sink::Stderr,
            Output::File { path, rotate_size } => {
                Sink::File(RotatingFile::open(path.clone(), *rotate_size)?)
            }
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        // Never blocks: a reader of envd-init's output that stalls loses output, not PID 1.
        match self {
            Sink::Stdout => {
                crate::console::write(crate::console::Fd::Stdout, bytes);
            }
            Sink::Stderr => {
                crate::console::write(crate::console::Fd::Stderr, bytes);
            }
            Sink::File(f) => {
                let _ = f.write(bytes);
            }
        }
    }
}

/// An append-only log file that rotates to `path.1` … `path.N` at a size.
pub struct RotatingFile {
    path: PathBuf,
    rotate_size: u64,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens `path` for appending; `rotate_size` 0 never rotates.
    pub fn open(path: PathBuf, rotate_size: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path,
            rotate_size,
            file,
            size,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.rotate_size > 0
            && self.size > 0
            && self.size + bytes.len() as u64 > self.rotate_size
        {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| rotated_name(&self.path, n);
        let _ = std::fs::remove_file(numbered(ROTATED_FILES_KEPT));
        for n in (1..ROTATED_FILES_KEPT).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// `log` → `log.N`.
pub fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Copies a child's output pipe to its sink and its buffer until the pipe closes.
pub async fn pump(read_end: OwnedFd, stream: Stream, mut sink: Sink, buffer: Arc<LogBuffer>) {
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) {
        Ok(p) => p,
        Err(e) => {
            crate::warn!("cannot read a service's output: {e}");
            return;
        }
    };
    let mut chunk = vec![0u8; 16 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        sink.write(&chunk[..n]);
        partial.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = partial[start..].iter().position(|b| *b == b'\n') {
            buffer.push(Line {
                stream,
                text: partial[start..start + pos].to_vec(),
                at: now_millis(),
            });
            start += pos + 1;
        }
        partial.drain(..start);
        while partial.len() >= MAX_LINE {
            let rest = partial.split_off(MAX_LINE);
            buffer.push(Line {
                stream,
                text: std::mem::replace(&mut partial, rest),
                at: now_millis(),
            });
        }
    }
    if !partial.is_empty() {
        buffer.push(Line {
            stream,
            text: partial,
            at: now_millis(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_bounded() {
        let b = LogBuffer::default();
        for i in 0..(TAIL_LINES + 50) {
            b.push(Line {
                stream: Stream::Stdout,
                text: format!("line {i}").into_bytes(),
                at: 0,
            });
        }
        let (all, _) = b.tail(0);
        assert_eq!(all.len(), TAIL_LINES);
        assert_eq!(
            all.last().unwrap().text,
            format!("line {}", TAIL_LINES + 49).into_bytes()
        );
        let (last3, _) = b.tail(3);
        assert_eq!(last3.len(), 3);
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut f = RotatingFile::open(path.clone(), 100).unwrap();
        for _ in 0..50 {
            f.write(&[b'x'; 60]).unwrap();
        }
        for n in 1..=ROTATED_FILES_KEPT {
            assert!(rotated_name(&path, n).exists(), "missing {n}");
        }
        assert!(!rotated_name(&path, ROTATED_FILES_KEPT + 1).exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
    }
}
