//! Synthetic ClientHellos and record framing, for tests, fuzz seeds and benchmarks.
//!
//! Real clients' hellos come from captures (`tests/data/hello/`) and from an in-process rustls
//! client; this builds the shapes real clients won't send on request: oversize and padded hellos,
//! two host names, empty ALPN protocols, a hello cut into any number of records.

use std::sync::atomic::{AtomicU64, Ordering};

/// Builders made so far: each gets its own random, as each real connection does.
static BUILDERS: AtomicU64 = AtomicU64::new(0);

/// Builds a TLS 1.3-style ClientHello handshake message.
#[derive(Debug, Clone)]
pub struct ClientHelloBuilder {
    random: [u8; 32],
    server_names: Vec<Vec<u8>>,
    alpn: Option<Vec<Vec<u8>>>,
    padding: Option<usize>,
    extensions: Vec<(u16, Vec<u8>)>,
}

impl Default for ClientHelloBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientHelloBuilder {
    /// A hello with no server_name, no ALPN and the usual TLS 1.3 extensions, and a random of
    /// its own (a real client's is unique per connection; the proxy relies on that to see its
    /// own hello coming back through a routing loop).
    pub fn new() -> Self {
        let mut state = BUILDERS.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 32];
        for chunk in random.chunks_exact_mut(8) {
            // splitmix64: distinct, well-spread values from a counter.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut mixed = state;
            mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(mixed ^ (mixed >> 31)).to_be_bytes());
        }
        Self {
            random,
            server_names: Vec::new(),
            alpn: None,
            padding: None,
            extensions: Vec::new(),
        }
    }

    /// Sets the random (32 bytes after the version).
    pub fn random(mut self, random: [u8; 32]) -> Self {
        self.random = random;
        self
    }

    /// Adds a host_name entry to server_name (call twice for two names); bytes go in unchecked.
    pub fn server_name(mut self, name: impl AsRef<[u8]>) -> Self {
        self.server_names.push(name.as_ref().to_vec());
        self
    }

    /// Offers these ALPN protocols, unchecked (an empty one included).
    pub fn alpn<P: AsRef<[u8]>>(mut self, protocols: &[P]) -> Self {
        self.alpn = Some(protocols.iter().map(|p| p.as_ref().to_vec()).collect());
        self
    }

    /// Adds a padding extension (RFC 7685) of `len` zero bytes.
    pub fn padding(mut self, len: usize) -> Self {
        self.padding = Some(len);
        self
    }

    /// Adds an extension of any type with this body, after the others.
    pub fn extension(mut self, extension_type: u16, body: impl AsRef<[u8]>) -> Self {
        self.extensions
            .push((extension_type, body.as_ref().to_vec()));
        self
    }

    /// The handshake message, 4-byte header included.
    pub fn message(&self) -> Vec<u8> {
        let mut extensions = Vec::new();
        if !self.server_names.is_empty() {
            let mut list = Vec::new();
            for name in &self.server_names {
                list.push(0);
                put_vec16(&mut list, name);
            }
            put_extension(&mut extensions, 0, &vec16(&list));
        }
        put_extension(&mut extensions, 10, &vec16(&[0x00, 0x1d, 0x00, 0x17]));
        put_extension(&mut extensions, 13, &vec16(&[0x04, 0x03, 0x08, 0x04]));
        if let Some(protocols) = &self.alpn {
            let mut list = Vec::new();
            for protocol in protocols {
                list.push(protocol.len() as u8);
                list.extend_from_slice(protocol);
            }
            put_extension(&mut extensions, 16, &vec16(&list));
        }
        put_extension(&mut extensions, 43, &[4, 0x03, 0x04, 0x03, 0x03]);
        let mut key_share = vec![0x00, 0x1d, 0x00, 0x20];
        key_share.extend_from_slice(&[0x42; 32]);
        put_extension(&mut extensions, 51, &vec16(&key_share));
        for (extension_type, body) in &self.extensions {
            put_extension(&mut extensions, *extension_type, body);
        }
        if let Some(len) = self.padding {
            put_extension(&mut extensions, 21, &vec![0; len]);
        }

        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&self.random);
        body.push(32);
        body.extend_from_slice(&[0xa5; 32]); // legacy_session_id
        put_vec16(&mut body, &[0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2f]);
        body.extend_from_slice(&[1, 0]); // compression: null
        put_vec16(&mut body, &extensions);

        let len = (body.len() as u32).to_be_bytes();
        let mut message = vec![1, len[1], len[2], len[3]];
        message.extend_from_slice(&body);
        message
    }

    /// The hello framed in as few records as the 2^14 record limit allows.
    pub fn record(&self) -> Vec<u8> {
        frame(&self.message(), 1)
    }
}

/// Frames a handshake message into `records` records of near-equal size (more where a record
/// would exceed 2^14 bytes; fewer where the message has fewer bytes than that).
pub fn frame(message: &[u8], records: usize) -> Vec<u8> {
    let records = records
        .max(message.len().div_ceil(1 << 14))
        .min(message.len())
        .max(1);
    let size = message.len().div_ceil(records);
    let mut wire = Vec::with_capacity(message.len() + 5 * records);
    for fragment in message.chunks(size.max(1)) {
        wire.extend_from_slice(&[22, 0x03, 0x01]);
        wire.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        wire.extend_from_slice(fragment);
    }
    wire
}

/// Splits `wire` into the leading handshake message (its fragments joined) and whatever follows
/// the records that carry it, or `None` if the records don't hold one whole message.
pub fn unframe(wire: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut message = Vec::new();
    let mut rest = wire;
    loop {
        let header = rest.first_chunk::<5>()?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        message.extend_from_slice(rest.get(5..5 + len)?);
        rest = &rest[5 + len..];
        if let Some(header) = message.first_chunk::<4>() {
            let message_len = 4 + u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
            if message.len() >= message_len {
                return Some((message, rest));
            }
        }
    }
}

/// Re-frames the hello at the start of `wire` into `records` records; bytes after it are kept.
pub fn reframe(wire: &[u8], records: usize) -> Option<Vec<u8>> {
    let (message, rest) = unframe(wire)?;
    let mut framed = frame(&message, records);
    framed.extend_from_slice(rest);
    Some(framed)
}

fn vec16(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    put_vec16(&mut out, body);
    out
}

fn put_vec16(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

fn put_extension(out: &mut Vec<u8>, extension_type: u16, body: &[u8]) {
    out.extend_from_slice(&extension_type.to_be_bytes());
    put_vec16(out, body);
}
