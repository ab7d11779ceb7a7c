//! The prefill-worker wire protocol: length-prefixed, checksummed frames
//! over a byte stream (TCP; a Unix socket would do the same).
//!
//! # Frames
//!
//! ```text
//! "TDPF" | version u16 | kind u8 | 0 u8 | payload length u32 | payload |
//! xxh3-64 of (header ‖ payload) u64
//! ```
//!
//! Little-endian throughout. A reader refuses a frame before allocating
//! anything when its magic, version or flags are wrong or its length is
//! above the bound the reader set for its state (a server accepts at most
//! one page image or one logits row; a worker at most one job of the
//! server's context); then it checks the checksum, then the payload's
//! exact layout for its kind ([`Message::decode`]). Nothing a peer sends
//! can make a reader panic or allocate more than that bound.
//!
//! # Messages
//!
//! | kind | from | payload |
//! | --- | --- | --- |
//! | 1 `Hello` | worker | model identity u128, n_layers u32, head_dim u32, n_kv_heads u32, vocab u32 |
//! | 2 `Welcome` | server | model identity u128, KV type name (8 bytes), page_tokens u32, prefill_chunk u32, max_tokens u32 |
//! | 3 `Refuse` | server | reason (UTF-8, at most 4096 bytes) |
//! | 4 `Job` | server | job u64, skip u32, n u32, n × token u32 |
//! | 5 `Cancel` | server | job u64 |
//! | 6 `Rows` | worker | job u64, one page image (`tandem_kv::PageImage`) |
//! | 7 `Done` | worker | job u64, n u32, n × logit f32 |
//! | 8 `Failed` | worker | job u64, error (UTF-8, at most 4096 bytes) |
//!
//! The conversation is in `prefill/mod.rs`'s docs.

use std::io::{Read, Write};

use tandem_kv::KvFormat;

pub const MAGIC: &[u8; 4] = b"TDPF";
/// Bumped on any change of a frame or message layout.
pub const VERSION: u16 = 1;
const HEADER: usize = 4 + 2 + 1 + 1 + 4;
/// Longest text a `Refuse` or `Failed` carries.
pub const MAX_TEXT: usize = 4096;

/// What went wrong on the wire (the connection is then dropped).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
}

fn proto(m: impl Into<String>) -> WireError {
    WireError::Protocol(m.into())
}

/// Model and KV shape a worker announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub identity: u128,
    pub n_layers: u32,
    pub head_dim: u32,
    pub n_kv_heads: u32,
    pub vocab: u32,
}

/// How the server wants the KV: the worker builds its pool with these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The server's model identity (the worker checks it too).
    pub identity: u128,
    pub kv_format: KvFormat,
    pub page_tokens: u32,
    pub prefill_chunk: u32,
    /// Most tokens a job may carry (the server's context).
    pub max_tokens: u32,
}

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Refuse(String),
    Job {
        job: u64,
        skip: u32,
        tokens: Vec<u32>,
    },
    Cancel {
        job: u64,
    },
    Rows {
        job: u64,
        image: Vec<u8>,
    },
    Done {
        job: u64,
        logits: Vec<f32>,
    },
    Failed {
        job: u64,
        error: String,
    },
}

/// Reads fields in order, every read checked.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| proto("payload too short"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn u128(&mut self) -> Result<u128, WireError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(u128::from_le_bytes(a))
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }
    fn text(&mut self) -> Result<String, WireError> {
        let s = self.rest();
        if s.len() > MAX_TEXT {
            return Err(proto("text too long"));
        }
        String::from_utf8(s.to_vec()).map_err(|_| proto("text is not UTF-8"))
    }
    fn end(&self) -> Result<(), WireError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(proto("payload too long"))
        }
    }
}

fn cut_text(s: &str) -> &[u8] {
    let mut n = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s.as_bytes()[..n]
}

