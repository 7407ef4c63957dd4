//! Where log lines go: a writer thread that batches them to stderr, so a connection never waits
//! on a slow stderr and never pays for waking another thread per line.
//!
//! Each event's formatted line is handed over a bounded channel without blocking (a full
//! channel drops the line and counts it: [`dropped_lines`]). The writer thread, while lines keep
//! coming, sleeps [`BATCH_PERIOD`] between batches and writes everything waiting in one
//! `write(2)`; once it finds nothing it blocks until the next line. Under load the loggers
//! therefore never have to wake it, and an idle process doesn't wake at all.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines waiting for the writer thread at most; past it new lines are dropped and counted.
const BUFFERED_LINES: usize = 65_536;
/// How long the writer thread lets lines gather while they keep coming.
const BATCH_PERIOD: Duration = Duration::from_millis(5);
/// Bytes written to stderr at once at most.
const BATCH_BYTES: usize = 256 * 1024;

/// At exit, how long lines still waiting may take to be written before they are given up (a
/// stderr nobody reads must not keep the process from exiting).
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// Lines dropped because the writer thread's buffer was full, or given up at exit.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines handed to the writer thread and not yet written.
static QUEUED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped so far because stderr could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Starts the writer thread; returns the `MakeWriter` for the subscriber and a guard that, when
/// dropped, writes what is still buffered (within [`FLUSH_DEADLINE`]) and stops the thread.
///
/// # Errors
/// The thread could not be started.
pub fn start() -> io::Result<(Lines, FlushOnDrop)> {
    start_writing_to(io::stderr(), FLUSH_DEADLINE)
}

fn start_writing_to(
    mut out: impl Write + Send + 'static,
    deadline: Duration,
) -> io::Result<(Lines, FlushOnDrop)> {
    let (sender, receiver) = mpsc::sync_channel(BUFFERED_LINES);
    let (finished, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("sniroute-log".to_owned())
        .spawn(move || write_until_stopped(&receiver, &mut out, &finished))?;
    Ok((
        Lines {
            sender: sender.clone(),
        },
        FlushOnDrop {
            sender,
            done,
            deadline,
        },
    ))
}

/// The writer thread: [`write_batches`], then word that it finished.
fn write_until_stopped(receiver: &Receiver<Vec<u8>>, out: &mut impl Write, finished: &Sender<()>) {
    write_batches(receiver, out);
    let _ = finished.send(());
}

/// The writer thread's loop: block for a line, then batch while lines keep coming. Ends when
/// every sender is gone or at an empty line (the guard's "flush and stop"), having written
/// everything that came before.
fn write_batches(receiver: &Receiver<Vec<u8>>, out: &mut impl Write) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut next = receiver.recv();
    while let Ok(line) = next {
        let mut stop = line.is_empty();
        let mut lines = u64::from(!stop);
        batch.extend_from_slice(&line);
        while !stop {
            match receiver.try_recv() {
                Ok(line) if line.is_empty() => stop = true,
                Ok(line) => {
                    lines += 1;
                    batch.extend_from_slice(&line);
                    if batch.len() >= BATCH_BYTES {
                        let _ = out.write_all(&batch);
                        batch.clear();
                        QUEUED.fetch_sub(std::mem::take(&mut lines), Ordering::Relaxed);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => stop = true,
            }
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            batch.clear();
        }
        QUEUED.fetch_sub(lines, Ordering::Relaxed);
        if stop {
            return;
        }
        // Lines are coming: let the next ones gather for a moment. Sleeping (not waiting on the
        // channel) means the loggers never have to wake this thread while it does.
        std::thread::sleep(BATCH_PERIOD);
        next = match receiver.try_recv() {
            Ok(line) => Ok(line),
            Err(TryRecvError::Empty) => receiver.recv(),
            Err(TryRecvError::Disconnected) => return,
        };
    }
}

/// The subscriber's writer factory: one [`Line`] per event.
#[derive(Debug, Clone)]
pub struct Lines {
    sender: SyncSender<Vec<u8>>,
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            sender: &self.sender,
            buffer: Vec::new(),
        }
    }
}

/// One event's bytes, handed to the writer thread when dropped.
#[derive(Debug)]
pub struct Line<'a> {
    sender: &'a SyncSender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        QUEUED.fetch_add(1, Ordering::Relaxed);
        if self
            .sender
            .try_send(std::mem::take(&mut self.buffer))
            .is_err()
        {
            QUEUED.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Stops the writer thread once everything logged before is written, or gives the rest up at
/// the deadline (counted as dropped). Keep it until exit.
#[derive(Debug)]
pub struct FlushOnDrop {
    sender: SyncSender<Vec<u8>>,
    done: Receiver<()>,
    deadline: Duration,
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        // An empty line is "flush and stop"; the channel is in order, so everything logged before
        // it is written first. A full channel can't take it yet: try again while the writer
        // drains it, until the deadline (a stderr nobody reads never drains it).
        let deadline = std::time::Instant::now() + self.deadline;
        while let Err(TrySendError::Full(_)) = self.sender.try_send(Vec::new()) {
            if std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(BATCH_PERIOD);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if self.done.recv_timeout(left).is_err() {
            // The writer is stuck in a write nobody reads; the process exits without it.
            DROPPED.fetch_add(QUEUED.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stderr nobody reads: every write blocks forever.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            loop {
                std::thread::park();
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stderr_does_not_hold_up_the_exit_and_its_lines_count_as_dropped() {
        let (lines, guard) = start_writing_to(Stuck, Duration::from_millis(10)).unwrap();
        let before = dropped_lines();
        for number in 0..10 {
            let mut line = lines.make_writer();
            writeln!(line, "line {number}").unwrap();
        }
        // Returns (the hang guard of the test runner catches it if not) and gives the lines up.
        drop(guard);
        assert!(dropped_lines() > before);
    }

    #[test]
    fn lines_arrive_in_order_and_the_writer_stops_at_the_flush_mark() {
        let (sender, receiver) = mpsc::sync_channel(256);
        let writer = std::thread::spawn(move || {
            let mut out = Vec::new();
            write_batches(&receiver, &mut out);
            out
        });
        let lines = Lines { sender };
        for number in 0..100 {
            let mut line = lines.make_writer();
            writeln!(line, "line {number}").unwrap();
        }
        lines.sender.send(Vec::new()).unwrap();
        let mut late = lines.make_writer();
        writeln!(late, "after the end").unwrap();
        drop(late);
        let out = String::from_utf8(writer.join().unwrap()).unwrap();
        let expected: String = (0..100).map(|number| format!("line {number}\n")).collect();
        assert_eq!(out, expected);
    }
}
