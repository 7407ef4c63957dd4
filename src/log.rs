//! Where log lines go: a writer thread that batches them to stderr, so a connection never waits
//! on a slow stderr and never pays for waking another thread per line.
//!
//! Each event's formatted line is handed over a bounded channel without blocking (a full
//! channel drops the line and counts it: [`dropped_lines`]). The writer thread, while lines keep
//! coming, sleeps [`BATCH_PERIOD`] between batches and writes everything waiting in one
//! `write(2)`; once it finds nothing it blocks until the next line. Under load the loggers
//! therefore never have to wake it, and an idle process doesn't wake at all.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::OnceLock;
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
        if !self.buffer.is_empty() {
            hand_over(self.sender, std::mem::take(&mut self.buffer));
        }
    }
}

/// Hands one line to the writer thread, or drops and counts it when its buffer is full.
fn hand_over(sender: &SyncSender<Vec<u8>>, line: Vec<u8>) {
    QUEUED.fetch_add(1, Ordering::Relaxed);
    if sender.try_send(line).is_err() {
        QUEUED.fetch_sub(1, Ordering::Relaxed);
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Lines written by hand: the access log, one line per connection, is formatted from plain
// fields straight into its buffer, byte for byte as tracing-subscriber's formats would print it
// (without colours), but at a fraction of the cost (its formatting was a quarter of a
// connection's user-space instructions).

/// The access log's way to the writer thread, with the format chosen at start-up; set only when
/// the filter (`SNIROUTE_LOG`) lets the access log through.
static ACCESS: OnceLock<Direct> = OnceLock::new();

/// A way to the writer thread for lines formatted by hand.
#[derive(Debug)]
pub struct Direct {
    sender: SyncSender<Vec<u8>>,
    json: bool,
}

/// Routes the access log's lines (target `sniroute::access`) to `lines`' writer thread, in JSON
/// or the human format. Call once, after the subscriber is installed, and only if its filter
/// enables that target at INFO.
pub fn write_access_lines(lines: &Lines, json: bool) {
    let _ = ACCESS.set(Direct {
        sender: lines.sender.clone(),
        json,
    });
}

/// Where access-log lines go, if anywhere.
pub fn access_lines() -> Option<&'static Direct> {
    ACCESS.get()
}

impl Direct {
    /// A new INFO line of `target` saying `message`; fields follow.
    pub fn line(&self, target: &'static str, message: &'static str) -> Fields {
        let mut out = Vec::with_capacity(512);
        if self.json {
            out.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(&mut out);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":");
            json_string(&mut out, message);
        } else {
            timestamp(&mut out);
            out.extend_from_slice(b"  INFO ");
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(message.as_bytes());
        }
        Fields {
            out,
            json: self.json,
            target,
        }
    }

    /// Ends `fields`' line and hands it to the writer thread.
    pub fn send(&self, fields: Fields) {
        let Fields {
            mut out,
            json,
            target,
        } = fields;
        if json {
            out.extend_from_slice(b",\"target\":");
            json_string(&mut out, target);
            out.push(b'}');
        }
        out.push(b'\n');
        hand_over(&self.sender, out);
    }
}

/// One line's fields, written as they come.
#[derive(Debug)]
pub struct Fields {
    out: Vec<u8>,
    json: bool,
    target: &'static str,
}

impl Fields {
    fn key(&mut self, key: &str) {
        if self.json {
            self.out.extend_from_slice(b",\"");
            self.out.extend_from_slice(key.as_bytes());
            self.out.extend_from_slice(b"\":");
        } else {
            self.out.push(b' ');
            self.out.extend_from_slice(key.as_bytes());
            self.out.push(b'=');
        }
    }

    /// A string value: quoted (tracing quotes `&str` fields with `Debug`; JSON strings).
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        match self.json {
            true => json_string(&mut self.out, value),
            false => debug_string(&mut self.out, value),
        }
        self
    }

    /// A value written with `Display`, quoted like [`Fields::str`].
    pub fn quoted(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            let _ = write!(scratch, "{value}");
            self.str(key, scratch);
        });
        self
    }

    /// A value written with `Display`, unquoted in the human format (tracing's `%field`).
    pub fn display(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        match self.json {
            true => self.quoted(key, value),
            false => {
                self.key(key);
                let _ = write!(self.out, "{value}");
                self
            }
        }
    }

    /// A number.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        decimal(&mut self.out, value, 1);
        self
    }
}