impl Message {
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Welcome(_) => 2,
            Message::Refuse(_) => 3,
            Message::Job { .. } => 4,
            Message::Cancel { .. } => 5,
            Message::Rows { .. } => 6,
            Message::Done { .. } => 7,
            Message::Failed { .. } => 8,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Message::Hello(h) => {
                p.extend_from_slice(&h.identity.to_le_bytes());
                for v in [h.n_layers, h.head_dim, h.n_kv_heads, h.vocab] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
            }
            Message::Welcome(w) => {
                p.extend_from_slice(&w.identity.to_le_bytes());
                let mut name = [0u8; 8];
                let n = w.kv_format.name().as_bytes();
                name[..n.len().min(8)].copy_from_slice(&n[..n.len().min(8)]);
                p.extend_from_slice(&name);
                for v in [w.page_tokens, w.prefill_chunk, w.max_tokens] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
            }
            Message::Refuse(s) => p.extend_from_slice(cut_text(s)),
            Message::Job { job, skip, tokens } => {
                p.reserve(16 + 4 * tokens.len());
                p.extend_from_slice(&job.to_le_bytes());
                p.extend_from_slice(&skip.to_le_bytes());
                p.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
                for t in tokens {
                    p.extend_from_slice(&t.to_le_bytes());
                }
            }
            Message::Cancel { job } => p.extend_from_slice(&job.to_le_bytes()),
            Message::Rows { job, image } => {
                p.reserve(8 + image.len());
                p.extend_from_slice(&job.to_le_bytes());
                p.extend_from_slice(image);
            }
            Message::Done { job, logits } => {
                p.reserve(12 + 4 * logits.len());
                p.extend_from_slice(&job.to_le_bytes());
                p.extend_from_slice(&(logits.len() as u32).to_le_bytes());
                for l in logits {
                    p.extend_from_slice(&l.to_le_bytes());
                }
            }
            Message::Failed { job, error } => {
                p.extend_from_slice(&job.to_le_bytes());
                p.extend_from_slice(cut_text(error));
            }
        }
        p
    }

    /// Parses a payload of frame kind `kind`, checking its exact layout.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Message, WireError> {
        let mut c = Cursor { b: payload, at: 0 };
        let m = match kind {
            1 => Message::Hello(Hello {
                identity: c.u128()?,
                n_layers: c.u32()?,
                head_dim: c.u32()?,
                n_kv_heads: c.u32()?,
                vocab: c.u32()?,
            }),
            2 => {
                let identity = c.u128()?;
                let raw = c.take(8)?;
                let end = raw.iter().position(|&b| b == 0).unwrap_or(8);
                let name = std::str::from_utf8(&raw[..end]).map_err(|_| proto("KV type name"))?;
                let kv_format = KvFormat::ALL
                    .into_iter()
                    .find(|f| f.name() == name)
                    .ok_or_else(|| proto(format!("unknown KV type {name:?}")))?;
                Message::Welcome(Welcome {
                    identity,
                    kv_format,
                    page_tokens: c.u32()?,
                    prefill_chunk: c.u32()?,
                    max_tokens: c.u32()?,
                })
            }
            3 => Message::Refuse(c.text()?),
            4 => {
                let job = c.u64()?;
                let skip = c.u32()?;
                let n = c.u32()? as usize;
                let raw = c.take(n.checked_mul(4).ok_or_else(|| proto("token count"))?)?;
                let tokens = raw
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Message::Job { job, skip, tokens }
            }
            5 => Message::Cancel { job: c.u64()? },
            6 => Message::Rows {
                job: c.u64()?,
                image: c.rest().to_vec(),
            },
            7 => {
                let job = c.u64()?;
                let n = c.u32()? as usize;
                let raw = c.take(n.checked_mul(4).ok_or_else(|| proto("logit count"))?)?;
                let logits = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Message::Done { job, logits }
            }
            8 => Message::Failed {
                job: c.u64()?,
                error: c.text()?,
            },
            k => return Err(proto(format!("unknown message kind {k}"))),
        };
        c.end()?;
        Ok(m)
    }
}

/// Writes `m` as one frame.
pub fn write_message(w: &mut impl Write, m: &Message) -> Result<(), WireError> {
    let payload = m.payload();
    let len = u32::try_from(payload.len()).map_err(|_| proto("message too long"))?;
    let mut head = [0u8; HEADER];
    head[..4].copy_from_slice(MAGIC);
    head[4..6].copy_from_slice(&VERSION.to_le_bytes());
    head[6] = m.kind();
    head[7] = 0;
    head[8..12].copy_from_slice(&len.to_le_bytes());
    let mut sum = xxhash_rust::xxh3::Xxh3::new();
    sum.update(&head);
    sum.update(&payload);
    let mut frame = Vec::with_capacity(HEADER + payload.len() + 8);
    frame.extend_from_slice(&head);
    frame.extend_from_slice(&payload);
    frame.extend_from_slice(&sum.digest().to_le_bytes());
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame whose payload is at most `max_payload` bytes and
/// decodes it.
pub fn read_message(r: &mut impl Read, max_payload: usize) -> Result<Message, WireError> {
    let mut head = [0u8; HEADER];
    r.read_exact(&mut head)?;
    if &head[..4] != MAGIC {
        return Err(proto("not a tandem prefill frame"));
    }
    let version = u16::from_le_bytes([head[4], head[5]]);
    if version != VERSION {
        return Err(proto(format!(
            "protocol version {version}, this side speaks {VERSION}"
        )));
    }
    if head[7] != 0 {
        return Err(proto("unknown frame flags"));
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if len > max_payload {
        return Err(proto(format!(
            "a frame of {len} bytes (at most {max_payload} expected here)"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    let mut trailer = [0u8; 8];
    r.read_exact(&mut trailer)?;
    let mut sum = xxhash_rust::xxh3::Xxh3::new();
    sum.update(&head);
    sum.update(&payload);
    if sum.digest() != u64::from_le_bytes(trailer) {
        return Err(proto("frame checksum mismatch"));
    }
    Message::decode(head[6], &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                identity: 0xdead_beef << 64 | 7,
                n_layers: 2,
                head_dim: 64,
                n_kv_heads: 4,
                vocab: 1000,
            }),
            Message::Welcome(Welcome {
                identity: 5,
                kv_format: KvFormat::Q8_0,
                page_tokens: 16,
                prefill_chunk: 512,
                max_tokens: 4096,
            }),
            Message::Refuse("another model".into()),
            Message::Job {
                job: 9,
                skip: 16,
                tokens: vec![1, 2, 3],
            },
            Message::Cancel { job: 9 },
            Message::Rows {
                job: 9,
                image: vec![5; 40],
            },
            Message::Done {
                job: 9,
                logits: vec![0.5, -1.0],
            },
            Message::Failed {
                job: 9,
                error: "out of pages".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let mut b = Vec::new();
            write_message(&mut b, &m).expect("write");
            let back = read_message(&mut &b[..], 1 << 20).expect("read");
            assert_eq!(back, m);
        }
    }

    #[test]
    fn damaged_frames_are_errors_never_panics() {
        for m in samples() {
            let mut b = Vec::new();
            write_message(&mut b, &m).expect("write");
            // Every flipped byte and every truncation is caught.
            for i in 0..b.len() {
                let mut d = b.clone();
                d[i] ^= 0x21;
                assert!(
                    read_message(&mut &d[..], 1 << 20).is_err(),
                    "{m:?} byte {i}"
                );
            }
            for n in 0..b.len() {
                assert!(read_message(&mut &b[..n], 1 << 20).is_err());
            }
        }
    }

    #[test]
    fn a_frame_over_the_bound_is_refused_before_reading_it() {
        let mut b = Vec::new();
        let m = Message::Job {
            job: 1,
            skip: 0,
            tokens: vec![7; 100],
        };
        write_message(&mut b, &m).expect("write");
        let e = read_message(&mut &b[..], 64).expect_err("too long");
        assert!(e.to_string().contains("at most 64"), "{e}");
    }

    #[test]
    fn payloads_with_wrong_lengths_are_refused() {
        // A job announcing more tokens than it carries, and one with a
        // trailing byte.
        let mut p = Vec::new();
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Message::decode(4, &p).is_err());
        let mut p = Message::Cancel { job: 3 }.payload();
        p.push(0);
        assert!(Message::decode(5, &p).is_err());
        assert!(Message::decode(99, &[]).is_err());
        assert!(Message::decode(3, &[0xff, 0xfe]).is_err(), "not UTF-8");
    }
}