thread_local! {
    /// Scratch for [`Fields::quoted`].
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// The last second [`timestamp`] wrote, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// Now, as tracing-subscriber writes it: RFC 3339 in UTC with microseconds,
/// `2026-12-01T15:31:22.700749Z`. The date and time of day are worked out once a second per
/// thread.
fn timestamp(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != seconds {
        text = civil(seconds);
        SECOND.set((seconds, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    decimal(out, u64::from(now.subsec_micros()), 6);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (days to civil date: Howard Hinnant's algorithm).
fn civil(seconds: u64) -> [u8; 19] {
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let mut text = Vec::with_capacity(19);
    for (value, width, separator) in [
        (year, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (of_day / 3600, 2, b':'),
        (of_day / 60 % 60, 2, b':'),
        (of_day % 60, 2, 0),
    ] {
        decimal(&mut text, value, width);
        if separator != 0 {
            text.push(separator);
        }
    }
    let mut fixed = [b'0'; 19];
    let len = text.len().min(19);
    fixed[..len].copy_from_slice(&text[..len]);
    fixed
}

/// `value` in decimal, zero-padded to `width` digits at least.
fn decimal(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    while value > 0 || digits.len() - start < width.max(1) {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend_from_slice(&digits[start..]);
}

/// `value` quoted as Rust's `Debug` quotes a `str` (as tracing prints `&str` fields).
fn debug_string(out: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .all(|byte| (b' '..=b'~').contains(&byte) && byte != b'"' && byte != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{value:?}");
    }
}

/// `value` as a JSON string, escaped as serde_json escapes it.
fn json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for byte in value.bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..0x20 => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
            }
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// Lowercase hex digits, as serde_json writes `\u00XX`.
const HEX: &[u8; 16] = b"0123456789abcdef";

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

    /// What tracing-subscriber prints for one event with awkward values, in `json` or the human
    /// format, and what [`Fields`] writes for the same values; both without their timestamps.
    fn both_ways(json: bool) -> (String, String) {
        let strange = "quote\" backslash\\ tab\t newline\n bell\u{7} é \u{200b} 雪";
        let address: std::net::SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let (sender, receiver) = mpsc::sync_channel(4);
        let lines = Lines { sender };
        let builder = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(false);
        let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = match json {
            true => Box::new(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .finish(),
            ),
            false => Box::new(builder.finish()),
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "sniroute::access",
                plain = "-",
                strange = strange,
                client.addr = %address,
                shown = %strange,
                count = 18_446_744_073_709_551_615u64,
                zero = 0u64,
                "connection closed"
            );
        });
        let traced = String::from_utf8(receiver.recv().unwrap()).unwrap();
        let direct = Direct {
            sender: lines.sender.clone(),
            json,
        };
        let mut line = direct.line("sniroute::access", "connection closed");
        line.str("plain", "-")
            .str("strange", strange)
            .display("client.addr", address)
            .display("shown", strange)
            .u64("count", u64::MAX)
            .u64("zero", 0);
        direct.send(line);
        let written = String::from_utf8(receiver.recv().unwrap()).unwrap();
        let untimed = |line: &str| match json {
            true => line.split_once("\",").unwrap().1.to_owned(),
            false => line.split_once(' ').unwrap().1.to_owned(),
        };
        (untimed(&traced), untimed(&written))
    }

    #[test]
    fn hand_written_lines_are_byte_for_byte_what_tracing_prints() {
        for json in [false, true] {
            let (traced, written) = both_ways(json);
            assert_eq!(written, traced, "json: {json}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(&civil(0), b"1970-01-01T00:00:00");
        assert_eq!(&civil(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&civil(1_796_125_882), b"2026-12-01T11:51:22");
        assert_eq!(&civil(4_102_444_799), b"2099-12-31T23:59:59");
        let mut out = Vec::new();
        timestamp(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), 27, "{text}");
        assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
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
